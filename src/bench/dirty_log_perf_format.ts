/** The text report of dirty-log-perf (the JSON is the PerfResult itself). */
import type { DesignName } from "../mmu/design.js";
import type {
  DesignRatio,
  IterationResult,
  NsStats,
  PerfResult,
  RatioResult,
  StrategyResult,
} from "./dirty_log_perf.js";
import { hasHostThread, logModeOf, nsStats } from "./dirty_log_perf.js";
import { formatRatio, summarize } from "./stats.js";
import {
  HarvestCall,
  harvestCalls,
  logModeOfIterations,
  nsPerDirtyPage,
  totalCall,
} from "./dirty_log_perf_calls.js";
import { NUMA_SCAN_PAGES } from "../mem/numa_balancing.js";
import { PAGE_SIZE } from "../kvm_host.js";

const ms = (ns: number): string => (ns / 1e6).toFixed(2);

/** The terminal report fits this many columns. */
export const WIDTH = 120;

/** `text` broken after ", " or "; " into lines of at most `width` columns, continued indented. */
export function wrap(text: string, width: number, indent = "  "): string[] {
  const words = text.split(/(?<=[,;] )/);
  const out: string[] = [];
  let line = "";
  for (const w of words) {
    if (line !== "" && (line + w).trimEnd().length > width) {
      out.push(line.trimEnd());
      line = indent;
    }
    line += w;
  }
  if (line.trim() !== "" || out.length === 0) out.push(line.trimEnd());
  return out;
}

/** `median 12.30 ms [11.90, 12.80], mean 12.41 ± 0.52, min 11.70, max 13.90` */
export function formatNs(s: NsStats): string {
  return `median ${ms(s.medianNs)} ms [${ms(s.ci95Ns[0])}, ${ms(s.ci95Ns[1])}], mean ${ms(s.meanNs)} ± ${ms(s.stdevNs)}, min ${ms(s.minNs)}, max ${ms(s.maxNs)}`;
}

export function formatPerf(r: PerfResult): string {
  const out: string[] = [];
  const o = r.options;
  const c = o.contention;
  const t = o.threads;
  const head = [
    `dirty-log-perf${o.preset ? ` --preset ${o.preset}` : ""}: ${o.mode === "shadow" ? `shadow paging${o.guestHuge ? " (2 MiB guest pages)" : ""}` : "TDP"}, ` +
      `${o.vcpus} vCPUs x ${o.bytesPerVcpu / 2 ** 20} MiB, ${o.warmup ?? 1} warm-up + ${o.iterations} iterations, ` +
      `write ${o.writePercent}%, ${o.random ? "random" : "sequential"}, THP ${o.thp ? "on" : "off"}, ` +
      (hasHostThread(c)
        ? `host thread: migrate ${c.migrateRate}/s invalidate ${c.invalidateRate}/s x ${c.invalidatePages ?? 512} pages, `
        : "no host thread, ") +
      (o.numaScanPeriodMs
        ? `NUMA balancing ${((o.numaScanBytes ?? NUMA_SCAN_PAGES * PAGE_SIZE) / 2 ** 20).toString()} MiB every ${o.numaScanPeriodMs} ms, `
        : "") +
      `mmu_lock waiters ${o.lock ?? "sleep"}, vCPUs ${o.park ? "parked" : "writing"} during get-dirty-log, ` +
      (o.windowMs
        ? `timed iterations of ${o.windowMs} ms, get-dirty-log every ${o.harvestIntervalMs ?? o.windowMs} ms, `
        : "") +
      `log ${logModeOf(o)}${logModeOf(o) === "clear-log" ? ` (clear chunk ${o.clearChunkPages ? `${o.clearChunkPages} pages` : "the slot"})` : ""}${o.ring ? ` (${o.ring} entries)` : ""}`,
    `machine: ${r.machine.cpuModel ? `${r.machine.cpuModel}, ` : ""}${r.machine.cpus} CPUs, ${(r.machine.memoryBytes / 2 ** 30).toFixed(1)} GiB, ` +
      `${r.machine.kernel ? `kernel ${r.machine.kernel}, ` : ""}node ${r.machine.node}, ${r.machine.platform}` +
      (r.machine.loadAverage
        ? `, load ${r.machine.loadAverage.start.toFixed(2)} -> ${r.machine.loadAverage.end?.toFixed(2) ?? "?"}`
        : "") +
      `; kvmmu ${r.kvmmuVersion ?? "?"}, git ${r.gitCommit?.slice(0, 12) ?? "unknown"}` +
      (t
        ? `; threads: ${t.vcpus} vCPUs (${t.vcpusFrom === "auto" ? "chosen to fit the cores" : "from -v"}) + harvester${t.hostThread ? " + host thread" : ""}${t.oversubscribed ? " OVERSUBSCRIBE the cores" : " fit the cores"}`
        : "") +
      (r.pinned === null || r.pinned === undefined
        ? ""
        : "error" in r.pinned
          ? `; unpinned (${r.pinned.error})`
          : `; pinned: vCPUs on CPUs ${r.pinned.vcpus.join(",")}, harvester${r.pinned.others ? ` and ${r.pinned.others} other threads` : ""} on ${r.pinned.harvester ?? "any"}`),
  ];
  out.push(...head.flatMap((h) => wrap(h, WIDTH)));
  const host = hasHostThread(c);
  for (const [wp, s] of Object.entries(r.results) as [DesignName, StrategyResult][])
    out.push(...formatDesign(wp, s, host, (o.numaScanPeriodMs ?? 0) > 0));
  out.push(...formatRatios(r));
  out.push(
    `MMU metadata ${r.metadataPercent.toFixed(2)}% of ${r.guestMemoryBytes / 2 ** 20} MiB guest memory; peak RSS ${(r.peakRssBytes / 2 ** 20).toFixed(0)} MiB`,
  );
  return out.flatMap((l) => wrap(l, WIDTH, "      ")).join("\n");
}

/** One iteration: its calls' times (KVM's names), dirty pages and guest throughput; then their parts. */
function formatIteration(label: string, it: IterationResult, calls: HarvestCall[], host: boolean): string[] {
  const own = calls.filter((c) => c.id !== "total");
  const prot = calls.find((c) => c.protects)!;
  return [
    `${label}: dirty memory ${ms(it.dirtyMemoryNs).padStart(7)} ms, ` +
      own.map((c) => `${c.name} ${ms(c.ns(it)).padStart(6)} ms`).join(", ") +
      `, ${it.dirtyPages} pages, guest ${(it.guestThroughput / 1e6).toFixed(2)} M writes/s` +
      (it.harvests !== undefined ? `  (means of ${it.harvests} calls)` : ""),
    `      ${prot.name}: ` +
      prot.parts.map((p) => `${p.name} ${ms(p.ns(it))}`).join(", ") +
      ` ms` +
      (it.ringFullExits !== undefined ? `; ring-full exits ${it.ringFullExits}` : "") +
      `; vCPUs waited for mmu_lock ${ms(it.vcpuLockWaitNs ?? 0)}` +
      (host ? ` host ${ms(it.hostLockWaitNs ?? 0)}` : "") +
      " ms",
  ];
}

/** Each call of the harvest (KVM's names), its ns per dirty page, and its parts. */
function formatCalls(s: StrategyResult): string[] {
  const calls = harvestCalls(logModeOfIterations(s.iterations, s.logMode));
  const m = s.iterations.filter((i) => !i.warmup);
  if (m.length === 0) return [];
  const out: string[] = [];
  const w = Math.max(...calls.map((c) => c.name.length)) + 1;
  const pw = Math.max(...calls.flatMap((c) => c.parts.map((p) => p.name.length)));
  for (const c of calls) {
    const st = nsStats(summarize(m.map((i) => c.ns(i))));
    out.push(
      `  ${`${c.name}:`.padEnd(w)} ${formatNs(st)}; ${nsPerDirtyPage(c, m).median.toFixed(1)} ns/dirty page`,
    );
    if (c.parts.length > 1)
      for (const p of c.parts)
        out.push(`    ${p.name.padEnd(pw)} ${formatNs(nsStats(summarize(m.map((i) => p.ns(i)))))}`);
  }
  return out;
}

/** One design's iterations and statistics. */
function formatDesign(wp: DesignName, s: StrategyResult, host: boolean, numa: boolean): string[] {
  const out: string[] = [];
  out.push(
    "",
    `[${wp}] mmap (first touch of host memory) ${ms(s.mmapNs ?? 0)} ms, populate ${ms(s.populateNs)} ms, ` +
      `enabling dirty logging ${ms(s.enableLoggingNs)} ms` +
      (s.disableLoggingNs !== undefined ? `, disabling dirty logging ${ms(s.disableLoggingNs)} ms` : ""),
    ...(s.iterations[0]
      ? [
          `  first pass with logging (the first iteration's dirty memory) ${ms(s.iterations[0].dirtyMemoryNs)} ms` +
            (s.firstPassCpuNs !== undefined ? `, process CPU ${ms(s.firstPassCpuNs)} ms` : ""),
        ]
      : []),
    ...(s.enableLogging
      ? [
          `  --relog: enabling logging ${formatNs(s.enableLogging)}` +
            (s.enableLoggingCpu ? `; process CPU ${formatNs(s.enableLoggingCpu)}` : ""),
        ]
      : []),
    ...(s.dirtyMemoryCpu ? [`  dirty memory, process CPU: ${formatNs(s.dirtyMemoryCpu)}`] : []),
  );
  const calls = harvestCalls(logModeOfIterations(s.iterations, s.logMode));
  let k = 0;
  for (const it of s.iterations) {
    const label = it.warmup ? "  warm-up     " : `  iteration ${String(++k).padStart(2)}`;
    out.push(...formatIteration(label, it, calls, host));
  }
  const g = s.guestThroughput;
  const mw = (x: number): string => (x / 1e6).toFixed(2);
  out.push(
    ...formatCalls(s),
    `  mmu_lock wait per iteration: vCPUs ${formatNs(s.vcpuLockWait)}`,
    ...(host ? [`                               host thread ${formatNs(s.hostLockWait)}`] : []),
    ...(s.cpu
      ? [
          `  process CPU: ${ms(s.cpu.protectCallNs)} ms per ${totalCall(s.logMode).name} (median), ${s.cpu.nsPerDirtyPage.toFixed(1)} ns/dirty page, ` +
            `preempted ${s.cpu.preemptions} times per call`,
          `               populate ${ms(s.cpu.populateNs)} ms, enable logging ${ms(s.cpu.enableLoggingNs)} ms`,
        ]
      : []),
    ...(s.ring ? [`  dirty ring: ring-full exits median ${s.ring.fullExits} per iteration`] : []),
    `  guest: median ${mw(g.median)} M writes/s [${mw(g.ci95[0])}, ${mw(g.ci95[1])}], mean ${mw(g.mean)} ± ${mw(g.stdev)}, min ${mw(g.min)}, max ${mw(g.max)}`,
    ...(s.faults
      ? [
          `  faults fast ${s.faults.fast} slow ${s.faults.slow} (retries ${s.faults.retries})` +
            (s.faultsPerDirtyPage !== undefined
              ? `, ${s.faultsPerDirtyPage.toFixed(3)} per dirty page per iteration`
              : "") +
            `; TLB misses ${s.faults.tlbMisses}`,
        ]
      : []),
    ...(s.mmuLock
      ? [
          `  mmu_lock (whole run): ioctl waited ${ms(s.mmuLock.ioctlWaitNs)} ms; vCPUs waited ${ms(s.mmuLock.vcpuWaitNs)} ms, held ${ms(s.mmuLock.vcpuHoldNs)} ms over ${s.mmuLock.vcpuAcquisitions} acquisitions`,
        ]
      : []),
    ...(host && s.host
      ? [`  host thread: ${s.host.migrations} migrations, ${s.host.invalidations} invalidations`]
      : []),
    ...(s.kernel
      ? [
          `  kernel (${s.kernel.flavour}): calls not decomposed; ${Object.entries(s.kernel.stats)
            .filter(([k]) => ["pages_4k", "pages_2m", "pf_fixed", "exits"].includes(k))
            .map(([k, v]) => `${k} ${v}`)
            .join(", ")}`,
        ]
      : []),
    ...(numa && s.numa
      ? [`  NUMA balancing: ${s.numa.scans} scans unmapped ${s.numa.pagesScanned} pages (warm-up included)`]
      : []),
  );
  if (s.shadow)
    out.push(
      `  shadow MMU: ${s.shadow["spUsed"]} pages (${s.shadow["indirectShadowPages"]} shadow guest tables), ${s.shadow["emulated"]} emulated guest-table writes, ${s.shadow["ptProtectFlushes"]} guest-table protections that flushed`,
    );
  return out;
}

function formatRatio3(name: string, q: RatioResult): string {
  return `  ${name.padEnd(17)} ${formatRatio(q)}  ${q.verdict}`;
}

/**
 * Each design against the baseline (`ratios`), one row per call of the harvest (KVM's names);
 * a result saved before `ratios` existed gives its lockless/locked `ratio` instead.
 */
function formatRatios(r: PerfResult): string[] {
  const ratios: Record<string, DesignRatio> = r.ratios ?? (r.ratio ? { "lockless/locked": r.ratio } : {});
  const out: string[] = [];
  for (const [key, q] of Object.entries(ratios)) {
    const calls = q.calls
      ? Object.entries(q.calls).map(([n, x]) => formatRatio3(n, x))
      : [
          formatRatio3("get dirty log", q.getDirtyLog),
          ...(q.clearDirtyLog ? [formatRatio3("clear dirty log", q.clearDirtyLog)] : []),
        ];
    out.push(
      "",
      `${key} (median, paired bootstrap 95% CI, ${r.options.iterations} iterations):`,
      ...calls,
      formatRatio3("guest throughput", q.guestThroughput),
      ...(q.dirtyMemory ? [formatRatio3("dirty memory", q.dirtyMemory)] : []),
      ...(q.dirtyMemoryCpu ? [formatRatio3("dirty memory CPU", q.dirtyMemoryCpu)] : []),
      ...(q.enableLogging ? [formatRatio3("enable logging", q.enableLogging)] : []),
      ...(q.enableLoggingCpu ? [formatRatio3("enable log. CPU", q.enableLoggingCpu)] : []),
    );
  }
  return out;
}

/** `kvmmu dirty-log-perf`: flags of KVM's dirty_log_perf_test where they apply. */
import { Command } from "commander";
import { CONTENTION, dirtyLogPerf, PerfResult, StrategyResult } from "../bench/dirty_log_perf.js";
import { parseIntIn, parseList, parseSize, progress } from "./parse.js";
import { einval } from "../errors.js";
import { interrupt } from "./interrupt.js";
import type { WpName } from "../vm.js";

const ms = (ns: number): string => (ns / 1e6).toFixed(2);

export function formatPerf(r: PerfResult): string {
  const out: string[] = [];
  const o = r.options;
  out.push(
    `dirty-log-perf: ${o.mode === "shadow" ? `shadow paging${o.guestHuge ? " (2 MiB guest pages)" : ""}` : "TDP"}, ` +
      `${o.vcpus} vCPUs x ${o.bytesPerVcpu / 2 ** 20} MiB, ${o.iterations} iterations, ` +
      `write ${o.writePercent}%, ${o.random ? "random" : "sequential"}, THP ${o.thp ? "on" : "off"}, ` +
      `contention migrate ${o.contention.migrateRate}/s invalidate ${o.contention.invalidateRate}/s, ` +
      `vCPUs ${o.park ? "parked" : "writing"} during get-dirty-log; ${r.machine.cpus} CPUs, node ${r.machine.node}`,
  );
  for (const [wp, s] of Object.entries(r.results) as [WpName, StrategyResult][]) {
    out.push("", `[${wp}] populate ${ms(s.populateNs)} ms, enable logging ${ms(s.enableLoggingNs)} ms`);
    s.iterations.forEach((it, i) =>
      out.push(
        `  iteration ${String(i + 1).padStart(2)}: dirty memory ${ms(it.dirtyMemoryNs).padStart(9)} ms   get dirty log ${ms(it.getDirtyLogNs).padStart(8)} ms   dirty pages ${it.dirtyPages}`,
      ),
    );
    out.push(
      `  get dirty log: avg ${ms(s.avgGetDirtyLogNs)} ms, median ${ms(s.medianGetDirtyLogNs)} ms, ${s.nsPerDirtyPage.toFixed(1)} ns per dirty page`,
      `  guest: ${(s.guestWritesPerSec / 1e6).toFixed(2)} M writes/s; faults fast ${s.faults.fast} slow ${s.faults.slow} (retries ${s.faults.retries}); TLB misses ${s.faults.tlbMisses}`,
      `  mmu_lock: ioctl waited ${ms(s.mmuLock.ioctlWaitNs)} ms; vCPUs waited ${ms(s.mmuLock.vcpuWaitNs)} ms, held ${ms(s.mmuLock.vcpuHoldNs)} ms over ${s.mmuLock.vcpuAcquisitions} acquisitions; remote flush in ioctl ${ms(s.flushNs)} ms`,
      `  host thread: ${s.host.migrations} migrations, ${s.host.invalidations} invalidations`,
    );
    if (s.shadow)
      out.push(
        `  shadow MMU: ${s.shadow["spUsed"]} pages (${s.shadow["indirectShadowPages"]} shadow guest tables), ${s.shadow["emulated"]} emulated guest-table writes, ${s.shadow["ptProtectFlushes"]} guest-table protections that flushed`,
      );
  }
  if (r.ratio) {
    out.push(
      "",
      `lockless/locked: get dirty log avg ${r.ratio.avgGetDirtyLog.toFixed(3)}x, median ${r.ratio.medianGetDirtyLog.toFixed(3)}x; guest throughput ${r.ratio.guestWritesPerSec.toFixed(3)}x`,
    );
  }
  out.push(
    `MMU metadata ${r.metadataPercent.toFixed(2)}% of ${r.guestMemoryBytes / 2 ** 20} MiB guest memory; peak RSS ${(r.peakRssBytes / 2 ** 20).toFixed(0)} MiB`,
  );
  return out.join("\n");
}

export function registerDirtyLogPerf(program: Command): void {
  program
    .command("dirty-log-perf")
    .description("time get-dirty-log and guest throughput for the locked and the lockless write-protect")
    .option("-v, --vcpus <n>", "vCPUs", "2")
    .option("-b, --bytes <size>", "guest memory per vCPU (suffix k/m/g)", "512M")
    .option("-i, --iterations <n>", "iterations per strategy", "10")
    .option("-w, --write-percent <p>", "percentage of accesses that write", "100")
    .option("-a, --random", "random access order (default sequential)", false)
    .option("-r, --seed <n>", "guest RNG seed", "1")
    .option("--wp <list>", "write-protect strategies, alternated", "locked,lockless")
    .option("--no-thp", "back guest memory with 4 KiB pages only")
    .option("--contention <level>", "MMU-notifier churn: none, default, heavy", "default")
    .option("--mode <mode>", "tdp (EPT on) or shadow (EPT off: the guest runs on its own page tables)", "tdp")
    .option("--guest-huge", "shadow mode: the guest maps its region with 2 MiB pages", false)
    .option("--migrate-rate <n>", "page migrations per second (overrides --contention)")
    .option("--invalidate-rate <n>", "2 MiB invalidations per second (overrides --contention)")
    .option(
      "--park",
      "park the vCPUs during get-dirty-log (KVM's perf test); default: they keep writing",
      false,
    )
    .option("--json", "print one JSON object on stdout", false)
    .action(async (a: Record<string, string | boolean>) => {
      const level = String(a["contention"]);
      const base = CONTENTION[level];
      if (!base)
        throw einval("--contention", `"${level}" is not one of ${Object.keys(CONTENTION).join(", ")}`);
      const contention = { ...base };
      if (a["migrateRate"] !== undefined)
        contention.migrateRate = parseIntIn("--migrate-rate", String(a["migrateRate"]), 0, 1e6);
      if (a["invalidateRate"] !== undefined)
        contention.invalidateRate = parseIntIn("--invalidate-rate", String(a["invalidateRate"]), 0, 1e6);
      const r = await dirtyLogPerf({
        vcpus: parseIntIn("--vcpus", String(a["vcpus"]), 1, 64),
        bytesPerVcpu: parseSize("--bytes", String(a["bytes"])),
        iterations: parseIntIn("--iterations", String(a["iterations"]), 1, 100000),
        writePercent: parseIntIn("--write-percent", String(a["writePercent"]), 0, 100),
        random: a["random"] === true,
        seed: parseIntIn("--seed", String(a["seed"]), 0, 2 ** 31 - 2),
        wp: parseList("--wp", String(a["wp"]), ["locked", "lockless"] as const),
        thp: a["thp"] !== false,
        contention,
        park: a["park"] === true,
        mode: parseList("--mode", String(a["mode"]), ["tdp", "shadow"] as const)[0],
        guestHuge: a["guestHuge"] === true,
        progress,
        signal: interrupt.signal,
      });
      process.stdout.write(a["json"] ? JSON.stringify(r) + "\n" : formatPerf(r) + "\n");
    });
}

/**
 * `kvmmu kernbench`: a fixed amount of guest work (processes, page-table churn, shared
 * file-cache mappings) timed for every combination of MMU mode and dirty logging, 3 runs each,
 * printed as the seed did: `real` per run, then kernbench's "Elapsed Time avg (std dev)".
 */
import { Command } from "commander";
import { designInfo, designNames, isDesign, parseDesignList } from "../mmu/design.js";
import {
  HIST_BUCKETS,
  kernbench,
  KERNBENCH_DEFAULTS,
  KernbenchCell,
  KernbenchResult,
  loggingNames,
  LoggingName,
  MODES,
} from "../bench/kernbench.js";
import { parseIntIn, parseList, progress } from "./parse.js";
import { checkOutput, finished, writeResult } from "../bench/result.js";
import { formatRatio } from "../bench/stats.js";
import type { MmuModeName } from "../vm.js";
import { interrupt } from "./interrupt.js";
import { kernbenchCsv, writeCsv } from "../results/csv.js";

/** `time`'s format: 0m1.234s. */
function real(ns: number): string {
  const s = ns / 1e9;
  const m = Math.floor(s / 60);
  return `${m}m${(s - 60 * m).toFixed(3)}s`;
}

function label(l: LoggingName): string {
  if (l === "off") return "dirty logging off";
  return `dirty logging on, ${l} write-protect${isDesign(l) ? ` (${designInfo(l).kernel})` : ""}`;
}

/** --logging, its designs replaced by --wp's when given. */
function loggingOf(a: Record<string, unknown>): LoggingName[] {
  const logging = parseList("--logging", String(a["logging"]), loggingNames());
  if (a["wp"] === undefined) return logging;
  const designs = parseDesignList("--wp", a["wp"] as string);
  return [...(logging.includes("off") ? (["off"] as LoggingName[]) : []), ...designs];
}

export function formatKernbench(r: KernbenchResult): string {
  const o = r.options;
  const out: string[] = [];
  out.push(
    `kernbench: ${o.vcpus} vCPUs x ${o.processes} processes, ${o.jobs} jobs per vCPU (${o.jobsPerProcess} per process ` +
      `lifetime, ${o.heapPages} heap pages, ${o.libPages} library pages, ${o.sharedPages} shared-file pages, compute ${o.compute}), ` +
      `${o.warmup ?? 0} warm-up + ${o.runs} runs, THP ${o.thp ? "on" : "off"}; ${r.machine.cpus} CPUs, node ${r.machine.node}; git ${r.gitCommit?.slice(0, 12) ?? "unknown"}`,
  );
  for (const mode of Object.keys(r.results) as MmuModeName[]) {
    const per = r.results[mode]!;
    for (const logging of Object.keys(per)) {
      const c = per[logging]!;
      out.push("", `[${mode === "tdp" ? "EPT on (tdp)" : "EPT off (shadow)"}, ${label(logging)}]`);
      let k = 0;
      for (const run of c.runs)
        out.push(
          run.warmup ? `  warm-up: real ${real(run.realNs)}` : `  run ${++k}:  real ${real(run.realNs)}`,
        );
      const s = (ns: number): string => (ns / 1e9).toFixed(3);
      out.push(
        `  Elapsed Time ${s(c.realAvgNs)} (${s(c.realStdNs)})   median ${s(c.real.median)} s [${s(c.real.ci95[0])}, ${s(c.real.ci95[1])}], ` +
          `min ${s(c.real.min)}, max ${s(c.real.max)}   ${c.opsPerSec.toFixed(1)} jobs/s` +
          (logging !== "off" ? `   ${c.harvestsPerSec.toFixed(0)} harvests/s` : ""),
      );
      out.push(`  rmap chains: ${histLine(c)}; longest ${c.rmapMaxChain}`);
      out.push(
        `  pte_list_desc: ${c.descAllocsPerSec.toFixed(0)} allocated/s, ${c.descReusedPerSec.toFixed(0)} of them reused/s; ` +
          `lockless walker: ${c.walkerWalksPerSec.toFixed(0)} walks/s, ${c.walkerRestartsPerSec.toFixed(1)} restarts/s`,
      );
      const f = c.faults;
      out.push(
        `  last run: ${f.tlbMisses} TLB misses, ${f.guestWalks} guest walks, faults fast ${f.fast} slow ${f.slow}, ${f.emulated} emulated guest-table writes`,
      );
      if (c.shadow) {
        const s = c.shadow;
        out.push(
          `  shadow MMU: ${s["spCreated"]} pages created (${s["spHashHits"]} hash hits), ${s["flooded"]} zapped by write flooding, ` +
            `${s["pteZapped"]} sptes zapped by guest-table writes, ${s["recycled"]} recycled, ${s["ptProtectFlushes"]} guest-table protections that flushed`,
        );
      }
    }
  }
  out.push("", "Elapsed Time (s), relative to dirty logging off in the same mode:");
  for (const mode of Object.keys(r.results) as MmuModeName[]) {
    const per = r.results[mode]!;
    const off = per.off?.realAvgNs;
    const cells = Object.keys(per).map((l) => {
      const c = per[l]!;
      return `${l} ${(c.realAvgNs / 1e9).toFixed(3)}${off !== undefined && l !== "off" ? ` (${(c.realAvgNs / off).toFixed(3)}x)` : ""}`;
    });
    out.push(`  ${mode.padEnd(6)} ${cells.join("   ")}`);
  }
  const rows = Object.entries(r.ratio).flatMap(([mode, per]) =>
    Object.entries(per).map(
      ([k, q]) => `  ${mode.padEnd(6)} ${k.padEnd(16)} ${formatRatio(q)}  ${q.verdict}`,
    ),
  );
  if (rows.length)
    out.push("", "Elapsed Time ratios (medians, paired bootstrap 95% CI over the runs):", ...rows);
  return out.join("\n");
}

function histLine(c: KernbenchCell): string {
  return HIST_BUCKETS.map(([label]) => `${label}: ${(c.rmapHistogram[label] ?? 0).toFixed(0)}`).join("  ");
}

export function registerKernbench(program: Command): void {
  const d = KERNBENCH_DEFAULTS;
  program
    .command("kernbench")
    .description(
      "fixed guest work (processes, page-table churn, shared mappings) timed with EPT on/off and dirty logging off and on under each design",
    )
    .option("-v, --vcpus <n>", "vCPUs", String(d.vcpus))
    .option("-p, --processes <n>", "guest processes per vCPU", String(d.processes))
    .option("-j, --jobs <n>", "jobs per vCPU (the fixed amount of work)", String(d.jobs))
    .option("-n, --runs <n>", "measured runs per combination", String(d.runs))
    .option("--warmup <n>", "warm-up runs per combination, left out of the statistics", "1")
    .option("--mode <list>", "MMU modes: tdp (EPT on), shadow (EPT off)", MODES.join(","))
    .option(
      "--logging <list>",
      `dirty logging: off and/or designs (${designNames().join(", ")})`,
      loggingNames().join(","),
    )
    .option(
      "--wp <list>",
      "the designs run with dirty logging on (a name, a comma list or all; as dirty-log-perf's --wp): replaces the designs of --logging, keeps its off",
    )
    .option("--jobs-per-process <n>", "jobs before a process exits and is replaced", String(d.jobsPerProcess))
    .option("--heap-pages <n>", "anonymous pages a job maps, uses and unmaps", String(d.heapPages))
    .option(
      "--lib-pages <n>",
      "shared library (file cache) pages mapped by every process",
      String(d.libPages),
    )
    .option("--shared-pages <n>", "pages of the shared writable file", String(d.sharedPages))
    .option("--lib-reads <n>", "library pages read per job", String(d.libReads))
    .option("--shared-writes <n>", "shared-file pages written per job", String(d.sharedWrites))
    .option("--compute <n>", "compute-loop iterations per job", String(d.compute))
    .option("--no-thp", "back guest memory with 4 KiB pages only")
    .option("-r, --seed <n>", "guest RNG seed", String(d.seed))
    .option("--migrate-rate <n>", "host page migrations per second during the runs", "0")
    .option("--invalidate-rate <n>", "host 2 MiB invalidations per second during the runs", "0")
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the JSON object to FILE")
    .option("--csv <file>", "also write the runs as CSV to FILE")
    .action(async (a: Record<string, string | boolean>) => {
      if (a["output"] !== undefined) checkOutput(String(a["output"]));
      if (a["csv"] !== undefined) checkOutput(String(a["csv"]), "--csv");
      const n = (opt: string, key: string, min: number, max: number): number =>
        parseIntIn(opt, String(a[key]), min, max);
      const r = await kernbench({
        vcpus: n("--vcpus", "vcpus", 1, 64),
        processes: n("--processes", "processes", 1, 64),
        jobs: n("--jobs", "jobs", 1, 1e7),
        runs: n("--runs", "runs", 1, 100),
        warmup: n("--warmup", "warmup", 0, 100),
        migrateRate: n("--migrate-rate", "migrateRate", 0, 1e6),
        invalidateRate: n("--invalidate-rate", "invalidateRate", 0, 1e6),
        modes: parseList("--mode", String(a["mode"]), MODES),
        logging: loggingOf(a),
        jobsPerProcess: n("--jobs-per-process", "jobsPerProcess", 1, 1e7),
        heapPages: n("--heap-pages", "heapPages", 1, 512),
        libPages: n("--lib-pages", "libPages", 1, 1 << 18),
        sharedPages: n("--shared-pages", "sharedPages", 1, 1 << 18),
        libReads: n("--lib-reads", "libReads", 0, 1e6),
        sharedWrites: n("--shared-writes", "sharedWrites", 0, 1e6),
        compute: n("--compute", "compute", 0, 1e9),
        thp: a["thp"] !== false,
        seed: n("--seed", "seed", 0, 2 ** 31 - 2),
        progress,
        signal: interrupt.signal,
      });
      const doc = finished(r);
      if (a["output"] !== undefined) writeResult(String(a["output"]), doc);
      if (a["csv"] !== undefined) writeCsv(String(a["csv"]), kernbenchCsv(r));
      process.stdout.write(a["json"] ? JSON.stringify(doc) + "\n" : formatKernbench(r) + "\n");
    });
}

/** `kvmmu dirty-log-perf`: flags of KVM's dirty_log_perf_test where they apply. */
import { requireKernelDesign } from "../kernel/register.js";
import os from "node:os";
import { Command } from "commander";
import {
  Contention,
  contentionLevel,
  dirtyLogPerf,
  PerfOptions,
  PerfOptionsInput,
  perfPreset,
  PRESETS,
  resolvePerfOptions,
} from "../bench/dirty_log_perf.js";
import { DEFAULT_BASELINE, designNames } from "../mmu/design.js";
import { isRunName, parseRunList } from "../bench/dirty_log_perf_variant.js";
import { formatPerf } from "../bench/dirty_log_perf_format.js";
import { checkOutput, writeResult } from "../bench/result.js";
import { parseIntIn, parseOne, parseSize, progress } from "./parse.js";
import { einval } from "../errors.js";
import { interrupt } from "./interrupt.js";
import { perfCsv, writeCsv } from "../results/csv.js";
import { MmuMode } from "../kvm_host.js";
import { openTrace, traceDone, traceFlags } from "./trace_opt.js";

export function registerDirtyLogPerf(program: Command): void {
  const cmd = program
    .command("dirty-log-perf")
    .description(
      "time get-dirty-log and guest throughput for write-protect designs, alternated, each against a baseline",
    );
  workloadFlags(cmd);
  cmd
    .option("--json", "print one JSON object on stdout", false)
    .option(
      "-c, --pin <cpus>",
      'pin threads to CPUs as KVM\'s test -c: the vCPUs\' CPUs, then the harvester\'s (e.g. 1,0); "auto": harvester on 0, vCPUs on the others; "none"',
      "none",
    )
    .option("--numa-scan-size <size>", "guest memory each NUMA balancing scan unmaps (suffix k/m/g)", "256M")
    .option(
      "--lock <kind>",
      "mmu_lock waiters: sleep (spin briefly, then sleep) or spin (3.11's ticket spinlock)",
      "sleep",
    )
    .option(
      "--preset <name>",
      `a set of options (${Object.keys(PRESETS).join(", ")}); options given here win`,
    )
    .option(
      "--park",
      "park the vCPUs during get-dirty-log (KVM's perf test); default: they keep writing",
      false,
    )
    .option(
      "--relog",
      "every iteration: logging off, one pass (huge pages back), logging on again (timed); the iteration's dirty memory is then the first pass with logging",
      false,
    )
    .option(
      "-g, --no-manual-protect",
      "classic KVM_GET_DIRTY_LOG (clear and protect in GET); by default GET + KVM_CLEAR_DIRTY_LOG with manual protect and initially-set, as KVM's test",
    )
    .option(
      "--clear-chunk <pages>",
      "pages per KVM_CLEAR_DIRTY_LOG call, a multiple of 64 (0: the whole slot)",
      "0",
    )
    .option(
      "--ring <entries>",
      "a per-vCPU dirty ring of this many entries instead of the bitmap (256..65536)",
    )
    .option(
      "--window <ms>",
      "timed iterations: each iteration runs this many ms, get-dirty-log every --harvest-every ms (0: wait for two passes)",
    )
    .option("--harvest-every <ms>", "timed iterations: ms between get-dirty-log calls (default: the window)")
    .option("--output <file>", "also write the JSON object to FILE")
    .option("--csv <file>", "also write the iterations as CSV to FILE");
  traceFlags(cmd).action(async (a: Record<string, string | boolean | undefined>, cmd: Command) => {
    if (a["output"] !== undefined) checkOutput(String(a["output"]));
    if (a["csv"] !== undefined) checkOutput(String(a["csv"]), "--csv");
    const o = resolvePerfOptions(perfFlags(a, (k) => cmd.getOptionValueSource(k) === "cli"));
    warnThreads(o);
    const trace = openTrace(a, "dirty-log-perf");
    let r;
    try {
      r = await dirtyLogPerf(trace ? { ...o, onVm: trace.onVm } : o);
    } finally {
      if (trace) traceDone(trace);
    }
    if (a["output"] !== undefined) writeResult(String(a["output"]), r);
    if (a["csv"] !== undefined) writeCsv(String(a["csv"]), perfCsv(r));
    process.stdout.write(a["json"] ? JSON.stringify(r) + "\n" : formatPerf(r) + "\n");
  });
}

type Flags = Record<string, string | boolean | undefined>;

/** The contention flags: a level, and rates that override it (or the preset's). */
function contentionFlags(a: Flags, given: (k: string) => boolean): PerfOptionsInput["contention"] {
  const c: Partial<Contention> = given("contention")
    ? contentionLevel(String(a["contention"]), "--contention")
    : {};
  if (a["migrateRate"] !== undefined)
    c.migrateRate = parseIntIn("--migrate-rate", String(a["migrateRate"]), 0, 1e6);
  if (a["invalidateRate"] !== undefined)
    c.invalidateRate = parseIntIn("--invalidate-rate", String(a["invalidateRate"]), 0, 1e6);
  if (a["invalidatePages"] !== undefined)
    c.invalidatePages = parseIntIn("--invalidate-pages", String(a["invalidatePages"]), 1, 1 << 22);
  return Object.keys(c).length > 0 ? c : undefined;
}

function parsePin(v: string): number[] | "auto" | "none" {
  if (v === "none" || v === "auto") return v;
  return v.split(",").map((x) => parseIntIn("--pin", x.trim(), 0, os.cpus().length - 1));
}

/**
 * The flags given on the command line, parsed, as the partial options dirtyLogPerf resolves
 * (defaults and the preset's values come from resolvePerfOptions, not from here).
 */
export function perfFlags(a: Flags, given: (k: string) => boolean): PerfOptionsInput {
  const s = (k: string): string => String(a[k]);
  const out: PerfOptionsInput = {};
  const set = <K extends keyof PerfOptionsInput>(
    k: K,
    flag: string,
    parse: () => PerfOptionsInput[K],
  ): void => {
    if (given(flag)) out[k] = parse();
  };
  const presetName = a["preset"] === undefined ? undefined : s("preset");
  perfPreset(presetName, "--preset");
  if (presetName !== undefined) out.preset = presetName;
  const contention = contentionFlags(a, given);
  if (contention !== undefined) out.contention = contention;
  set("vcpus", "vcpus", () => parseIntIn("--vcpus", s("vcpus"), 1, 64));
  set("bytesPerVcpu", "bytes", () => parseSize("--bytes", s("bytes")));
  set("iterations", "iterations", () => parseIntIn("--iterations", s("iterations"), 1, 100000));
  set("warmup", "warmup", () => parseIntIn("--warmup", s("warmup"), 0, 1000));
  set("writePercent", "writePercent", () => parseIntIn("--write-percent", s("writePercent"), 0, 100));
  set("random", "random", () => a["random"] === true);
  set("seed", "seed", () => parseIntIn("--seed", s("seed"), 0, 2 ** 31 - 2));
  if (given("wp")) requireKernelDesign("--wp", s("wp"));
  set("wp", "wp", () => parseRunList("--wp", s("wp"), a["mode"] === "shadow" ? MmuMode.Shadow : MmuMode.Tdp));
  set("baseline", "baseline", () => s("baseline"));
  set("thp", "thp", () => a["thp"] !== false);
  set("park", "park", () => a["park"] === true);
  set("relog", "relog", () => a["relog"] === true);
  set("lock", "lock", () => parseOne("--lock", s("lock"), ["sleep", "spin"] as const));
  set("mode", "mode", () => parseOne("--mode", s("mode"), ["tdp", "shadow"] as const));
  set("guestHuge", "guestHuge", () => a["guestHuge"] === true);
  set("ring", "ring", () => parseIntIn("--ring", s("ring"), 256, 65536));
  set("manualProtect", "manualProtect", () => a["manualProtect"] !== false);
  set("clearChunkPages", "clearChunk", () => parseIntIn("--clear-chunk", s("clearChunk"), 0, 1 << 30));
  set("windowMs", "window", () => parseIntIn("--window", s("window"), 0, 600_000));
  set("harvestIntervalMs", "harvestEvery", () =>
    parseIntIn("--harvest-every", s("harvestEvery"), 1, 600_000),
  );
  set("numaScanPeriodMs", "numaScanPeriod", () =>
    parseIntIn("--numa-scan-period", s("numaScanPeriod"), 0, 3_600_000),
  );
  set("numaScanBytes", "numaScanSize", () => parseSize("--numa-scan-size", s("numaScanSize")));
  set("pin", "pin", () => parsePin(s("pin")));
  const wp = out.wp;
  if (out.baseline !== undefined && wp !== undefined && !wp.includes(out.baseline))
    throw einval("--baseline", `"${out.baseline}" is not one of the designs run (--wp ${wp.join(",")})`);
  if (out.baseline !== undefined && !isRunName(out.baseline))
    throw einval("--baseline", `"${out.baseline}" is not one of ${designNames().join(", ")}`);
  return { ...out, progress, signal: interrupt.signal };
}

/** How the vCPU count was chosen against the cores, or a warning when they are oversubscribed. */
function warnThreads(o: PerfOptions): void {
  const t = o.threads;
  if (!t) return;
  const host = t.hostThread ? " + the host thread" : "";
  if (t.vcpusFrom === "auto")
    progress(`dirty-log-perf: ${o.vcpus} vCPUs, so that vCPUs + the harvester${host} fit ${t.cpus} cores`);
  else if (t.oversubscribed)
    process.stderr.write(
      `kvmmu: warning: ${o.vcpus} vCPUs + the harvester${host} = ${o.vcpus + 1 + t.hostThread} threads on ${t.cpus} cores: ` +
        `oversubscribed, the timings measure CPU sharing as much as the MMU` +
        (o.lock === "spin"
          ? "; with --lock spin, waiters burn the cores that holders need: the run can take orders of magnitude longer"
          : "") +
        "\n",
    );
}

/** The flags of the workload and the designs (KVM's test's -v, -b, -i, -w, ...). */
function workloadFlags(cmd: Command): void {
  cmd
    .option(
      "-v, --vcpus <n>",
      "vCPUs (default: as many as fit the cores next to the harvester and host thread)",
    )
    .option("-b, --bytes <size>", "guest memory per vCPU (suffix k/m/g)", "512M")
    .option("-i, --iterations <n>", "measured iterations per design (after the warm-up)", "10")
    .option("--warmup <n>", "warm-up iterations per design, left out of the statistics", "1")
    .option("-w, --write-percent <p>", "percentage of accesses that write", "100")
    .option("-a, --random", "random access order (default sequential)", false)
    .option("-r, --seed <n>", "guest RNG seed", "1")
    .option(
      "--wp <list>",
      `write-protect designs, alternated: a name, a comma list or all (${designNames().join(", ")}); tdp-mmu:no-pml and tdp-mmu:no-eager-split run the TDP MMU with write-protect logging or lazy splitting as designs of their own`,
      "all",
    )
    .option(
      "--baseline <design>",
      `the design the others are compared with (default ${DEFAULT_BASELINE} when run, else the first of --wp)`,
    )
    .option("--no-thp", "back guest memory with 4 KiB pages only")
    .option("--contention <level>", "MMU-notifier churn: none, default, heavy", "default")
    .option("--mode <mode>", "tdp (EPT on) or shadow (EPT off: the guest runs on its own page tables)", "tdp")
    .option("--guest-huge", "shadow mode: the guest maps its region with 2 MiB pages", false)
    .option("--migrate-rate <n>", "page migrations per second (overrides --contention)")
    .option("--invalidate-rate <n>", "range invalidations per second (overrides --contention)")
    .option("--invalidate-pages <n>", "pages per invalidation (default 512: 2 MiB)")
    .option(
      "--numa-scan-period <ms>",
      "NUMA balancing as Linux 3.8-3.12: every <ms> a vCPU unmaps the next --numa-scan-size of guest memory through the MMU notifier (0: off)",
      "0",
    );
}

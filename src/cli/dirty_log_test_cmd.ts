/** `kvmmu dirty-log-test`: KVM's dirty_log_test, with a second, migration-style oracle. */
import { Command } from "commander";
import {
  dirtyLogTest,
  DirtyLogTestOptions,
  DirtyLogTestResult,
  MODES,
  OracleName,
  OracleResult,
  ORACLES,
} from "../verify/dirty_log_test.js";
import { parseIntIn, parseList, parseOne, parseNumberIn, parseSize, progress } from "./parse.js";
import { einval, KvmError } from "../errors.js";
import { interrupt } from "./interrupt.js";
import { checkOutput, envelope, finished, writeResult } from "../bench/result.js";
import { designBackend, DesignName, designNames, parseDesignList } from "../mmu/design.js";
import { requireKernelDesign } from "../kernel/register.js";
import { BUG, BugName } from "../kvm_host.js";
import { MmuMode } from "../kvm_host.js";
import { openTrace, traceDone, traceFlags } from "./trace_opt.js";

function mib(bytes: number): string {
  return bytes % 2 ** 20 === 0 ? `${bytes / 2 ** 20} MiB` : `${bytes / 1024} KiB`;
}

/** FAIL on any violation; an interrupted run is never a PASS, and says what it left out. */
function verdict(r: DirtyLogTestResult): string {
  if (r.violations > 0) return "FAIL";
  if (!r.interrupted) return "PASS";
  return `INTERRUPTED${r.notRun.length > 0 ? ` (not run: ${r.notRun.join(", ")})` : ""}`;
}

export function formatDirtyLogTest(r: DirtyLogTestResult): string {
  const o = r.options;
  const out: string[] = [];
  const churn =
    o.migrateRate > 0 || o.invalidateRate > 0
      ? `migrate ${o.migrateRate}/s, invalidate ${o.invalidateRate}/s`
      : "off";
  out.push(
    `dirty-log-test${o.mode === "shadow" ? " (shadow paging)" : ""}: ${o.vcpus} vCPUs x ${mib(o.bytesPerVcpu)}, slot of ${r.slotPages} pages at guest-physical ${r.slotGpa}, ` +
      `interval ${o.intervalMs} ms, THP ${o.thp ? "on" : "off"}, notifier churn ${churn}, seed ${o.seed}; ` +
      `${r.machine.cpus} CPUs, node ${r.machine.node}`,
  );
  for (const [wp, per] of Object.entries(r.results) as [
    DesignName,
    Partial<Record<OracleName, OracleResult>>,
  ][]) {
    for (const [oracle, x] of Object.entries(per) as [OracleName, OracleResult][]) {
      const what =
        oracle === "kvm"
          ? `dirty ${x.dirtyPages}, clean ${x.cleanPages}, guest writes ${x.guestWrites}`
          : `pages copied ${x.dirtyPages}, guest writes ${x.guestWrites}`;
      out.push(
        `[${wp}] ${oracle}: ${x.iterations} ${oracle === "kvm" ? "iterations" : "checks"}, ${what}; ` +
          `pages checked ${x.pagesChecked}, violations ${x.violations}; ` +
          `host thread ${x.host.migrations} migrations, ${x.host.invalidations} invalidations; ` +
          `${(x.durationMs / 1000).toFixed(2)} s (verify ${(x.verifyMs / 1000).toFixed(2)} s)`,
      );
    }
  }
  if (r.modes.length > 1 || r.modes.some((m) => m.mode !== "dirty-log"))
    for (const m of r.modes)
      out.push(
        `[${m.wp}] kvm -M ${m.mode}: ${m.iterations} iterations, dirty ${m.dirtyPages}, pages checked ${m.pagesChecked}, ` +
          `violations ${m.violations}${m.mode === "dirty-ring" ? `, ring-full exits ${m.ringFullExits}` : ""}`,
      );
  for (const v of r.firstViolations)
    out.push(
      `  violation: [${v.wp}] ${v.oracle}${v.mode && v.mode !== "dirty-log" ? ` -M ${v.mode}` : ""} iteration ${v.iteration} page ${v.page} (gpa ${v.gpa}): ${v.what}`,
    );
  if (r.violations > r.firstViolations.length)
    out.push(`  ... ${r.violations - r.firstViolations.length} more`);
  out.push(
    `Total: ${r.iterations} iterations, ${r.pagesChecked} pages checked (${Math.round(r.pagesCheckedPerSec)}/s), ` +
      `${r.violations} violations in ${(r.durationMs / 1000).toFixed(2)} s: ${verdict(r)}`,
  );
  return out.join("\n");
}

export function registerDirtyLogTest(program: Command): void {
  const cmd = program
    .command("dirty-log-test")
    .description(
      "check every dirty bit KVM_GET_DIRTY_LOG reports (KVM's dirty_log_test) for each write-protect design",
    )
    .option("-i, --iterations <n>", "verified iterations per design and oracle", "32")
    .option("--seconds <s>", "run for this long in all instead (split over designs and oracles)")
    .option("-I, --interval <ms>", "interval per iteration, ms (a random mid-run reap falls inside it)", "10")
    .option("-v, --vcpus <n>", "vCPUs, each writing its own region", "2")
    .option("-b, --bytes <size>", "guest memory per vCPU (suffix k/m/g)", "64M")
    .option(
      "--wp <list>",
      `write-protect designs: a name, a comma list or all (${designNames().join(", ")})`,
      "all",
    )
    .option(
      "--oracle <list>",
      "kvm (exact stamp check), qemu (migration copy must equal the source)",
      "kvm,qemu",
    )
    .option(
      "-M, --log-mode <list>",
      "how the kvm oracle collects: dirty-log (GET), clear-log (manual protect, INITIALLY_SET, GET + CLEAR), dirty-ring, or all",
      "dirty-log",
    )
    .option(
      "-c, --ring-entries <n>",
      "dirty-ring: entries per vCPU ring (power of two, 256..65536; default by slot size)",
    )
    .option("--no-thp", "back guest memory with 4 KiB pages only")
    .option("--no-pml", "tdp-mmu: dirty logging by write protection instead of D bits and PML")
    .option("--no-eager-split", "tdp-mmu: split huge pages lazily (write faults), not when logging starts")
    .option(
      "--mode <mode>",
      "tdp (EPT on) or shadow (EPT off: the guests store through their own page tables)",
      "tdp",
    )
    .option("--no-notifier", "no MMU-notifier churn (page migration, invalidations) from the host thread")
    .option("--migrate-rate <n>", "page migrations per second", "200")
    .option("--invalidate-rate <n>", "2 MiB invalidations per second", "50")
    .option("--seed <n>", "RNG seed (guest page choice, reap delays, host thread)", "1")
    .option(
      "--bug <list>",
      `switch on engine bugs of the catalog, as a negative control (${Object.keys(BUG).join(", ")})`,
    )
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the JSON object to FILE");
  traceFlags(cmd).action(async (a: Record<string, string | boolean | undefined>) => {
    if (a["output"] !== undefined) checkOutput(String(a["output"]));
    const o = testFlags(a);
    const trace = openTrace(a, "dirty-log-test");
    let r;
    try {
      r = await dirtyLogTest(trace ? { ...o, onVm: trace.onVm } : o);
    } finally {
      if (trace) traceDone(trace);
    }
    // The saved result: the envelope's machine (a superset of r.machine) and the rest of r.
    const saved = finished({ ...r, ...envelope("dirty-log-test", r.options), results: r.results });
    if (a["output"] !== undefined) writeResult(String(a["output"]), saved);
    process.stdout.write(a["json"] ? JSON.stringify(saved) + "\n" : formatDirtyLogTest(r) + "\n");
    if (r.violations > 0) process.exitCode = 1;
  });
}

/** The command line as dirtyLogTest's options. */
function testFlags(a: Record<string, string | boolean | undefined>): DirtyLogTestOptions {
  const bytes = parseSize("--bytes", String(a["bytes"]));
  if (bytes < 4096 || bytes % 4096 !== 0)
    throw einval("--bytes", `${bytes} is not a positive multiple of 4 KiB`);
  const vcpus = parseIntIn("--vcpus", String(a["vcpus"]), 1, 64);
  if (vcpus * bytes > 16 * 2 ** 30) throw einval("--bytes", "vCPUs x bytes is over 16 GiB");
  const notifier = a["notifier"] !== false;
  return {
    iterations: parseIntIn("--iterations", String(a["iterations"]), 1, 1_000_000),
    seconds:
      a["seconds"] === undefined ? undefined : parseNumberIn("--seconds", String(a["seconds"]), 0.001, 1e7),
    intervalMs: parseIntIn("--interval", String(a["interval"]), 1, 60_000),
    vcpus,
    bytesPerVcpu: bytes,
    wp: kernelOrModels(String(a["wp"]), a["mode"] === "shadow" ? MmuMode.Shadow : MmuMode.Tdp),
    oracles: parseList("--oracle", String(a["oracle"]), ORACLES),
    modes: a["logMode"] === "all" ? [...MODES] : parseList("--log-mode", String(a["logMode"]), MODES),
    ringEntries:
      a["ringEntries"] === undefined
        ? undefined
        : parseIntIn("--ring-entries", String(a["ringEntries"]), 256, 65536),
    thp: a["thp"] !== false,
    pml: a["pml"] !== false,
    eagerPageSplit: a["eagerSplit"] !== false,
    mode: parseOne("--mode", String(a["mode"]), ["tdp", "shadow"] as const),
    migrateRate: notifier ? parseNumberIn("--migrate-rate", String(a["migrateRate"]), 0, 1e6) : 0,
    invalidateRate: notifier ? parseNumberIn("--invalidate-rate", String(a["invalidateRate"]), 0, 1e6) : 0,
    seed: parseIntIn("--seed", String(a["seed"]), 0, 2 ** 31 - 2),
    bugs:
      a["bug"] === undefined
        ? undefined
        : parseList("--bug", String(a["bug"]), Object.keys(BUG) as BugName[]),
    progress,
    signal: interrupt.signal,
  };
}

/**
 * The designs of --wp. `kernel` named where /dev/kvm is missing: ENODEV/EACCES naming the
 * device; where it opens: ENOSYS, as the oracle over the kernel backend is not built yet (rather
 * than the model Vm's refusal of a design without a model MMU).
 */
function kernelOrModels(list: string, mode: MmuMode): DesignName[] {
  requireKernelDesign("--wp", list);
  if (list.split(",").some((s) => s.trim() === "kernel"))
    throw new KvmError(
      "ENOSYS",
      "--wp kernel: dirty-log-test over the kernel backend is not built yet (the models run it; kvmmu conformance runs the kernel)",
    );
  // `all` is every model design here.
  return parseDesignList("--wp", list, mode).filter((d) => designBackend(d) !== "kernel");
}

/**
 * The real kernel in dirty-log-perf: `--wp ...,kernel` (where /dev/kvm opens) runs a
 * KernelPerfSession (src/kernel/dirty_log_perf.ts) beside the models' VMs, alternated with them
 * iteration by iteration, same vCPUs, bytes and log mode, its iterations in the models' shape
 * (IterationResult) so that ns per dirty page, the ratios and their CIs come from the same
 * functions (dirty_log_perf_calls.ts, dirty_log_perf_result.ts).
 *
 * What the kernel cannot tell: its calls are not decomposed (mmu_lock wait, flush and PML kick
 * are inside the call's time, reported as its protect part with the other parts 0), and it has
 * no model counters (faults, mmu_lock, metadata): its result has `kernel` (the host's KVM
 * flavour and its KVM_GET_STATS_FD counters) instead. Only the parked form is run: the kernel's
 * vCPU workers park after each pass, so --park is required, as is --contention none (no
 * notifier churn on the kernel's memory), TDP mode, and every page written in order.
 *
 * UNTESTED against a kernel: written on machines without /dev/kvm (docs/conformance.md).
 */
import { einval } from "../errors.js";
import { KernelPerfSession, kvmFlavour } from "../kernel/dirty_log_perf.js";
import { KERNEL_DESIGN } from "../kernel/register.js";
import { LogModeName, logModeOf, PerfOptions } from "./dirty_log_perf_options.js";
import { IterationResult, StrategyResult } from "./dirty_log_perf_result.js";
import { iterationStats } from "./dirty_log_perf_stats.js";
import { cpuMark, cpuSince } from "./dirty_log_perf_setup.js";

export interface KernelRun {
  kind: "kernel";
  wp: string;
  session: KernelPerfSession;
  iters: IterationResult[];
  logMode: LogModeName;
  /** Measured iterations only. */
  activeMs: number;
  writes: number;
  disableLoggingNs: number;
}

/** EINVAL naming the option for what the kernel run does not do (see the file's comment). */
export function checkKernelOptions(o: PerfOptions): void {
  if (!o.wp.includes(KERNEL_DESIGN)) return;
  const no = (opt: string, why: string): never => {
    throw einval(opt, `--wp ${KERNEL_DESIGN}: ${why}`);
  };
  if (!o.park) no("park", "the kernel's vCPUs park after each pass; run with --park");
  if (o.contention.migrateRate > 0 || o.contention.invalidateRate > 0)
    no("contention", "no notifier churn is made on the kernel's memory; run with --contention none");
  if (o.mode === "shadow") no("mode", "the kernel picks its own MMU; run in tdp mode");
  if ((o.windowMs ?? 0) > 0) no("windowMs", "timed windows are not run on the kernel");
  if (o.relog === true) no("relog", "logging is not re-enabled per iteration on the kernel");
  if (o.writePercent !== 100 || o.random) no("writePercent", "the kernel's guest writes every page in order");
}

export async function setupKernel(o: PerfOptions): Promise<KernelRun> {
  const logMode = logModeOf(o);
  const session = await KernelPerfSession.open({
    vcpus: o.vcpus,
    bytesPerVcpu: o.bytesPerVcpu,
    iterations: o.iterations,
    log: logMode === "dirty-ring" ? "ring" : logMode === "clear-log" ? "clear" : "get",
    ...(o.ring !== undefined ? { ringEntries: o.ring } : {}),
  });
  return {
    kind: "kernel",
    wp: KERNEL_DESIGN,
    session,
    iters: [],
    logMode,
    activeMs: 0,
    writes: 0,
    disableLoggingNs: 0,
  };
}

/** One iteration of the kernel's VM, in the models' shape. */
export async function iterateKernel(run: KernelRun, warmup: boolean): Promise<IterationResult> {
  const t0 = performance.now();
  const sw0 = process.resourceUsage().involuntaryContextSwitches;
  const exits0 = run.session.ringFullExits();
  const dirtyMemoryNs = await run.session.dirtyMemory();
  const cpu0 = cpuMark();
  const h = run.session.harvest();
  const cpu = cpuSince(cpu0);
  const activeMs = performance.now() - t0;
  if (!warmup) {
    run.activeMs += activeMs;
    run.writes += h.writes;
  }
  const mode = run.logMode;
  // The call that write-protects, whole: CLEAR under manual protect, the ring's reset, else GET.
  const protectNs = mode === "clear-log" ? h.clearNs : mode === "dirty-ring" ? h.ringResetNs : h.getNs;
  return {
    warmup,
    dirtyMemoryNs,
    getDirtyLogNs: h.getNs,
    ...(mode === "clear-log" ? { clearDirtyLogNs: h.clearNs } : {}),
    lockWaitNs: 0,
    protectNs,
    flushNs: 0,
    pmlFlushNs: 0,
    dirtyPages: h.dirtyPages,
    guestThroughput: h.writes / (activeMs / 1000),
    cpuNs: cpu.cpuNs,
    preemptions: cpu.preemptions,
    ...(mode === "dirty-ring"
      ? {
          ringHarvestNs: h.ringHarvestNs,
          ringResetNs: h.ringResetNs,
          ringFullExits: run.session.ringFullExits() - exits0,
        }
      : {}),
    vcpuLockWaitNs: 0,
    hostLockWaitNs: 0,
    switches: process.resourceUsage().involuntaryContextSwitches - sw0,
    writes: h.writes,
  };
}

/** The kernel's statistics over its measured iterations (as a model's), its flavour and counters. */
export function kernelStrategyResult(run: KernelRun): StrategyResult {
  const s = run.session;
  return {
    ...iterationStats({ ...run, populateNs: s.populateNs, enableLoggingNs: s.enableNs }, run.iters),
    kernel: { flavour: kvmFlavour(), ringFullExits: s.ringFullExits(), stats: s.vm.stats() },
  };
}

/** dirty-log-perf: one design's statistics, from its run's iterations and its VM's counters. */
import { MmuMode, ST } from "../kvm_host.js";
import { shadowCounters } from "../mmu/pte_write.js";
import { median, summarize } from "./stats.js";
import { harvestCalls, nsPerDirtyPage, totalCall } from "./dirty_log_perf_calls.js";
import { IterationResult, NsStats, nsStats, StrategyResult } from "./dirty_log_perf_result.js";
import type { LogModeName } from "./dirty_log_perf_options.js";
import { Run, sumStat } from "./dirty_log_perf_setup.js";
import { vmKvm } from "../vm/internal.js";

/**
 * The first pass with logging (the first iteration's dirty memory), and the statistics of the
 * fields only some runs have (process CPU of the dirty phase; --relog's enable times).
 */
function firstPassFields(
  iters: IterationResult[],
): Pick<
  StrategyResult,
  "firstPassNs" | "firstPassCpuNs" | "dirtyMemoryCpu" | "enableLogging" | "enableLoggingCpu"
> {
  const m = iters.filter((i) => !i.warmup);
  const some = (k: "dirtyMemoryCpuNs" | "enableLoggingNs" | "enableLoggingCpuNs"): NsStats | undefined => {
    const xs = m.map((i) => i[k]).filter((x): x is number => x !== undefined);
    return xs.length > 0 && xs.length === m.length ? nsStats(summarize(xs)) : undefined;
  };
  const out: ReturnType<typeof firstPassFields> = {};
  const first = iters[0];
  if (first) out.firstPassNs = first.dirtyMemoryNs;
  if (first?.dirtyMemoryCpuNs !== undefined) out.firstPassCpuNs = first.dirtyMemoryCpuNs;
  const dirtyMemoryCpu = some("dirtyMemoryCpuNs");
  if (dirtyMemoryCpu) out.dirtyMemoryCpu = dirtyMemoryCpu;
  const enableLogging = some("enableLoggingNs");
  if (enableLogging) out.enableLogging = enableLogging;
  const enableLoggingCpu = some("enableLoggingCpuNs");
  if (enableLoggingCpu) out.enableLoggingCpu = enableLoggingCpu;
  return out;
}

/** What every run (a model's VM or the kernel's) knows besides its iterations. */
export interface RunFields {
  logMode: LogModeName;
  /** Guest writes and active time over the measured iterations. */
  writes: number;
  activeMs: number;
  populateNs: number;
  enableLoggingNs: number;
  disableLoggingNs: number;
}

/** The part of a StrategyResult that comes from the iterations alone (models and kernel alike). */
export type IterationStats = Pick<
  StrategyResult,
  | "iterations"
  | "getDirtyLog"
  | "lockWait"
  | "vcpuLockWait"
  | "hostLockWait"
  | "protect"
  | "flush"
  | "dirtyMemory"
  | "nsPerDirtyPage"
  | "nsPerDirtyPageByCall"
  | "guestThroughput"
  | "guestWritesPerSec"
  | "populateNs"
  | "enableLoggingNs"
  | "disableLoggingNs"
  | "logMode"
  | "clearDirtyLog"
  | "ring"
  | "firstPassNs"
  | "firstPassCpuNs"
  | "dirtyMemoryCpu"
  | "enableLogging"
  | "enableLoggingCpu"
>;

/**
 * Statistics over the measured iterations (warm-ups are kept in `iterations`, left out of the
 * rest). The ring's ns per entry only where the iterations count their entries (the models').
 */
export function iterationStats(run: RunFields, iters: IterationResult[]): IterationStats {
  const m = iters.filter((i) => !i.warmup);
  const of = (f: (i: IterationResult) => number | undefined): NsStats =>
    nsStats(summarize(m.map((i) => f(i) ?? 0)));
  return {
    iterations: iters,
    getDirtyLog: of((i) => i.getDirtyLogNs),
    lockWait: of((i) => i.lockWaitNs),
    vcpuLockWait: of((i) => i.vcpuLockWaitNs),
    hostLockWait: of((i) => i.hostLockWaitNs),
    protect: of((i) => i.protectNs),
    flush: of((i) => i.flushNs),
    dirtyMemory: of((i) => i.dirtyMemoryNs),
    // The whole harvest (GET + CLEAR, harvest + reset, or GET), then each call apart.
    nsPerDirtyPage: nsPerDirtyPage(totalCall(run.logMode), m).median,
    nsPerDirtyPageByCall: Object.fromEntries(
      harvestCalls(run.logMode).map((c) => [c.name, nsPerDirtyPage(c, m).median]),
    ),
    guestThroughput: summarize(m.map((i) => i.guestThroughput)),
    guestWritesPerSec: run.writes / (run.activeMs / 1000),
    populateNs: run.populateNs,
    enableLoggingNs: run.enableLoggingNs,
    ...firstPassFields(iters),
    disableLoggingNs: run.disableLoggingNs,
    logMode: run.logMode,
    ...(run.logMode === "clear-log" ? { clearDirtyLog: of((i) => i.clearDirtyLogNs) } : {}),
    ...(run.logMode === "dirty-ring"
      ? {
          ring: {
            harvest: of((i) => i.ringHarvestNs),
            reset: of((i) => i.ringResetNs),
            fullExits: median(m.map((i) => i.ringFullExits ?? 0)),
            ...(m.some((i) => i.ringEntries !== undefined) ? { perEntryNs: ringPerEntry(m) } : {}),
          },
        }
      : {}),
  };
}

/** A design's statistics over its measured iterations, and its VM's counters. */
export function strategyResult(run: Run): StrategyResult {
  const vm = run.vm;
  const m = run.iters.filter((i) => !i.warmup);
  const pages = median(m.map((i) => i.dirtyPages));
  const t = vm.dirtyLogTimes();
  return {
    ...iterationStats(run, run.iters),
    mmapNs: run.mmapNs,
    cpu: {
      populateNs: run.populateCpuNs,
      enableLoggingNs: run.enableLoggingCpuNs,
      protectCallNs: median(m.map((i) => i.cpuNs)),
      nsPerDirtyPage: pages ? median(m.map((i) => i.cpuNs)) / pages : 0,
      preemptions: median(m.map((i) => i.preemptions)),
    },
    mmuLock: {
      vcpuWaitNs: sumStat(vm, ST.lock_wait_ns),
      vcpuHoldNs: sumStat(vm, ST.lock_hold_ns),
      vcpuAcquisitions: sumStat(vm, ST.lock_acq),
      ioctlWaitNs: t.lockWaitNs,
    },
    flushNs: t.flushNs,
    faultsPerDirtyPage: median(m.map((i) => (i.dirtyPages ? (i.faults ?? 0) / i.dirtyPages : 0))),
    pmlFlush: nsStats(summarize(m.map((i) => i.pmlFlushNs ?? 0))),
    faults: {
      fast: sumStat(vm, ST.fast_pf),
      slow: sumStat(vm, ST.slow_pf),
      retries: sumStat(vm, ST.retries),
      tlbMisses: sumStat(vm, ST.tlb_miss),
    },
    host: vm.hostThreadCounters(),
    numa: vm.numaBalancingStats(),
    metadataBytes: vm.metadataBytes(),
    ...(vmKvm(vm).mode === MmuMode.Shadow ? { shadow: shadowCounters(vmKvm(vm)) } : {}),
  };
}

/** Dirty ring: ns per entry of harvest, reset and both (medians over the iterations with entries). */
function ringPerEntry(m: IterationResult[]): { harvest: number; reset: number; total: number } {
  const it = m.filter((i) => (i.ringEntries ?? 0) > 0);
  const per = (ns: (i: IterationResult) => number): number =>
    it.length === 0 ? 0 : median(it.map((i) => ns(i) / (i.ringEntries ?? 1)));
  return {
    harvest: per((i) => i.ringHarvestNs ?? 0),
    reset: per((i) => i.ringResetNs ?? 0),
    total: per((i) => (i.ringHarvestNs ?? 0) + (i.ringResetNs ?? 0)),
  };
}

/**
 * dirty-log-perf's results: per iteration, per design (statistics over the measured iterations),
 * and each design against the baseline, paired by iteration.
 */
import { einval } from "../errors.js";
import type { DesignName } from "../mmu/design.js";
import type { Envelope } from "./result.js";
import { pairedRatio, RatioSummary, Summary, verdict } from "./stats.js";
import type { LogModeName, PerfOptions } from "./dirty_log_perf_options.js";
import { harvestCalls, LogMode } from "./dirty_log_perf_calls.js";

export interface IterationResult {
  /** A warm-up iteration: kept here, left out of every statistic. */
  warmup: boolean;
  dirtyMemoryNs: number;
  /**
   * Process CPU time (all threads) while the vCPUs dirtied memory: with --park and no host
   * thread, the vCPUs' own time, which other processes' load inflates less than the wall time.
   * Absent in the kernel's runs and in results saved before it existed.
   */
  dirtyMemoryCpuNs?: number;
  /**
   * --relog: enabling logging before this iteration (wall, and process CPU with the vCPUs
   * paused); dirtyMemoryNs is then the first pass with logging.
   */
  enableLoggingNs?: number;
  enableLoggingCpuNs?: number;
  getDirtyLogNs: number;
  /**
   * The parts of the call that protects (GET; under manual protect the CLEAR calls; with a ring
   * the reset): waiting for mmu_lock, harvesting and protecting, the remote flush.
   */
  lockWaitNs: number;
  protectNs: number;
  flushNs: number;
  /** Bringing the vCPUs' PML buffers into the log before it is read (0 without PML). */
  pmlFlushNs?: number;
  dirtyPages: number;
  /** Guest writes per second from resume to pause of this iteration. */
  guestThroughput: number;
  /** Manual protect: time of the KVM_CLEAR_DIRTY_LOG calls after the GET (getDirtyLogNs). */
  clearDirtyLogNs?: number;
  /**
   * Process CPU time (user + system) and involuntary context switches during the GET (and the
   * CLEAR): with the vCPUs parked and no host thread, the harvester's own CPU time, which other
   * processes' load does not inflate as it does the wall-clock time.
   */
  cpuNs: number;
  preemptions: number;
  /**
   * Dirty ring: harvest and reset time (their sum is getDirtyLogNs), including the collections
   * made while the vCPUs ran because a ring was soft-full, and the ring-full exits.
   */
  ringHarvestNs?: number;
  ringResetNs?: number;
  ringFullExits?: number;
  /** Dirty ring: the entries reset (harvested) in the iteration. */
  ringEntries?: number;
  /**
   * Who waited for mmu_lock during the whole iteration (not only the GET): the vCPUs (their
   * faults) and the host thread (its notifier calls); with lockWaitNs, the harvester's share.
   */
  vcpuLockWaitNs: number;
  hostLockWaitNs: number;
  /** Involuntary context switches of the process (all its threads) over the iteration. */
  switches: number;
  /** Guest writes in the iteration. */
  writes: number;
  /** Page faults (fast and slow) the vCPUs took during the iteration. */
  faults?: number;
  /**
   * Timed iterations: get-dirty-log calls in the window; getDirtyLogNs, its parts, dirtyPages,
   * clearDirtyLogNs, cpuNs and preemptions are then means per call, and dirtyMemoryNs the window.
   */
  harvests?: number;
}

/** A Summary in ns, under the names of the JSON schema. */
export interface NsStats {
  medianNs: number;
  meanNs: number;
  stdevNs: number;
  minNs: number;
  maxNs: number;
  ci95Ns: [number, number];
  n: number;
}

export function nsStats(s: Summary): NsStats {
  return {
    medianNs: s.median,
    meanNs: s.mean,
    stdevNs: s.stdev,
    minNs: s.min,
    maxNs: s.max,
    ci95Ns: s.ci95,
    n: s.n,
  };
}

export interface StrategyResult {
  /** Every iteration, warm-ups first-marked; statistics use the others only. */
  iterations: IterationResult[];
  getDirtyLog: NsStats;
  /** Decomposition of the get-dirty-log calls. */
  lockWait: NsStats;
  /** mmu_lock wait per iteration of the vCPUs and of the host thread (IterationResult). */
  vcpuLockWait: NsStats;
  hostLockWait: NsStats;
  protect: NsStats;
  flush: NsStats;
  dirtyMemory: NsStats;
  /**
   * ns per dirty page of the whole harvest (GET + CLEAR, harvest + reset, or GET alone), as
   * nsPerDirtyPage() of dirty_log_perf_calls.ts defines it: the median over measured iterations.
   */
  nsPerDirtyPage: number;
  /** The same per call, keyed by its KVM name ("get dirty log", "clear dirty log", ...). */
  nsPerDirtyPageByCall: Record<string, number>;
  /** Guest writes per second, per iteration. */
  guestThroughput: Summary;
  /** Guest writes per second over all measured iterations' active time. */
  guestWritesPerSec: number;
  populateNs: number;
  enableLoggingNs: number;
  /**
   * The first pass with logging on: the first iteration's dirty memory time (a warm-up's when
   * there is one), and its process CPU time. Absent in results saved before it existed.
   */
  firstPassNs?: number;
  firstPassCpuNs?: number;
  /** Process CPU while the vCPUs dirtied memory (IterationResult.dirtyMemoryCpuNs), measured iterations. */
  dirtyMemoryCpu?: NsStats;
  /** --relog: enabling logging before each measured iteration, wall and process CPU. */
  enableLogging?: NsStats;
  enableLoggingCpu?: NsStats;
  /** Clearing KVM_MEM_LOG_DIRTY_PAGES after the last iteration, vCPUs paused (KVM's "Disabling dirty logging time"). */
  disableLoggingNs: number;
  /** host_mmap of the guest memory: zeroing it is the first touch of fresh shared memory. */
  /** Model runs only (this and the counters below, but shadow): the kernel has none of them. */
  mmapNs?: number;
  /**
   * Process CPU time: populate (vCPUs included), enable logging, and per iteration the call that
   * protects (median; GET, plus CLEAR under manual protect), per dirty page; involuntary context
   * switches during that call (median). See IterationResult.cpuNs.
   */
  cpu?: {
    populateNs: number;
    enableLoggingNs: number;
    protectCallNs: number;
    nsPerDirtyPage: number;
    preemptions: number;
  };
  mmuLock?: { vcpuWaitNs: number; vcpuHoldNs: number; vcpuAcquisitions: number; ioctlWaitNs: number };
  flushNs?: number;
  faults?: { fast: number; slow: number; retries: number; tlbMisses: number };
  /**
   * Page faults (fast and slow) of the vCPUs per dirty page reported, median over the measured
   * iterations: write protection takes one per page per pass, PML none. (Absent in results
   * saved before it existed.)
   */
  faultsPerDirtyPage?: number;
  /** The PML kick of each protecting call (IterationResult.pmlFlushNs); absent in older results. */
  pmlFlush?: NsStats;
  host?: { migrations: number; invalidations: number };
  /** NUMA balancing (PerfOptions.numaScanPeriodMs) over the whole run, warm-up included. */
  numa?: { scans: number; pagesScanned: number };
  metadataBytes?: number;
  /** Shadow mode: the shadow MMU's counters (shadowCounters, src/mmu/pte_write.ts). */
  shadow?: Record<string, number>;
  /** Which log interface: "dirty-log" (classic GET), "clear-log" (GET + CLEAR), "dirty-ring". */
  logMode: LogModeName;
  /** Manual protect: the CLEAR calls of each iteration. */
  clearDirtyLog?: NsStats;
  /** Dirty ring: harvest and reset of each iteration, and ring-full exits (median per iteration). */
  ring?: {
    harvest: NsStats;
    reset: NsStats;
    fullExits: number;
    /** ns per ring entry (median over the iterations of the call's time / its entries). */
    perEntryNs?: { harvest: number; reset: number; total: number };
  };
  /** The real kernel's run (dirty_log_perf_kernel.ts): its KVM flavour and KVM_GET_STATS_FD counters. */
  kernel?: { flavour: string; ringFullExits: number; stats: Record<string, number> };
}

export interface RatioResult extends RatioSummary {
  verdict: string;
}

export interface PerfResult extends Envelope {
  options: Omit<PerfOptions, "progress">;
  /**
   * The CPUs the threads ran on when pinned (PerfOptions.pin): vCPU i on vcpus[i], the
   * harvester on `harvester` (null: left unpinned) with the process's `others` threads (V8's
   * helpers, a host thread); null when unpinned, `error` when "auto" failed.
   */
  pinned: { vcpus: number[]; harvester: number | null; others?: number } | { error: string } | null;
  /** Per design run, by its registered name. */
  results: Partial<Record<DesignName, StrategyResult>>;
  /** The design every other one is compared with (PerfOptions.baseline). */
  baseline: DesignName;
  /** Each other design against the baseline, keyed "<design>/<baseline>", paired by iteration. */
  ratios: Record<string, DesignRatio>;
  /**
   * lockless/locked, as before `ratios` (kept for saved results and scripts); null unless both
   * designs ran.
   */
  ratio: DesignRatio | null;
  guestMemoryBytes: number;
  metadataPercent: number;
  peakRssBytes: number;
}

/** One design against another, paired by iteration (median of the ratio, 95% CI, n, verdict). */
export interface DesignRatio {
  /** The iterations' getDirtyLogNs: GET (with a ring, harvest + reset). */
  getDirtyLog: RatioResult;
  guestThroughput: RatioResult;
  /** Manual protect only: the CLEAR calls (where the protection happens then). */
  clearDirtyLog?: RatioResult;
  /** Every call of the harvest and its total, by KVM's name (dirty_log_perf_calls.ts), version 3. */
  calls?: Record<string, RatioResult>;
  /** The iterations' dirty memory time, wall and process CPU (with --relog: the first pass). */
  dirtyMemory?: RatioResult;
  dirtyMemoryCpu?: RatioResult;
  /** --relog: enabling logging before each iteration, wall and process CPU. */
  enableLogging?: RatioResult;
  enableLoggingCpu?: RatioResult;
}

function withVerdict(r: RatioSummary, below: string, above: string): RatioResult {
  return { ...r, verdict: verdict(r, below, above) };
}

/** What the ratios read of a design's result: its iterations. */
export type IterationsOf = Pick<StrategyResult, "iterations">;

type Measured =
  | "getDirtyLogNs"
  | "guestThroughput"
  | "clearDirtyLogNs"
  | "dirtyMemoryNs"
  | "dirtyMemoryCpuNs"
  | "enableLoggingNs"
  | "enableLoggingCpuNs";

function measured(r: IterationsOf, k: Measured): number[] {
  return r.iterations.filter((i) => !i.warmup).map((i) => i[k] ?? 0);
}

/** True when every measured iteration of both has field k. */
function bothHave(ra: IterationsOf, rb: IterationsOf, k: Measured): boolean {
  const m = (r: IterationsOf) => r.iterations.filter((i) => !i.warmup);
  return [...m(ra), ...m(rb)].every((i) => i[k] !== undefined) && m(ra).length > 0 && m(rb).length > 0;
}

/** true: manual protect (clear-log), false: classic GET (dirty-log); or the log mode itself. */
export type RatioMode = boolean | LogMode;

function modeOf(m: RatioMode): LogMode {
  return m === true ? "clear-log" : m === false ? "dirty-log" : m;
}

/** `a` against `b` (median(a)/median(b) of each figure), paired by iteration. */
export function designRatio(a: DesignName, ra: IterationsOf, rb: IterationsOf, mode: RatioMode): DesignRatio {
  const pair = (k: Measured): RatioSummary => pairedRatio(measured(ra, k), measured(rb, k));
  const time = (k: Measured): RatioResult | undefined =>
    bothHave(ra, rb, k) ? withVerdict(pair(k), `${a} faster`, `${a} slower`) : undefined;
  const times = {
    dirtyMemory: time("dirtyMemoryNs"),
    dirtyMemoryCpu: time("dirtyMemoryCpuNs"),
    enableLogging: time("enableLoggingNs"),
    enableLoggingCpu: time("enableLoggingCpuNs"),
  };
  const lm = modeOf(mode);
  const calls: Record<string, RatioResult> = {};
  for (const c of harvestCalls(lm)) {
    const of = (r: IterationsOf): number[] => r.iterations.filter((i) => !i.warmup).map((i) => c.ns(i));
    calls[c.name] = withVerdict(pairedRatio(of(ra), of(rb)), `${a} faster`, `${a} slower`);
  }
  return {
    getDirtyLog: withVerdict(pair("getDirtyLogNs"), `${a} faster`, `${a} slower`),
    guestThroughput: withVerdict(
      pair("guestThroughput"),
      `guest slower under ${a}`,
      `guest faster under ${a}`,
    ),
    ...(lm === "clear-log"
      ? { clearDirtyLog: withVerdict(pair("clearDirtyLogNs"), `${a} faster`, `${a} slower`) }
      : {}),
    calls,
    ...Object.fromEntries(Object.entries(times).filter(([, v]) => v !== undefined)),
  };
}

/**
 * Every design of `results` but the baseline against the baseline: N designs, N - 1 ratios,
 * keyed "<design>/<baseline>" in the order of `results`. KvmError(EINVAL) naming `baseline` when
 * it is not among them.
 */
export function designRatios(
  results: Partial<Record<DesignName, IterationsOf>>,
  baseline: DesignName,
  clearLog: RatioMode,
): Record<string, DesignRatio> {
  const b = results[baseline];
  if (!b)
    throw einval(
      "baseline",
      `"${baseline}" is not one of the designs run (${Object.keys(results).join(", ")})`,
    );
  const out: Record<string, DesignRatio> = {};
  for (const [d, r] of Object.entries(results))
    if (d !== baseline && r) out[`${d}/${baseline}`] = designRatio(d, r, b, clearLog);
  return out;
}

/** lockless/locked as `ratio` always gave it, whatever the baseline; null unless both ran. */
export function legacyRatio(
  results: Partial<Record<DesignName, IterationsOf>>,
  clearLog: RatioMode,
): DesignRatio | null {
  const L = results["locked"];
  const F = results["lockless"];
  return L && F ? designRatio("lockless", F, L, clearLog) : null;
}

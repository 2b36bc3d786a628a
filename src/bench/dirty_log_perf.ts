/**
 * dirty-log-perf: KVM's dirty_log_perf_test, extended to compare write-protect designs (any of
 * the registered ones, src/mmu/design.ts) on the same engine in one run.
 *
 * Every design's VM is built alike and they run alternately (one runs, the others are paused),
 * iteration by iteration, with the order reversed every other iteration so drift hits all. One
 * iteration of one VM (dirty_log_perf_iterate.ts): resume; wait until every vCPU finished a full
 * pass ("dirty memory time"); call getDirtyLog while the vCPUs keep writing (or with them parked,
 * --park); pause. Each design but the baseline is then compared with the baseline, paired by
 * iteration (dirty_log_perf_result.ts).
 *
 * Contention (point 8 of the engine issue): a host thread migrates guest pages and invalidates
 * 2 MiB ranges through the MMU notifier; each invalidation zaps mappings the vCPUs then fault
 * back in through the slow path, under mmu_lock.
 */
import { envelope, finished } from "./result.js";
import {
  checkMachineMemory,
  logModeOf,
  PerfOptions,
  PerfOptionsInput,
  resolvePerfOptions,
} from "./dirty_log_perf_options.js";
import { iterate, iterateWindow } from "./dirty_log_perf_iterate.js";
import { Pinning, pinThreads } from "./dirty_log_perf_pin.js";
import { designRatios, legacyRatio, PerfResult } from "./dirty_log_perf_result.js";
import { strategyResult } from "./dirty_log_perf_stats.js";
import { disableLogging, Run, setup, sleep } from "./dirty_log_perf_setup.js";
import {
  checkKernelOptions,
  iterateKernel,
  KernelRun,
  kernelStrategyResult,
  setupKernel,
} from "./dirty_log_perf_kernel.js";
import { KERNEL_DESIGN } from "../kernel/register.js";

export {
  checkMachineMemory,
  CONTENTION,
  contentionLevel,
  fitVcpus,
  hasHostThread,
  hostMemoryFor,
  logModeOf,
  PERF_DEFAULTS,
  perfPreset,
  PRESETS,
  resolvePerfOptions,
  threadFit,
  validatePerfOptions,
} from "./dirty_log_perf_options.js";
export type {
  Contention,
  LogModeName,
  PerfOptions,
  PerfOptionsInput,
  ThreadFit,
} from "./dirty_log_perf_options.js";
export { autoPin } from "./dirty_log_perf_pin.js";
export { designRatio, designRatios, legacyRatio, nsStats } from "./dirty_log_perf_result.js";
export type {
  DesignRatio,
  IterationResult,
  IterationsOf,
  NsStats,
  PerfResult,
  RatioResult,
  StrategyResult,
} from "./dirty_log_perf_result.js";

/** A model design's VM, or the real kernel's (dirty_log_perf_kernel.ts). */
type AnyRun = Run | KernelRun;
const isKernel = (r: AnyRun): r is KernelRun => "kind" in r && r.kind === "kernel";

/** The warm-up and measured iterations of every run, alternated; stops early once aborted. */
async function alternate(runs: AnyRun[], o: PerfOptions, say: (m: string) => void): Promise<void> {
  const warmup = o.warmup ?? 1;
  for (let it = 0; it < warmup + o.iterations && !o.signal?.aborted; it++) {
    const order = it % 2 === 0 ? runs : [...runs].reverse();
    const w = it < warmup;
    for (const run of order) {
      const r = isKernel(run)
        ? await iterateKernel(run, w)
        : (o.windowMs ?? 0) > 0
          ? await iterateWindow(run, o, w)
          : await iterate(run, o, w);
      run.iters.push(r);
      say(
        `${run.wp} ${w ? `warm-up ${it + 1}` : `iteration ${it + 1 - warmup}`}: dirty memory ${(r.dirtyMemoryNs / 1e6).toFixed(1)} ms, get dirty log ${(r.getDirtyLogNs / 1e6).toFixed(2)} ms (mmu_lock wait ${(r.lockWaitNs / 1e6).toFixed(2)}, flush ${(r.flushNs / 1e6).toFixed(2)}), ${r.dirtyPages} dirty pages`,
      );
    }
  }
}

/**
 * Runs the designs of `input.wp` (default: all registered), alternated, and compares each with
 * the baseline. `input` is any subset of PerfOptions, a preset's name included
 * (resolvePerfOptions); KvmError(EINVAL) naming the option for a bad one.
 */
export async function dirtyLogPerf(input: PerfOptionsInput): Promise<PerfResult> {
  const o = resolvePerfOptions(input);
  checkMachineMemory(o);
  checkKernelOptions(o);
  const say = o.progress ?? (() => {});
  const runs: AnyRun[] = [];
  let pinning: Pinning | null = null;
  const { progress: _p, signal: _s, onVm: _v, ...options } = o;
  void _v;
  void _p;
  void _s;
  // Before pinning: the machine's CPU count as this thread sees it is its affinity mask's.
  const env = envelope("dirty-log-perf", options);
  try {
    for (const wp of o.wp) {
      say(`${wp}: populating ${o.vcpus} x ${o.bytesPerVcpu >> 20} MiB`);
      runs.push(wp === KERNEL_DESIGN ? await setupKernel(o) : await setup(wp, o));
    }
    const models = runs.filter((r): r is Run => !isKernel(r));
    pinning = pinThreads(models, o, say);
    await alternate(runs, o, say);
    await sleep(0);
    if (!o.signal?.aborted)
      for (const run of runs)
        if (isKernel(run)) run.disableLoggingNs = run.session.disableLogging();
        else disableLogging(run, o);
    const results: PerfResult["results"] = {};
    for (const run of runs) results[run.wp] = isKernel(run) ? kernelStrategyResult(run) : strategyResult(run);
    const baseline = o.baseline ?? o.wp[0];
    const mode = logModeOf(o);
    const guestMemoryBytes = o.vcpus * o.bytesPerVcpu;
    // The models' MMU metadata (the kernel's is not seen from here): 0 when only the kernel ran.
    const meta = models[0]?.vm.metadataBytes() ?? 0;
    return finished({
      ...env,
      options,
      pinned: pinning.pinned,
      results,
      baseline,
      ratios: designRatios(results, baseline, mode),
      ratio: legacyRatio(results, mode),
      guestMemoryBytes,
      metadataPercent: (100 * meta) / guestMemoryBytes,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
    });
  } finally {
    pinning?.undo();
    for (const run of runs)
      if (isKernel(run)) await run.session.close();
      else await run.vm.stop();
  }
}

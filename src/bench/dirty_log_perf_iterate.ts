/**
 * One iteration of one design's VM, as dirty_log_perf_test's: resume; wait until every vCPU
 * finished a full pass (or, timed, a fixed window with a get-dirty-log every interval); call
 * get-dirty-log while the vCPUs keep writing (or parked, --park); pause.
 */
import { bitmap_weight } from "../mem/dirty_bitmap.js";
import type { Vm } from "../vm.js";
import { ST } from "../kvm_host.js";
import type { DirtyLogTimes } from "../mmu/write_protect.js";
import { kvm_dirty_ring_soft_full } from "../mem/dirty_ring.js";
import { harvestDirtyRingsInto } from "../dirty_bitmap.js";
import { LogModeName, logModeOf, PerfOptions } from "./dirty_log_perf_options.js";
import type { IterationResult } from "./dirty_log_perf_result.js";
import {
  cpuMark,
  cpuSince,
  disableLogging,
  enableLogging,
  passes,
  Run,
  sleep,
  SLOT,
  sumStat,
} from "./dirty_log_perf_setup.js";
import { vmKvm } from "../vm/internal.js";

/**
 * mmu_lock wait and flush of the call that write-protects, from two readings (before, after) of
 * the VM's cumulative GET and CLEAR times: CLEAR under manual protect, the last reset with a
 * ring, else GET.
 */
function protectingCallParts(
  vm: Vm,
  mode: LogModeName,
  d0: DirtyLogTimes,
  d1: DirtyLogTimes,
  c0: DirtyLogTimes,
  c1: DirtyLogTimes,
): { lockWaitNs: number; flushNs: number } {
  if (mode === "clear-log")
    return { lockWaitNs: c1.lockWaitNs - c0.lockWaitNs, flushNs: c1.flushNs - c0.flushNs };
  if (mode === "dirty-ring") {
    const t = vm.lastResetDirtyRingsTimes();
    return { lockWaitNs: t.lockWaitNs, flushNs: t.flushNs };
  }
  return { lockWaitNs: d1.lockWaitNs - d0.lockWaitNs, flushNs: d1.flushNs - d0.flushNs };
}

/** One harvest (GET, and CLEAR under manual protect; with a ring, collect and reset), timed. */
interface Harvest {
  getDirtyLogNs: number;
  clearDirtyLogNs?: number;
  lockWaitNs: number;
  protectNs: number;
  flushNs: number;
  pmlFlushNs: number;
  cpuNs: number;
  preemptions: number;
}

/** The harvest into run.bitmap (or-ed in), with its parts; see IterationResult. */
function harvest(run: Run, o: PerfOptions, mode: LogModeName): Harvest {
  const vm = run.vm;
  const d0 = vm.dirtyLogTimes();
  const c0 = vm.clearDirtyLogTimes();
  const cpu0 = cpuMark();
  const tg = performance.now();
  let clearDirtyLogNs: number | undefined;
  let getDirtyLogNs: number;
  if (mode === "dirty-ring") {
    collectRing(run);
    getDirtyLogNs = run.ringHarvestNs + run.ringResetNs;
  } else {
    vm.getDirtyLog(SLOT, run.bitmap);
    getDirtyLogNs = (performance.now() - tg) * 1e6;
    if (mode === "clear-log") clearDirtyLogNs = clearAll(run, o.clearChunkPages ?? 0);
  }
  const cpu = cpuSince(cpu0);
  const d1 = vm.dirtyLogTimes();
  const c1 = vm.clearDirtyLogTimes();
  const { lockWaitNs, flushNs } = protectingCallParts(vm, mode, d0, d1, c0, c1);
  // The parts are of the call that write-protects (dirty_log_perf_calls.ts): CLEAR, the ring
  // reset, or GET.
  const protected_ =
    mode === "clear-log" ? (clearDirtyLogNs ?? 0) : mode === "dirty-ring" ? run.ringResetNs : getDirtyLogNs;
  // The PML kick of the protecting call (GET, or the CLEARs); the ring's harvest is not timed.
  const pmlFlushNs =
    mode === "clear-log"
      ? c1.pmlFlushNs - c0.pmlFlushNs
      : mode === "dirty-ring"
        ? 0
        : d1.pmlFlushNs - d0.pmlFlushNs;
  return {
    getDirtyLogNs,
    ...(clearDirtyLogNs !== undefined ? { clearDirtyLogNs } : {}),
    lockWaitNs,
    protectNs: Math.max(0, protected_ - lockWaitNs - flushNs - pmlFlushNs),
    flushNs,
    pmlFlushNs,
    cpuNs: cpu.cpuNs,
    preemptions: cpu.preemptions,
  };
}

/** Dirty ring: a vCPU whose ring is soft-full waits for a reset, so collect while it runs. */
function ringService(run: Run): () => void {
  const vm = run.vm;
  return () => {
    // A new exit, or a vCPU still waiting on a ring that filled after the last collection.
    const exits = vm.dirtyRingStats().fullExits;
    if (exits !== run.ringExits || vm.vcpuIds.some((id) => kvm_dirty_ring_soft_full(vmKvm(vm), id))) {
      run.ringExits = exits;
      collectRing(run);
    }
  };
}

/**
 * --relog: logging off, one full pass of every vCPU (the faults map huge pages again), paused,
 * then logging on again, timed (wall and process CPU, the vCPUs paused).
 */
async function relog(
  run: Run,
  o: PerfOptions,
): Promise<{ enableLoggingNs: number; enableLoggingCpuNs: number }> {
  const vm = run.vm;
  disableLogging(run, o);
  vm.resume();
  const p0 = passes(vm);
  await vm.waitPasses(
    p0.map((p) => p + 2),
    { timeoutMs: Infinity },
  );
  await vm.pause();
  const { ns, cpuNs } = enableLogging(run, o);
  return { enableLoggingNs: ns, enableLoggingCpuNs: cpuNs };
}

/** The classic iteration: two full passes, then one harvest (vCPUs writing, or parked). */
export async function iterate(run: Run, o: PerfOptions, warmup: boolean): Promise<IterationResult> {
  const vm = run.vm;
  const mode = logModeOf(o);
  const enabled = o.relog === true ? await relog(run, o) : {};
  const w0 = sumStat(vm, ST.writes);
  const f0 = sumStat(vm, ST.fast_pf) + sumStat(vm, ST.slow_pf);
  run.bitmap.fill(0);
  run.ringHarvestNs = run.ringResetNs = run.ringEntries = 0;
  const exits0 = vm.dirtyRingStats().fullExits;
  run.ringExits = exits0;
  const who0 = whoWaited(vm);
  const service = mode === "dirty-ring" ? ringService(run) : undefined;
  const cpuDirty = cpuMark();
  const t0 = performance.now();
  vm.resume();
  vm.resumeHostThread();
  const p0 = passes(vm);
  // A full pass that started after resume: the in-flight pass ends, then one more.
  await vm.waitPasses(
    p0.map((p) => p + 2),
    { timeoutMs: Infinity, service },
  );
  const dirtyMemoryNs = (performance.now() - t0) * 1e6;
  const dirtyMemoryCpuNs = cpuSince(cpuDirty).cpuNs;
  if (o.park) {
    await vm.pause();
    await vm.pauseHostThread();
  }
  const h = harvest(run, o, mode);
  if (!o.park) {
    await vm.pause();
    await vm.pauseHostThread();
  }
  const activeMs = performance.now() - t0;
  // Paused: every vCPU has published its counters.
  const writes = sumStat(vm, ST.writes) - w0;
  const faults = sumStat(vm, ST.fast_pf) + sumStat(vm, ST.slow_pf) - f0;
  if (!warmup) {
    run.activeMs += activeMs;
    run.writes += writes;
  }
  const ringFields =
    mode === "dirty-ring"
      ? {
          ringHarvestNs: run.ringHarvestNs,
          ringResetNs: run.ringResetNs,
          ringEntries: run.ringEntries,
          ringFullExits: vm.dirtyRingStats().fullExits - exits0,
        }
      : {};
  return {
    warmup,
    dirtyMemoryNs,
    dirtyMemoryCpuNs,
    ...enabled,
    ...h,
    dirtyPages: bitmap_weight(run.bitmap),
    guestThroughput: writes / (activeMs / 1000),
    ...ringFields,
    ...whoWaitedSince(vm, who0),
    writes,
    faults,
  };
}

interface Who {
  vcpuNs: number;
  hostNs: number;
  switches: number;
}

/** mmu_lock wait of the vCPUs (as published at their last pause) and the host thread; switches. */
function whoWaited(vm: Vm): Who {
  return {
    vcpuNs: sumStat(vm, ST.lock_wait_ns),
    hostNs: vm.hostThreadLockTimes().lockWaitNs,
    switches: process.resourceUsage().involuntaryContextSwitches,
  };
}

/** Call with the vCPUs and the host thread paused (their counters are published then). */
function whoWaitedSince(
  vm: Vm,
  w0: Who,
): { vcpuLockWaitNs: number; hostLockWaitNs: number; switches: number } {
  const w = whoWaited(vm);
  return {
    vcpuLockWaitNs: w.vcpuNs - w0.vcpuNs,
    hostLockWaitNs: w.hostNs - w0.hostNs,
    switches: w.switches - w0.switches,
  };
}

/**
 * The harvest times of a timed iteration: `due(k)` is when harvest k (from 1) is due, ms on the
 * clock `now`; harvests run while due(k) <= end. A call that overran later slots skips them
 * rather than harvesting back to back. Exported with its clock so that a test can drive it.
 */
export async function harvestSlots(
  t0: number,
  windowMs: number,
  interval: number,
  each: () => void,
  now: () => number = () => performance.now(),
  wait: (ms: number) => Promise<void> = sleep,
): Promise<number> {
  const end = t0 + windowMs;
  let harvests = 0;
  for (let k = 1; ;) {
    const due = t0 + k * interval;
    if (due > end + 1e-6) break;
    const w = due - now();
    if (w > 0) await wait(w);
    each();
    harvests++;
    k = Math.max(k + 1, Math.floor((now() - t0) / interval) + 1);
  }
  const w = end - now();
  if (w > 0) await wait(w);
  return harvests;
}

/**
 * A timed iteration (PerfOptions.windowMs): resume; every harvestIntervalMs a get-dirty-log
 * (GET, and CLEAR under manual protect) while the vCPUs write; pause at the window's end. A
 * stall (a convoy on mmu_lock, docs/design.md §14) lowers the window's throughput instead of
 * stretching the iteration, so every iteration of every design lasts about the same time.
 */
export async function iterateWindow(run: Run, o: PerfOptions, warmup: boolean): Promise<IterationResult> {
  const vm = run.vm;
  const mode = logModeOf(o);
  const windowMs = o.windowMs ?? 0;
  const w0 = sumStat(vm, ST.writes);
  const who0 = whoWaited(vm);
  const sum = { get: 0, clear: 0, wait: 0, flush: 0, prot: 0, pages: 0, cpu: 0, pre: 0 };
  const t0 = performance.now();
  vm.resume();
  vm.resumeHostThread();
  const harvests = await harvestSlots(t0, windowMs, o.harvestIntervalMs ?? windowMs, () => {
    vm.throwIfFailed();
    run.bitmap.fill(0);
    const h = harvest(run, o, mode);
    sum.get += h.getDirtyLogNs;
    sum.clear += h.clearDirtyLogNs ?? 0;
    sum.wait += h.lockWaitNs;
    sum.flush += h.flushNs;
    sum.prot += h.protectNs;
    sum.pages += bitmap_weight(run.bitmap);
    sum.cpu += h.cpuNs;
    sum.pre += h.preemptions;
  });
  await vm.pause();
  await vm.pauseHostThread();
  const activeMs = performance.now() - t0;
  const writes = sumStat(vm, ST.writes) - w0;
  if (!warmup) {
    run.activeMs += activeMs;
    run.writes += writes;
  }
  const n = Math.max(1, harvests);
  return {
    warmup,
    dirtyMemoryNs: activeMs * 1e6,
    getDirtyLogNs: sum.get / n,
    lockWaitNs: sum.wait / n,
    protectNs: sum.prot / n,
    flushNs: sum.flush / n,
    dirtyPages: Math.round(sum.pages / n),
    guestThroughput: writes / (activeMs / 1000),
    ...(mode === "clear-log" ? { clearDirtyLogNs: sum.clear / n } : {}),
    cpuNs: sum.cpu / n,
    preemptions: sum.pre / n,
    ...whoWaitedSince(vm, who0),
    writes,
    harvests,
  };
}

/** Manual protect: KVM_CLEAR_DIRTY_LOG of what GET reported, in chunks of `chunk` pages (0: one). */
function clearAll(run: Run, chunk: number): number {
  const npages = run.bitmap.length * 32;
  const step = chunk === 0 ? npages : chunk;
  const t = performance.now();
  for (let first = 0; first < npages; first += step) {
    const n = Math.min(step, npages - first);
    run.vm.clearDirtyLog(SLOT, first, n, run.bitmap.subarray(first >>> 5, (first + n + 31) >>> 5));
  }
  return (performance.now() - t) * 1e6;
}

/**
 * Dirty ring: harvest every vCPU's ring into the bitmap (through run.ringGfns, typed arrays: no
 * object per entry), then reset (KVM_RESET_DIRTY_RINGS).
 */
function collectRing(run: Run): void {
  const vm = run.vm;
  const t = performance.now();
  harvestDirtyRingsInto(vm, SLOT, run.bitmap, run.ringGfns);
  const t1 = performance.now();
  run.ringEntries += vm.resetDirtyRings();
  run.ringHarvestNs += (t1 - t) * 1e6;
  run.ringResetNs += (performance.now() - t1) * 1e6;
}

/**
 * dirty-log-perf: KVM's dirty_log_perf_test, extended to compare the locked (3.11) and the
 * lockless (the seed) write-protect on the same engine in one run.
 *
 * Both VMs are built alike and run alternately (one runs, the other is paused), iteration by
 * iteration, with the starting order swapped every iteration so drift hits both. One iteration
 * of one VM: resume; wait until every vCPU finished a full pass ("dirty memory time"); call
 * getDirtyLog while the vCPUs keep writing (or with them parked, --park); pause.
 *
 * Contention (point 8 of the engine issue): a host thread migrates guest pages and invalidates
 * 2 MiB ranges through the MMU notifier; each invalidation zaps mappings the vCPUs then fault
 * back in through the slow path, under mmu_lock.
 */
import os from "node:os";
import { bitmap_weight } from "../mem/dirty_bitmap.js";
import { MAX_MEMORY, MmuModeName, Vm, WpName } from "../vm.js";
import {
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
  MmuMode,
  PAGE_SIZE,
  ST,
  VCPU,
} from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { tablesFor } from "../workload/guest_paging.js";
import { shadowCounters } from "../mmu/pte_write.js";
import type { LockMode } from "../sync/mutex.js";
import type { DirtyLogTimes } from "../mmu/write_protect.js";
import { Envelope, envelope } from "./result.js";
import { median, pairedRatio, RatioSummary, summarize, Summary, verdict } from "./stats.js";
import { kvm_dirty_ring_soft_full } from "../mem/dirty_ring.js";
import { harvestDirtyRingsInto } from "../dirty_bitmap.js";
import { numa_balancing_settings } from "../mem/numa_balancing.js";
import { gettid, processThreads, sched_getaffinity, sched_setaffinity } from "../sync/affinity.js";
import { vmKvm } from "../vm/internal.js";

export interface Contention {
  migrateRate: number;
  invalidateRate: number;
  /** Pages per invalidation (default 512: a 2 MiB range). */
  invalidatePages?: number;
}

export const CONTENTION: Record<string, Contention> = {
  none: { migrateRate: 0, invalidateRate: 0 },
  default: { migrateRate: 200, invalidateRate: 100 },
  heavy: { migrateRate: 1000, invalidateRate: 400 },
};

/**
 * Option sets for `--preset`; an option given on the command line wins. "seed": the conditions
 * under which the seed's harvester had to wait for mmu_lock (docs/design.md §14).
 */
export const PRESETS: Record<string, Partial<PerfOptions>> = {
  seed: {
    bytesPerVcpu: 256 << 20,
    // Timed windows, a multiple of the scan period so that every window holds as many scans;
    // 100 pairs, order swapped every pair, take about 45 s.
    iterations: 100,
    warmup: 2,
    windowMs: 200,
    // A migration near convergence: the dirty set is small and QEMU syncs the log again and
    // again; a get-dirty-log every 2 ms.
    harvestIntervalMs: 2,
    // NUMA balancing at the defaults of the seed's kernels (3.8-3.12): 256 MiB unmapped every
    // 100 ms by the vCPU thread itself, each chunk one mmu_lock hold; the guest refaults it.
    numaScanPeriodMs: 100,
    numaScanBytes: 256 << 20,
    contention: { migrateRate: 0, invalidateRate: 0 },
    // 4 KiB mappings, as under dirty logging: one spte per page to zap and to refault.
    thp: false,
    lock: "spin",
    // The seed's interface: GET clears and protects (no manual protect, 2013).
    manualProtect: false,
    // A CPU for each thread, as KVM's test pins with -c: unpinned, the guest of either design
    // ran at about half speed for seconds at a time (docs/design.md §14).
    pin: "auto",
  },
};

/** True when the configuration runs the host (MMU-notifier) thread. */
export function hasHostThread(c: Contention): boolean {
  return c.migrateRate > 0 || c.invalidateRate > 0;
}

/**
 * The threads a run needs against the machine's cores: the vCPUs, the harvester (the main
 * thread, which runs the ioctls) and, with contention on, the host thread.
 */
export interface ThreadFit {
  cpus: number;
  vcpus: number;
  harvester: 1;
  hostThread: 0 | 1;
  /** "auto": the vCPU count was chosen to fit the cores; "user": given with -v. */
  vcpusFrom: "auto" | "user";
  oversubscribed: boolean;
}

/** vCPUs that fit next to the harvester and the host thread (at least one). */
export function fitVcpus(cpus: number, c: Contention): number {
  return Math.max(1, cpus - 1 - (hasHostThread(c) ? 1 : 0));
}

export function threadFit(cpus: number, vcpus: number, c: Contention, from: "auto" | "user"): ThreadFit {
  const hostThread = hasHostThread(c) ? 1 : 0;
  return {
    cpus,
    vcpus,
    harvester: 1,
    hostThread,
    vcpusFrom: from,
    oversubscribed: vcpus + 1 + hostThread > cpus,
  };
}

export interface PerfOptions {
  vcpus: number;
  bytesPerVcpu: number;
  iterations: number;
  writePercent: number;
  random: boolean;
  wp: WpName[];
  thp: boolean;
  contention: Contention;
  park: boolean;
  seed: number;
  /** Iterations run first and left out of every statistic (default 1). */
  warmup?: number;
  /** How mmu_lock waiters wait: "sleep" (default) or "spin" (3.11's ticket spinlock). */
  lock?: LockMode;
  /** The preset the options came from (recorded only). */
  preset?: string;
  /** How the vCPU count relates to the cores (recorded only; the CLI fills it). */
  threads?: ThreadFit;
  /**
   * "tdp" (default): as KVM's test, no guest paging. "shadow": EPT off; each vCPU first builds
   * its page tables (in a second, small memslot) mapping its region at a guest virtual address,
   * with 2 MiB guest pages if `guestHuge`, then runs memstress on virtual addresses.
   */
  mode?: MmuModeName;
  guestHuge?: boolean;
  progress?: (msg: string) => void;
  /** Checked between iterations: once aborted, the results cover the iterations done. */
  signal?: AbortSignal;
  /**
   * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with INITIALLY_SET, as KVM's test does by default (true
   * unless a ring is used): GET copies the bitmap, then CLEAR re-protects what it reported.
   */
  manualProtect?: boolean;
  /** Pages per KVM_CLEAR_DIRTY_LOG call (a multiple of 64); 0 (default): one call for the slot. */
  clearChunkPages?: number;
  /** Entries of a per-vCPU dirty ring instead of the bitmap (0, default: no ring). */
  ring?: number;
  /**
   * Timed iterations: each iteration is a fixed wall-clock window of this many ms (vCPUs and host
   * thread running), in which the harvester calls get-dirty-log every `harvestIntervalMs`; guest
   * throughput is the writes of the window over its length. 0 or absent: the classic iteration
   * (wait for two passes, then one get-dirty-log), whose length grows with any stall.
   */
  windowMs?: number;
  /** Timed iterations: ms between two get-dirty-log calls (default: windowMs, one call at the end). */
  harvestIntervalMs?: number;
  /**
   * NUMA balancing (Vm.setNumaBalancing): every this many ms a vCPU unmaps the next
   * `numaScanBytes` of guest memory (0 or absent: off).
   */
  numaScanPeriodMs?: number;
  /** Bytes per NUMA balancing scan (default 256 MiB). */
  numaScanBytes?: number;
  /**
   * Pin threads to CPUs, as KVM's dirty_log_perf_test -c: the vCPU threads' CPUs in id order
   * (both VMs' vCPU i share one: they never run at once), then optionally the harvester's (the
   * main thread). "auto": the harvester on the first CPU this process may use, the vCPUs on the
   * others. Absent: unpinned.
   * A failure to pin is an error for a list and a warning (the run goes on unpinned) for "auto".
   */
  pin?: number[] | "auto";
}

/**
 * The CPUs "auto" pinning gives, from the CPUs this process may use (`allowed`, in order):
 * vCPU i on allowed[1 + i] (round robin past the last), then the harvester on allowed[0].
 */
export function autoPin(allowed: readonly number[], vcpus: number): number[] {
  const n = allowed.length;
  const vcpuCpu = (i: number): number => (n === 1 ? allowed[0] : allowed[1 + (i % (n - 1))]);
  return [...Array.from({ length: vcpus }, (_, i) => vcpuCpu(i)), allowed[0]];
}

export interface IterationResult {
  /** A warm-up iteration: kept here, left out of every statistic. */
  warmup: boolean;
  dirtyMemoryNs: number;
  getDirtyLogNs: number;
  /**
   * The parts of the call that protects (GET; under manual protect the CLEAR calls; with a ring
   * the reset): waiting for mmu_lock, harvesting and protecting, the remote flush.
   */
  lockWaitNs: number;
  protectNs: number;
  flushNs: number;
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
  /** Median get-dirty-log time (plus CLEAR under manual protect) / median dirty pages. */
  nsPerDirtyPage: number;
  /** Guest writes per second, per iteration. */
  guestThroughput: Summary;
  /** Guest writes per second over all measured iterations' active time. */
  guestWritesPerSec: number;
  populateNs: number;
  enableLoggingNs: number;
  /** host_mmap of the guest memory: zeroing it is the first touch of fresh shared memory. */
  mmapNs: number;
  /**
   * Process CPU time: populate (vCPUs included), enable logging, and per iteration the call that
   * protects (median; GET, plus CLEAR under manual protect), per dirty page; involuntary context
   * switches during that call (median). See IterationResult.cpuNs.
   */
  cpu: {
    populateNs: number;
    enableLoggingNs: number;
    protectCallNs: number;
    nsPerDirtyPage: number;
    preemptions: number;
  };
  mmuLock: { vcpuWaitNs: number; vcpuHoldNs: number; vcpuAcquisitions: number; ioctlWaitNs: number };
  flushNs: number;
  faults: { fast: number; slow: number; retries: number; tlbMisses: number };
  host: { migrations: number; invalidations: number };
  /** NUMA balancing (PerfOptions.numaScanPeriodMs) over the whole run, warm-up included. */
  numa: { scans: number; pagesScanned: number };
  metadataBytes: number;
  /** Shadow mode: the shadow MMU's counters (shadowCounters, src/mmu/pte_write.ts). */
  shadow?: Record<string, number>;
  /** Which log interface: "dirty-log" (classic GET), "clear-log" (GET + CLEAR), "dirty-ring". */
  logMode: LogModeName;
  /** Manual protect: the CLEAR calls of each iteration. */
  clearDirtyLog?: NsStats;
  /** Dirty ring: harvest and reset of each iteration, and ring-full exits (median per iteration). */
  ring?: { harvest: NsStats; reset: NsStats; fullExits: number };
}

export type LogModeName = "dirty-log" | "clear-log" | "dirty-ring";

export function logModeOf(o: PerfOptions): LogModeName {
  if ((o.ring ?? 0) > 0) return "dirty-ring";
  return (o.manualProtect ?? true) ? "clear-log" : "dirty-log";
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
  results: Partial<Record<WpName, StrategyResult>>;
  /** lockless/locked, paired by iteration; null unless both designs ran. */
  /** clearDirtyLog: manual protect only, the CLEAR calls (where the protection happens then). */
  ratio: { getDirtyLog: RatioResult; guestThroughput: RatioResult; clearDirtyLog?: RatioResult } | null;
  guestMemoryBytes: number;
  metadataPercent: number;
  peakRssBytes: number;
}

const SLOT = 0;
const GPA_BASE = 1 << 30;
/** Shadow mode: the guest's page tables live in this slot (the guest "kernel area"). */
const PT_SLOT = 1;
const PT_GPA = 1 << 20;
/** Guest virtual page where vCPU 0's region is mapped (PML4 index 1, away from the kernel area). */
const REGION_VPN = 1 << 27;

interface Run {
  wp: WpName;
  vm: Vm;
  iters: IterationResult[];
  /** Measured iterations only. */
  activeMs: number;
  writes: number;
  populateNs: number;
  enableLoggingNs: number;
  mmapNs: number;
  populateCpuNs: number;
  enableLoggingCpuNs: number;
  bitmap: Uint32Array;
  logMode: LogModeName;
  /** Dirty ring: collection time and exits of the iteration in progress. */
  ringHarvestNs: number;
  ringResetNs: number;
  ringExits: number;
}

/** Process CPU time and involuntary context switches so far (Node 20 has no per-thread CPU clock). */
function cpuMark(): { cpuUs: number; preemptions: number } {
  const r = process.resourceUsage();
  return { cpuUs: r.userCPUTime + r.systemCPUTime, preemptions: r.involuntaryContextSwitches };
}

function cpuSince(m: { cpuUs: number; preemptions: number }): { cpuNs: number; preemptions: number } {
  const n = cpuMark();
  return { cpuNs: (n.cpuUs - m.cpuUs) * 1e3, preemptions: n.preemptions - m.preemptions };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function withVerdict(r: RatioSummary, below: string, above: string): RatioResult {
  return { ...r, verdict: verdict(r, below, above) };
}

function passes(vm: Vm): number[] {
  return vm.vcpuIds.map((id) => Atomics.load(vmKvm(vm).vcpu, VCPU.passes(id)));
}

function sumStat(vm: Vm, field: (id: number) => number): number {
  return vm.vcpuIds.reduce((n, id) => n + vmKvm(vm).vcpuStats[field(id)], 0);
}

/**
 * The host memory a run needs: the guest, in shadow mode the guest's page-table pool (its own
 * memslot), and 2 MiB of spare frames only when pages migrate (a migration takes a free frame
 * before it frees the old one). Nothing for alignment: frame 0 is handed out, so the guest's
 * THP mapping starts 2 MiB aligned and the pool's size is a multiple of 512 frames.
 */
export function hostMemoryFor(o: PerfOptions): { memory: number; ptPages: number; pool: number } {
  const shadow = o.mode === "shadow";
  const pages = o.bytesPerVcpu / PAGE_SIZE;
  // Shadow: a pool of table pages per vCPU for its region and the kernel area's identity map.
  const pool = shadow ? tablesFor(pages, o.guestHuge) + tablesFor(o.vcpus * 4096) + 8 : 0;
  const ptPages = Math.ceil((o.vcpus * pool) / 512) * 512;
  const spare = o.contention.migrateRate > 0 ? 2 << 20 : 0;
  return { memory: o.vcpus * o.bytesPerVcpu + ptPages * PAGE_SIZE + spare, ptPages, pool };
}

export function validatePerfOptions(o: PerfOptions): void {
  if (!Number.isInteger(o.vcpus) || o.vcpus < 1 || o.vcpus > 64) throw einval("vcpus", "must be 1..64");
  const chunk = o.clearChunkPages ?? 0;
  if (!Number.isInteger(chunk) || chunk < 0 || chunk % 64 !== 0)
    throw einval("clearChunkPages", `must be 0 or a positive multiple of 64, got ${String(chunk)}`);
  const ring = o.ring ?? 0;
  if (ring !== 0 && (!Number.isInteger(ring) || ring < 256 || ring > 65536 || (ring & (ring - 1)) !== 0))
    throw einval("ring", `must be 0 or a power of two in 256..65536, got ${String(ring)}`);
  if (ring !== 0 && o.manualProtect === true) throw einval("manualProtect", "does not go with a dirty ring");
  if (!Number.isInteger(o.bytesPerVcpu) || o.bytesPerVcpu < 2 << 20 || o.bytesPerVcpu % (2 << 20) !== 0)
    throw einval("bytesPerVcpu", "must be a positive multiple of 2 MiB");
  if (!Number.isInteger(o.iterations) || o.iterations < 1) throw einval("iterations", "must be >= 1");
  if (!Number.isInteger(o.writePercent) || o.writePercent < 0 || o.writePercent > 100)
    throw einval("writePercent", "must be 0..100");
  if (o.wp.length === 0) throw einval("wp", "no strategy");
  if (o.mode !== undefined && o.mode !== "tdp" && o.mode !== "shadow")
    throw einval("mode", "must be tdp or shadow");
  if (o.warmup !== undefined && (!Number.isInteger(o.warmup) || o.warmup < 0 || o.warmup > 1000))
    throw einval("warmup", "must be 0..1000");
  if (o.lock !== undefined && o.lock !== "sleep" && o.lock !== "spin")
    throw einval("lock", "must be sleep or spin");
  const win = o.windowMs ?? 0;
  if (!Number.isFinite(win) || win < 0 || win > 600_000)
    throw einval("windowMs", `must be 0..600000 ms, got ${String(win)}`);
  if (o.harvestIntervalMs !== undefined) {
    const h = o.harvestIntervalMs;
    if (win === 0) throw einval("harvestIntervalMs", "needs a timed iteration (windowMs > 0)");
    if (!Number.isFinite(h) || h < 1 || h > win)
      throw einval("harvestIntervalMs", `must be 1..windowMs (${win}) ms, got ${String(h)}`);
  }
  if (win > 0 && ring !== 0) throw einval("windowMs", "timed iterations do not go with a dirty ring");
  if (win > 0 && o.park) throw einval("windowMs", "timed iterations keep the vCPUs writing (no --park)");
  if (o.pin !== undefined && o.pin !== "auto") {
    const cpus = os.cpus().length;
    if (!Array.isArray(o.pin) || (o.pin.length !== o.vcpus && o.pin.length !== o.vcpus + 1))
      throw einval(
        "pin",
        `must be "auto" or ${o.vcpus} or ${o.vcpus + 1} CPUs (the vCPUs', then the harvester's)`,
      );
    for (const c of o.pin)
      if (!Number.isInteger(c) || c < 0 || c >= cpus)
        throw einval("pin", `CPU ${String(c)} is not one of this machine's 0..${cpus - 1}`);
  }
  numa_balancing_settings(o.numaScanPeriodMs, o.numaScanBytes, {
    period: "numaScanPeriodMs",
    bytes: "numaScanBytes",
  });
  const ip = o.contention.invalidatePages;
  if (ip !== undefined && (!Number.isInteger(ip) || ip < 1 || ip > 1 << 22))
    throw einval("invalidatePages", "must be 1..4194304");
  const { memory, ptPages } = hostMemoryFor(o);
  if (memory > MAX_MEMORY) {
    const why = [
      ptPages > 0 ? `${ptPages} frames of guest page tables (shadow mode)` : "",
      o.contention.migrateRate > 0 ? "2 MiB of spare frames for page migration" : "",
    ].filter((x) => x !== "");
    throw new KvmError(
      "ENOMEM",
      `bytesPerVcpu: ${o.vcpus} x ${o.bytesPerVcpu} bytes of guest memory` +
        (why.length > 0 ? ` plus ${why.join(" and ")}` : "") +
        ` exceed the ${MAX_MEMORY / 2 ** 30} GiB of host memory one VM can have`,
    );
  }
}

async function setup(wp: WpName, o: PerfOptions): Promise<Run> {
  const guestBytes = o.vcpus * o.bytesPerVcpu;
  const shadow = o.mode === "shadow";
  const pages = o.bytesPerVcpu / PAGE_SIZE;
  const { memory, ptPages, pool } = hostMemoryFor(o);
  const vm = Vm.create({
    memory,
    wp,
    mode: o.mode ?? "tdp",
    maxVcpus: Math.max(o.vcpus, 1),
    maxSlotPages: guestBytes / PAGE_SIZE + ptPages,
  });
  // Before any other thread exists: every thread's view of mmu_lock reads the mode.
  vmKvm(vm).mmu_lock.setMode(o.lock ?? "sleep");
  const logMode = logModeOf(o);
  // Before any vCPU exists (the ring) and before logging is enabled (INITIALLY_SET), as KVM's test.
  if (logMode === "dirty-ring") vm.enableDirtyRing(o.ring ?? 0);
  if (logMode === "clear-log")
    vm.enableManualDirtyLogProtect(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET);
  // host_mmap zeroes every frame: the first touch of the fresh shared memory, timed apart.
  const tm = performance.now();
  const hva = vm.mmap(guestBytes, { thp: o.thp });
  const mmapNs = (performance.now() - tm) * 1e6;
  vm.setUserMemoryRegion({
    slot: SLOT,
    flags: 0,
    guestPhysAddr: GPA_BASE,
    memorySize: guestBytes,
    userspaceAddr: hva,
  });
  const kernel = { baseGfn: PT_GPA / PAGE_SIZE, pages: ptPages };
  if (shadow) {
    const khva = vm.mmap(ptPages * PAGE_SIZE, { thp: o.thp });
    vm.setUserMemoryRegion({
      slot: PT_SLOT,
      flags: 0,
      guestPhysAddr: PT_GPA,
      memorySize: ptPages * PAGE_SIZE,
      userspaceAddr: khva,
    });
  }
  for (let i = 0; i < o.vcpus; i++) vm.createVcpu(i);
  const cpuPop = cpuMark();
  const t0 = performance.now();
  await vm.run((id) => ({
    kind: "memstress",
    baseGfn: GPA_BASE / PAGE_SIZE + id * pages,
    pages,
    writePercent: o.writePercent,
    random: o.random,
    seed: o.seed,
    ...(shadow
      ? {
          paging: {
            kernel,
            poolGfn: kernel.baseGfn + id * pool,
            poolPages: pool,
            vpn: REGION_VPN + id * pages,
            large: o.guestHuge ?? false,
          },
        }
      : {}),
  }));
  await vm.waitPasses(1, { timeoutMs: Infinity });
  const populateNs = (performance.now() - t0) * 1e6;
  await vm.pause();
  const populateCpuNs = cpuSince(cpuPop).cpuNs;
  const cpuEn = cpuMark();
  const t1 = performance.now();
  vm.setUserMemoryRegion({
    slot: SLOT,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: GPA_BASE,
    memorySize: guestBytes,
    userspaceAddr: hva,
  });
  const enableLoggingNs = (performance.now() - t1) * 1e6;
  const enableLoggingCpuNs = cpuSince(cpuEn).cpuNs;
  if ((o.numaScanPeriodMs ?? 0) > 0)
    vm.setNumaBalancing({ scanPeriodMs: o.numaScanPeriodMs, scanBytes: o.numaScanBytes });
  if (hasHostThread(o.contention)) {
    await vm.startHostThread({ ...o.contention, seed: o.seed });
    await vm.pauseHostThread();
  }
  return {
    wp,
    vm,
    iters: [],
    activeMs: 0,
    writes: 0,
    populateNs,
    enableLoggingNs,
    mmapNs,
    populateCpuNs,
    enableLoggingCpuNs,
    bitmap: new Uint32Array(Math.ceil(guestBytes / PAGE_SIZE / 32)),
    logMode,
    ringHarvestNs: 0,
    ringResetNs: 0,
    ringExits: 0,
  };
}

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

async function iterate(run: Run, o: PerfOptions, warmup: boolean): Promise<IterationResult> {
  const vm = run.vm;
  const mode = logModeOf(o);
  const w0 = sumStat(vm, ST.writes);
  run.bitmap.fill(0);
  run.ringHarvestNs = run.ringResetNs = 0;
  const exits0 = vm.dirtyRingStats().fullExits;
  run.ringExits = exits0;
  const who0 = whoWaited(vm);
  // Dirty ring: a vCPU whose ring is soft-full waits for a reset, so collect while it runs.
  const service =
    mode === "dirty-ring"
      ? (): void => {
          // A new exit, or a vCPU still waiting on a ring that filled after the last collection.
          const exits = vm.dirtyRingStats().fullExits;
          if (exits !== run.ringExits || vm.vcpuIds.some((id) => kvm_dirty_ring_soft_full(vmKvm(vm), id))) {
            run.ringExits = exits;
            collectRing(run);
          }
        }
      : undefined;
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
  if (o.park) {
    await vm.pause();
    await vm.pauseHostThread();
  }
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
  if (!o.park) {
    await vm.pause();
    await vm.pauseHostThread();
  }
  const activeMs = performance.now() - t0;
  // Paused: every vCPU has published its counters.
  const writes = sumStat(vm, ST.writes) - w0;
  const who = whoWaitedSince(vm, who0);
  if (!warmup) {
    run.activeMs += activeMs;
    run.writes += writes;
  }
  const { lockWaitNs, flushNs } = protectingCallParts(vm, mode, d0, d1, c0, c1);
  const protected_ = mode === "clear-log" ? (clearDirtyLogNs ?? 0) : getDirtyLogNs;
  const ringFields =
    mode === "dirty-ring"
      ? {
          ringHarvestNs: run.ringHarvestNs,
          ringResetNs: run.ringResetNs,
          ringFullExits: vm.dirtyRingStats().fullExits - exits0,
        }
      : {};
  return {
    warmup,
    dirtyMemoryNs,
    getDirtyLogNs,
    lockWaitNs,
    protectNs: Math.max(0, protected_ - lockWaitNs - flushNs),
    flushNs,
    dirtyPages: bitmap_weight(run.bitmap),
    guestThroughput: writes / (activeMs / 1000),
    ...(clearDirtyLogNs !== undefined ? { clearDirtyLogNs } : {}),
    cpuNs: cpu.cpuNs,
    preemptions: cpu.preemptions,
    ...ringFields,
    ...who,
    writes,
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
 * A timed iteration (PerfOptions.windowMs): resume; every harvestIntervalMs a get-dirty-log
 * (GET, and CLEAR under manual protect) while the vCPUs write; pause at the window's end. A
 * stall (a convoy on mmu_lock, docs/design.md §14) lowers the window's throughput instead of
 * stretching the iteration, so every iteration of both designs lasts about the same time.
 */
async function iterateWindow(run: Run, o: PerfOptions, warmup: boolean): Promise<IterationResult> {
  const vm = run.vm;
  const mode = logModeOf(o);
  const windowMs = o.windowMs ?? 0;
  const interval = o.harvestIntervalMs ?? windowMs;
  const w0 = sumStat(vm, ST.writes);
  const who0 = whoWaited(vm);
  const sum = { get: 0, clear: 0, wait: 0, flush: 0, prot: 0, pages: 0, cpu: 0, pre: 0 };
  let harvests = 0;
  const t0 = performance.now();
  const end = t0 + windowMs;
  vm.resume();
  vm.resumeHostThread();
  for (let k = 1; ;) {
    const due = t0 + k * interval;
    if (due > end + 1e-6) break;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    vm.throwIfFailed();
    run.bitmap.fill(0);
    const d0 = vm.dirtyLogTimes();
    const c0 = vm.clearDirtyLogTimes();
    const cpu0 = cpuMark();
    const tg = performance.now();
    vm.getDirtyLog(SLOT, run.bitmap);
    const get = (performance.now() - tg) * 1e6;
    const clear = mode === "clear-log" ? clearAll(run, o.clearChunkPages ?? 0) : 0;
    const cpu = cpuSince(cpu0);
    const d1 = vm.dirtyLogTimes();
    const c1 = vm.clearDirtyLogTimes();
    const { lockWaitNs: wt, flushNs: fl } = protectingCallParts(vm, mode, d0, d1, c0, c1);
    sum.get += get;
    sum.clear += clear;
    sum.wait += wt;
    sum.flush += fl;
    sum.prot += Math.max(0, (mode === "clear-log" ? clear : get) - wt - fl);
    sum.pages += bitmap_weight(run.bitmap);
    sum.cpu += cpu.cpuNs;
    sum.pre += cpu.preemptions;
    harvests++;
    // A call that overran later slots skips them rather than harvesting back to back.
    k = Math.max(k + 1, Math.floor((performance.now() - t0) / interval) + 1);
  }
  const wait = end - performance.now();
  if (wait > 0) await sleep(wait);
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

/** Dirty ring: harvest every vCPU's ring into the bitmap, then reset (KVM_RESET_DIRTY_RINGS). */
function collectRing(run: Run): void {
  const vm = run.vm;
  const t = performance.now();
  harvestDirtyRingsInto(vm, SLOT, run.bitmap);
  const t1 = performance.now();
  vm.resetDirtyRings();
  run.ringHarvestNs += (t1 - t) * 1e6;
  run.ringResetNs += (performance.now() - t1) * 1e6;
}

function strategyResult(run: Run): StrategyResult {
  const vm = run.vm;
  const m = run.iters.filter((i) => !i.warmup);
  const of = (
    k:
      | "getDirtyLogNs"
      | "lockWaitNs"
      | "protectNs"
      | "flushNs"
      | "dirtyMemoryNs"
      | "vcpuLockWaitNs"
      | "hostLockWaitNs",
  ): NsStats => nsStats(summarize(m.map((i) => i[k])));
  const getDirtyLog = of("getDirtyLogNs");
  const opt = (k: "clearDirtyLogNs" | "ringHarvestNs" | "ringResetNs"): NsStats =>
    nsStats(summarize(m.map((i) => i[k] ?? 0)));
  const pages = median(m.map((i) => i.dirtyPages));
  const t = vm.dirtyLogTimes();
  return {
    iterations: run.iters,
    getDirtyLog,
    lockWait: of("lockWaitNs"),
    vcpuLockWait: of("vcpuLockWaitNs"),
    hostLockWait: of("hostLockWaitNs"),
    protect: of("protectNs"),
    flush: of("flushNs"),
    dirtyMemory: of("dirtyMemoryNs"),
    // Under manual protect a page costs its GET and its CLEAR (as the kernel's figure counts both).
    nsPerDirtyPage: pages ? median(m.map((i) => i.getDirtyLogNs + (i.clearDirtyLogNs ?? 0))) / pages : 0,
    guestThroughput: summarize(m.map((i) => i.guestThroughput)),
    guestWritesPerSec: run.writes / (run.activeMs / 1000),
    populateNs: run.populateNs,
    enableLoggingNs: run.enableLoggingNs,
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
    logMode: run.logMode,
    ...(run.logMode === "clear-log" ? { clearDirtyLog: opt("clearDirtyLogNs") } : {}),
    ...(run.logMode === "dirty-ring"
      ? {
          ring: {
            harvest: opt("ringHarvestNs"),
            reset: opt("ringResetNs"),
            fullExits: median(m.map((i) => i.ringFullExits ?? 0)),
          },
        }
      : {}),
  };
}

/**
 * Both designs' VMs exist at once, and host_mmap touches every frame: refuse, before anything is
 * allocated, a run whose host memory does not fit the memory the machine has free now (with
 * 1 GiB to spare), rather than let the kernel's OOM killer pick a process.
 */
export function checkMachineMemory(o: PerfOptions, freeBytes = os.freemem()): void {
  const need = o.wp.length * hostMemoryFor(o).memory;
  if (need + 2 ** 30 <= freeBytes) return;
  const gib = (x: number): string => (x / 2 ** 30).toFixed(1);
  throw new KvmError(
    "ENOMEM",
    o.wp.length > 1
      ? `wp: ${o.wp.length} VMs of ${gib(need / o.wp.length)} GiB host memory each do not fit the ${gib(freeBytes)} GiB free; run one design at a time (--wp locked, then --wp lockless)`
      : `bytesPerVcpu: ${gib(need)} GiB of host memory does not fit the ${gib(freeBytes)} GiB free`,
  );
}

/** What pinThreads did, and how to give every thread it moved its CPUs of before back. */
interface Pinning {
  pinned: PerfResult["pinned"];
  undo: () => void;
}

/**
 * Pins the vCPU threads of every VM and the harvester (PerfOptions.pin) once all threads exist,
 * so that no later thread inherits the harvester's mask. With the harvester pinned, the
 * process's other threads (V8's compiler and GC helpers, libuv's pool, a host thread) go with
 * it, so that a vCPU's CPU runs that vCPU only.
 */
function pinThreads(runs: Run[], o: PerfOptions, say: (m: string) => void): Pinning {
  const none: Pinning = { pinned: null, undo: () => {} };
  if (o.pin === undefined) return none;
  const self = gettid();
  // The harvester's CPUs before the run: what every thread moved to its CPU gets back.
  const before = sched_getaffinity();
  const list =
    o.pin === "auto"
      ? autoPin(before ?? Array.from({ length: os.availableParallelism() }, (_, i) => i), o.vcpus)
      : o.pin;
  const moved: number[] = [];
  const undo = (): void => {
    const mask = before ?? Array.from({ length: os.cpus().length }, (_, i) => i);
    for (const tid of moved)
      try {
        sched_setaffinity(tid, mask);
      } catch {
        // The thread has exited (a VM's worker); the harvester keeps its mask if this fails.
      }
  };
  try {
    for (const run of runs) for (let i = 0; i < o.vcpus; i++) run.vm.pinVcpu(i, list[i]);
    const harvester = list.length > o.vcpus ? list[o.vcpus] : null;
    if (harvester !== null) {
      sched_setaffinity(self, harvester);
      moved.push(self);
      const vcpuTids = new Set(runs.flatMap((run) => run.vm.vcpuIds.map((id) => run.vm.vcpuTid(id))));
      for (const tid of processThreads()) {
        if (tid === self || vcpuTids.has(tid)) continue;
        try {
          sched_setaffinity(tid, harvester);
          moved.push(tid);
        } catch {
          // The thread has exited meanwhile.
        }
      }
    }
    const others = Math.max(0, moved.length - 1);
    say(
      `pinned: vCPUs on CPUs ${list.slice(0, o.vcpus).join(",")}, harvester and ${others} other threads on ${harvester ?? "any"}`,
    );
    return { pinned: { vcpus: list.slice(0, o.vcpus), harvester, others }, undo };
  } catch (e) {
    undo();
    if (o.pin !== "auto") throw e;
    const error = (e as Error).message;
    process.stderr.write(`kvmmu: warning: running unpinned: ${error}\n`);
    return { pinned: { error }, undo: () => {} };
  }
}

export async function dirtyLogPerf(o: PerfOptions): Promise<PerfResult> {
  validatePerfOptions(o);
  checkMachineMemory(o);
  const say = o.progress ?? (() => {});
  const runs: Run[] = [];
  let pinning: Pinning | null = null;
  const { progress: _p, signal: _s, ...options } = o;
  void _p;
  void _s;
  // Before pinning: the machine's CPU count as this thread sees it is its affinity mask's.
  const env = envelope("dirty-log-perf", options);
  try {
    for (const wp of o.wp) {
      say(`${wp}: populating ${o.vcpus} x ${o.bytesPerVcpu >> 20} MiB`);
      runs.push(await setup(wp, o));
    }
    pinning = pinThreads(runs, o, say);
    const warmup = o.warmup ?? 1;
    for (let it = 0; it < warmup + o.iterations && !o.signal?.aborted; it++) {
      const order = it % 2 === 0 ? runs : [...runs].reverse();
      const w = it < warmup;
      for (const run of order) {
        const r = (o.windowMs ?? 0) > 0 ? await iterateWindow(run, o, w) : await iterate(run, o, w);
        run.iters.push(r);
        say(
          `${run.wp} ${w ? `warm-up ${it + 1}` : `iteration ${it + 1 - warmup}`}: dirty memory ${(r.dirtyMemoryNs / 1e6).toFixed(1)} ms, get dirty log ${(r.getDirtyLogNs / 1e6).toFixed(2)} ms (mmu_lock wait ${(r.lockWaitNs / 1e6).toFixed(2)}, flush ${(r.flushNs / 1e6).toFixed(2)}), ${r.dirtyPages} dirty pages`,
        );
      }
    }
    await sleep(0);
    const results: PerfResult["results"] = {};
    for (const run of runs) results[run.wp] = strategyResult(run);
    const L = runs.find((r) => r.wp === "locked");
    const F = runs.find((r) => r.wp === "lockless");
    const guestMemoryBytes = o.vcpus * o.bytesPerVcpu;
    const meta = runs[0].vm.metadataBytes();
    const measured = (r: Run, k: "getDirtyLogNs" | "guestThroughput" | "clearDirtyLogNs"): number[] =>
      r.iters.filter((i) => !i.warmup).map((i) => i[k] ?? 0);
    return {
      ...env,
      options,
      pinned: pinning.pinned,
      results,
      ratio:
        L && F
          ? {
              getDirtyLog: withVerdict(
                pairedRatio(measured(F, "getDirtyLogNs"), measured(L, "getDirtyLogNs")),
                "lockless faster",
                "lockless slower",
              ),
              guestThroughput: withVerdict(
                pairedRatio(measured(F, "guestThroughput"), measured(L, "guestThroughput")),
                "guest slower under lockless",
                "guest faster under lockless",
              ),
              ...(logModeOf(o) === "clear-log"
                ? {
                    clearDirtyLog: withVerdict(
                      pairedRatio(measured(F, "clearDirtyLogNs"), measured(L, "clearDirtyLogNs")),
                      "lockless faster",
                      "lockless slower",
                    ),
                  }
                : {}),
            }
          : null,
      guestMemoryBytes,
      metadataPercent: (100 * meta) / guestMemoryBytes,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
    };
  } finally {
    pinning?.undo();
    for (const run of runs) await run.vm.stop();
  }
}

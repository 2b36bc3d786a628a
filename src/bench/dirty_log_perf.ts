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
import { bitmap_weight } from "../mem/dirty_bitmap.js";
import { MmuModeName, Vm, WpName } from "../vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, MmuMode, PAGE_SIZE, ST, VCPU } from "../kvm_host.js";
import { einval } from "../errors.js";
import { tablesFor } from "../workload/guest_paging.js";
import { shadowCounters } from "../mmu/pte_write.js";
import type { LockMode } from "../sync/mutex.js";
import { Envelope, envelope } from "./result.js";
import { median, pairedRatio, RatioSummary, summarize, Summary, verdict } from "./stats.js";

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
    bytesPerVcpu: 128 << 20,
    iterations: 10,
    warmup: 1,
    // Reclaim and migration split huge pages: 4 KiB mappings, one slow fault per page to refault.
    thp: false,
    lock: "spin",
    // Compaction/migration 300 pages/s; NUMA-balancing-style unmapping of 8 MiB ranges 100/s.
    contention: { migrateRate: 300, invalidateRate: 100, invalidatePages: 2048 },
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
}

export interface IterationResult {
  /** A warm-up iteration: kept here, left out of every statistic. */
  warmup: boolean;
  dirtyMemoryNs: number;
  getDirtyLogNs: number;
  /** The call's parts: waiting for mmu_lock, harvesting and protecting, the remote flush. */
  lockWaitNs: number;
  protectNs: number;
  flushNs: number;
  dirtyPages: number;
  /** Guest writes per second from resume to pause of this iteration. */
  guestThroughput: number;
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
  protect: NsStats;
  flush: NsStats;
  dirtyMemory: NsStats;
  /** Median get-dirty-log time / median dirty pages of the measured iterations. */
  nsPerDirtyPage: number;
  /** Guest writes per second, per iteration. */
  guestThroughput: Summary;
  /** Guest writes per second over all measured iterations' active time. */
  guestWritesPerSec: number;
  populateNs: number;
  enableLoggingNs: number;
  mmuLock: { vcpuWaitNs: number; vcpuHoldNs: number; vcpuAcquisitions: number; ioctlWaitNs: number };
  flushNs: number;
  faults: { fast: number; slow: number; retries: number; tlbMisses: number };
  host: { migrations: number; invalidations: number };
  metadataBytes: number;
  /** Shadow mode: the shadow MMU's counters (shadowCounters, src/mmu/pte_write.ts). */
  shadow?: Record<string, number>;
}

export interface RatioResult extends RatioSummary {
  verdict: string;
}

export interface PerfResult extends Envelope {
  options: Omit<PerfOptions, "progress">;
  results: Partial<Record<WpName, StrategyResult>>;
  /** lockless/locked, paired by iteration; null unless both designs ran. */
  ratio: { getDirtyLog: RatioResult; guestThroughput: RatioResult } | null;
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
  bitmap: Uint32Array;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function withVerdict(r: RatioSummary, below: string, above: string): RatioResult {
  return { ...r, verdict: verdict(r, below, above) };
}

function passes(vm: Vm): number[] {
  return vm.vcpuIds.map((id) => Atomics.load(vm.kvm.vcpu, VCPU.passes(id)));
}

async function waitPasses(vm: Vm, target: number[]): Promise<void> {
  for (;;) {
    vm.throwIfFailed();
    const p = passes(vm);
    if (p.every((x, i) => x >= target[i])) return;
    const id = vm.vcpuIds[p.findIndex((x, i) => x < target[i])];
    const r = Atomics.waitAsync(vm.kvm.vcpu, VCPU.passes(id), p[vm.vcpuIds.indexOf(id)], 5);
    if (r.async) await r.value;
  }
}

function sumStat(vm: Vm, field: (id: number) => number): number {
  return vm.vcpuIds.reduce((n, id) => n + vm.kvm.vcpuStats[field(id)], 0);
}

export function validatePerfOptions(o: PerfOptions): void {
  if (!Number.isInteger(o.vcpus) || o.vcpus < 1 || o.vcpus > 64) throw einval("vcpus", "must be 1..64");
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
  const ip = o.contention.invalidatePages;
  if (ip !== undefined && (!Number.isInteger(ip) || ip < 1 || ip > 1 << 22))
    throw einval("invalidatePages", "must be 1..4194304");
}

async function setup(wp: WpName, o: PerfOptions): Promise<Run> {
  const guestBytes = o.vcpus * o.bytesPerVcpu;
  const shadow = o.mode === "shadow";
  const pages = o.bytesPerVcpu / PAGE_SIZE;
  // Shadow: a pool of table pages per vCPU for its region and the kernel area's identity map.
  const pool = shadow ? tablesFor(pages, o.guestHuge) + tablesFor(o.vcpus * 4096) + 8 : 0;
  const ptPages = Math.ceil((o.vcpus * pool) / 512) * 512;
  // Spare frames for page migration and alignment.
  const vm = Vm.create({
    memory: guestBytes + ptPages * PAGE_SIZE + (8 << 20),
    wp,
    mode: o.mode ?? "tdp",
    maxVcpus: Math.max(o.vcpus, 1),
    maxSlotPages: guestBytes / PAGE_SIZE + ptPages,
  });
  // Before any other thread exists: every thread's view of mmu_lock reads the mode.
  vm.kvm.mmu_lock.setMode(o.lock ?? "sleep");
  const hva = vm.mmap(guestBytes, { thp: o.thp });
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
  await waitPasses(
    vm,
    vm.vcpuIds.map(() => 1),
  );
  const populateNs = (performance.now() - t0) * 1e6;
  await vm.pause();
  const t1 = performance.now();
  vm.setUserMemoryRegion({
    slot: SLOT,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: GPA_BASE,
    memorySize: guestBytes,
    userspaceAddr: hva,
  });
  const enableLoggingNs = (performance.now() - t1) * 1e6;
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
    bitmap: new Uint32Array(Math.ceil(guestBytes / PAGE_SIZE / 32)),
  };
}

async function iterate(run: Run, o: PerfOptions, warmup: boolean): Promise<IterationResult> {
  const vm = run.vm;
  const w0 = sumStat(vm, ST.writes);
  const t0 = performance.now();
  vm.resume();
  vm.resumeHostThread();
  const p0 = passes(vm);
  // A full pass that started after resume: the in-flight pass ends, then one more.
  await waitPasses(
    vm,
    p0.map((p) => p + 2),
  );
  const dirtyMemoryNs = (performance.now() - t0) * 1e6;
  if (o.park) {
    await vm.pause();
    await vm.pauseHostThread();
  }
  const d0 = vm.dirtyLogTimes();
  const tg = performance.now();
  vm.getDirtyLog(SLOT, run.bitmap);
  const getDirtyLogNs = (performance.now() - tg) * 1e6;
  const d1 = vm.dirtyLogTimes();
  if (!o.park) {
    await vm.pause();
    await vm.pauseHostThread();
  }
  const activeMs = performance.now() - t0;
  // Paused: every vCPU has published its counters.
  const writes = sumStat(vm, ST.writes) - w0;
  if (!warmup) {
    run.activeMs += activeMs;
    run.writes += writes;
  }
  const lockWaitNs = d1.lockWaitNs - d0.lockWaitNs;
  const flushNs = d1.flushNs - d0.flushNs;
  return {
    warmup,
    dirtyMemoryNs,
    getDirtyLogNs,
    lockWaitNs,
    protectNs: Math.max(0, getDirtyLogNs - lockWaitNs - flushNs),
    flushNs,
    dirtyPages: bitmap_weight(run.bitmap),
    guestThroughput: writes / (activeMs / 1000),
  };
}

function strategyResult(run: Run): StrategyResult {
  const vm = run.vm;
  const m = run.iters.filter((i) => !i.warmup);
  const of = (k: keyof Omit<IterationResult, "warmup">): NsStats => nsStats(summarize(m.map((i) => i[k])));
  const getDirtyLog = of("getDirtyLogNs");
  const pages = median(m.map((i) => i.dirtyPages));
  const t = vm.dirtyLogTimes();
  return {
    iterations: run.iters,
    getDirtyLog,
    lockWait: of("lockWaitNs"),
    protect: of("protectNs"),
    flush: of("flushNs"),
    dirtyMemory: of("dirtyMemoryNs"),
    nsPerDirtyPage: pages ? getDirtyLog.medianNs / pages : 0,
    guestThroughput: summarize(m.map((i) => i.guestThroughput)),
    guestWritesPerSec: run.writes / (run.activeMs / 1000),
    populateNs: run.populateNs,
    enableLoggingNs: run.enableLoggingNs,
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
    metadataBytes: vm.metadataBytes(),
    ...(vm.kvm.mode === MmuMode.Shadow ? { shadow: shadowCounters(vm.kvm) } : {}),
  };
}

export async function dirtyLogPerf(o: PerfOptions): Promise<PerfResult> {
  validatePerfOptions(o);
  const say = o.progress ?? (() => {});
  const runs: Run[] = [];
  try {
    for (const wp of o.wp) {
      say(`${wp}: populating ${o.vcpus} x ${o.bytesPerVcpu >> 20} MiB`);
      runs.push(await setup(wp, o));
    }
    const warmup = o.warmup ?? 1;
    for (let it = 0; it < warmup + o.iterations && !o.signal?.aborted; it++) {
      const order = it % 2 === 0 ? runs : [...runs].reverse();
      const w = it < warmup;
      for (const run of order) {
        const r = await iterate(run, o, w);
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
    const measured = (r: Run, k: "getDirtyLogNs" | "guestThroughput"): number[] =>
      r.iters.filter((i) => !i.warmup).map((i) => i[k]);
    const { progress: _p, signal: _s, ...options } = o;
    void _p;
    void _s;
    return {
      ...envelope("dirty-log-perf", options),
      options,
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
            }
          : null,
      guestMemoryBytes,
      metadataPercent: (100 * meta) / guestMemoryBytes,
      peakRssBytes: process.resourceUsage().maxRSS * 1024,
    };
  } finally {
    for (const run of runs) await run.vm.stop();
  }
}

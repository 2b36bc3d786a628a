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

export interface Contention {
  migrateRate: number;
  invalidateRate: number;
}

export const CONTENTION: Record<string, Contention> = {
  none: { migrateRate: 0, invalidateRate: 0 },
  default: { migrateRate: 200, invalidateRate: 100 },
  heavy: { migrateRate: 1000, invalidateRate: 400 },
};

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
  dirtyMemoryNs: number;
  getDirtyLogNs: number;
  dirtyPages: number;
}

export interface StrategyResult {
  iterations: IterationResult[];
  avgGetDirtyLogNs: number;
  medianGetDirtyLogNs: number;
  avgDirtyMemoryNs: number;
  nsPerDirtyPage: number;
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

export interface PerfResult {
  options: Omit<PerfOptions, "progress">;
  machine: { cpus: number; node: string };
  results: Partial<Record<WpName, StrategyResult>>;
  ratio: { avgGetDirtyLog: number; medianGetDirtyLog: number; guestWritesPerSec: number } | null;
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
  activeMs: number;
  writes0: number;
  populateNs: number;
  enableLoggingNs: number;
  bitmap: Uint32Array;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
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
  if (o.contention.migrateRate > 0 || o.contention.invalidateRate > 0) {
    await vm.startHostThread({ ...o.contention, seed: o.seed });
    await vm.pauseHostThread();
  }
  return {
    wp,
    vm,
    iters: [],
    activeMs: 0,
    writes0: sumStat(vm, ST.writes),
    populateNs,
    enableLoggingNs,
    bitmap: new Uint32Array(Math.ceil(guestBytes / PAGE_SIZE / 32)),
  };
}

async function iterate(run: Run, o: PerfOptions): Promise<IterationResult> {
  const vm = run.vm;
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
  const tg = performance.now();
  vm.getDirtyLog(SLOT, run.bitmap);
  const getDirtyLogNs = (performance.now() - tg) * 1e6;
  if (!o.park) {
    await vm.pause();
    await vm.pauseHostThread();
  }
  run.activeMs += performance.now() - t0;
  return { dirtyMemoryNs, getDirtyLogNs, dirtyPages: bitmap_weight(run.bitmap) };
}

function summarize(run: Run): StrategyResult {
  const vm = run.vm;
  const g = run.iters.map((i) => i.getDirtyLogNs);
  const avg = g.reduce((a, b) => a + b, 0) / g.length;
  const pages = run.iters.reduce((a, i) => a + i.dirtyPages, 0);
  const t = vm.dirtyLogTimes();
  return {
    iterations: run.iters,
    avgGetDirtyLogNs: avg,
    medianGetDirtyLogNs: median(g),
    avgDirtyMemoryNs: run.iters.reduce((a, i) => a + i.dirtyMemoryNs, 0) / run.iters.length,
    nsPerDirtyPage: pages ? g.reduce((a, b) => a + b, 0) / pages : 0,
    guestWritesPerSec: (sumStat(vm, ST.writes) - run.writes0) / (run.activeMs / 1000),
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
    for (let it = 0; it < o.iterations && !o.signal?.aborted; it++) {
      const order = it % 2 === 0 ? runs : [...runs].reverse();
      for (const run of order) {
        const r = await iterate(run, o);
        run.iters.push(r);
        say(
          `${run.wp} iteration ${it + 1}: dirty memory ${(r.dirtyMemoryNs / 1e6).toFixed(1)} ms, get dirty log ${(r.getDirtyLogNs / 1e6).toFixed(2)} ms, ${r.dirtyPages} dirty pages`,
        );
      }
    }
    await sleep(0);
    const results: PerfResult["results"] = {};
    for (const run of runs) results[run.wp] = summarize(run);
    const L = results.locked;
    const F = results.lockless;
    const guestMemoryBytes = o.vcpus * o.bytesPerVcpu;
    const meta = runs[0].vm.metadataBytes();
    return {
      options: { ...o, progress: undefined, signal: undefined } as Omit<PerfOptions, "progress">,
      machine: { cpus: (await import("node:os")).availableParallelism(), node: process.version },
      results,
      ratio:
        L && F
          ? {
              avgGetDirtyLog: F.avgGetDirtyLogNs / L.avgGetDirtyLogNs,
              medianGetDirtyLog: F.medianGetDirtyLogNs / L.medianGetDirtyLogNs,
              guestWritesPerSec: F.guestWritesPerSec / L.guestWritesPerSec,
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

/**
 * dirty-log-perf's VMs: one per design, built alike (as KVM's dirty_log_perf_test builds its
 * one), populated, with dirty logging enabled; and the per-VM readings the iterations take.
 */
import { Vm } from "../vm.js";
import {
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
  PAGE_SIZE,
  VCPU,
} from "../kvm_host.js";
import type { DesignName } from "../mmu/design.js";
import {
  hasHostThread,
  hostMemoryFor,
  LogModeName,
  logModeOf,
  PerfOptions,
} from "./dirty_log_perf_options.js";
import type { IterationResult } from "./dirty_log_perf_result.js";
import { vmKvm } from "../vm/internal.js";
import { DirtyGfnArrays, dirtyGfnArrays } from "../dirty_bitmap.js";
import { parseRunName } from "./dirty_log_perf_variant.js";

export const SLOT = 0;
const GPA_BASE = 1 << 30;
/** Shadow mode: the guest's page tables live in this slot (the guest "kernel area"). */
const PT_SLOT = 1;
const PT_GPA = 1 << 20;
/** Guest virtual page where vCPU 0's region is mapped (PML4 index 1, away from the kernel area). */
const REGION_VPN = 1 << 27;

export interface Run {
  wp: DesignName;
  vm: Vm;
  iters: IterationResult[];
  /** Measured iterations only. */
  activeMs: number;
  writes: number;
  populateNs: number;
  enableLoggingNs: number;
  /** Set by disableLogging() after the last iteration. */
  disableLoggingNs: number;
  /** The slot's host address (to set its flags again). */
  hva: number;
  mmapNs: number;
  populateCpuNs: number;
  enableLoggingCpuNs: number;
  bitmap: Uint32Array;
  logMode: LogModeName;
  /** Dirty ring: collection time and exits of the iteration in progress. */
  ringHarvestNs: number;
  ringResetNs: number;
  /** Dirty ring: the entries reset in the iteration in progress (a page written twice counts twice). */
  ringEntries: number;
  ringExits: number;
  /** Dirty ring: the harvest's arrays, one ring's entries (empty without a ring). */
  ringGfns: DirtyGfnArrays;
}

/** Process CPU time and involuntary context switches so far (Node 20 has no per-thread CPU clock). */
export function cpuMark(): { cpuUs: number; preemptions: number } {
  const r = process.resourceUsage();
  return { cpuUs: r.userCPUTime + r.systemCPUTime, preemptions: r.involuntaryContextSwitches };
}

export function cpuSince(m: { cpuUs: number; preemptions: number }): { cpuNs: number; preemptions: number } {
  const n = cpuMark();
  return { cpuNs: (n.cpuUs - m.cpuUs) * 1e3, preemptions: n.preemptions - m.preemptions };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function passes(vm: Vm): number[] {
  return vm.vcpuIds.map((id) => Atomics.load(vmKvm(vm).vcpu, VCPU.passes(id)));
}

export function sumStat(vm: Vm, field: (id: number) => number): number {
  return vm.vcpuIds.reduce((n, id) => n + vmKvm(vm).vcpuStats[field(id)], 0);
}

/**
 * One design's VM as KVM's test builds it: its memslot (and in shadow mode the guest page-table
 * slot), the log interface chosen, its vCPUs created; nothing populated yet.
 */
function createVm(
  wp: DesignName,
  o: PerfOptions,
): { vm: Vm; hva: number; mmapNs: number; logMode: LogModeName } {
  const guestBytes = o.vcpus * o.bytesPerVcpu;
  const shadow = o.mode === "shadow";
  const { memory, ptPages } = hostMemoryFor(o);
  // A design's name, as registered (src/mmu/design.ts), maybe with a variant's switches.
  const variant = parseRunName("wp", wp);
  const vm = Vm.create({
    memory,
    wp: variant.design,
    ...(variant.pml !== undefined ? { pml: variant.pml } : {}),
    ...(variant.eager_page_split !== undefined ? { eager_page_split: variant.eager_page_split } : {}),
    mode: o.mode ?? "tdp",
    maxVcpus: Math.max(o.vcpus, 1),
    maxSlotPages: guestBytes / PAGE_SIZE + ptPages,
  });
  // Before any other thread exists: every thread's view of mmu_lock reads the mode.
  vmKvm(vm).mmu_lock.setMode(o.lock ?? "sleep");
  o.onVm?.(vm, wp);
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
  return { vm, hva, mmapNs, logMode };
}

/** One design's VM, populated (one pass of every vCPU), dirty logging on, paused. */
export async function setup(wp: DesignName, o: PerfOptions): Promise<Run> {
  const guestBytes = o.vcpus * o.bytesPerVcpu;
  const shadow = o.mode === "shadow";
  const pages = o.bytesPerVcpu / PAGE_SIZE;
  const { ptPages, pool } = hostMemoryFor(o);
  const { vm, hva, mmapNs, logMode } = createVm(wp, o);
  const kernel = { baseGfn: PT_GPA / PAGE_SIZE, pages: ptPages };
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
  const en = enableLogging({ vm, hva }, o);
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
    enableLoggingNs: en.ns,
    disableLoggingNs: 0,
    hva,
    mmapNs,
    populateCpuNs,
    enableLoggingCpuNs: en.cpuNs,
    bitmap: new Uint32Array(Math.ceil(guestBytes / PAGE_SIZE / 32)),
    logMode,
    ringHarvestNs: 0,
    ringResetNs: 0,
    ringEntries: 0,
    ringExits: 0,
    ringGfns: dirtyGfnArrays(logMode === "dirty-ring" ? (o.ring ?? 0) : 0),
  };
}

/**
 * KVM's "Enabling dirty logging time": KVM_MEM_LOG_DIRTY_PAGES set on the slot, the vCPUs
 * paused; wall and process CPU time.
 */
export function enableLogging(run: Pick<Run, "vm" | "hva">, o: PerfOptions): { ns: number; cpuNs: number } {
  const c = cpuMark();
  const t = performance.now();
  run.vm.setUserMemoryRegion({
    slot: SLOT,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: GPA_BASE,
    memorySize: o.vcpus * o.bytesPerVcpu,
    userspaceAddr: run.hva,
  });
  return { ns: (performance.now() - t) * 1e6, cpuNs: cpuSince(c).cpuNs };
}

/** KVM's "Disabling dirty logging time": the slot's flags cleared, the vCPUs paused. */
export function disableLogging(run: Run, o: PerfOptions): void {
  const t = performance.now();
  run.vm.setUserMemoryRegion({
    slot: SLOT,
    flags: 0,
    guestPhysAddr: GPA_BASE,
    memorySize: o.vcpus * o.bytesPerVcpu,
    userspaceAddr: run.hva,
  });
  run.disableLoggingNs = (performance.now() - t) * 1e6;
}

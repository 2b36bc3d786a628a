/**
 * What every explorer scenario is made of (src/verify/scenarios.ts, src/verify/tdp_scenarios.ts):
 * the Scenario shape, the standard slot (4 MiB at gpa 0), vCPU, dirty-log and copy helpers that
 * scenario threads and checks share, and the QEMU-style final round.
 */
import { BugName, Kvm, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, PAGE_WORDS } from "../kvm_host.js";
import { MmuModeName, Vm, VmOptions } from "../vm.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { kvm_get_dirty_log, newDirtyLogTimes, wp_design } from "../mmu/dirty_log.js";
import { kvm_clear_dirty_log } from "../mmu/clear_dirty_log.js";
import { kvm_set_running_vcpu } from "../mem/dirty_ring.js";
import { hva_to_pfn, MmuNotifier } from "../mem/host_memory.js";
import {
  kvm_mmu_notifier_invalidate_range_end,
  kvm_mmu_notifier_invalidate_range_start,
} from "../mmu/mmu_notifier.js";
import { audit } from "./audit.js";
import { aload } from "../sync/atomic.js";
import { vmKvm } from "../vm/internal.js";
import type { TdpBugName } from "../mmu/tdp_mmu/tdp_mmu_bugs.js";
import type { DesignName } from "../mmu/design.js";

export interface ScenarioThread {
  name: string;
  run(kvm: Kvm, scratch: Int32Array): void;
}

export interface Scenario {
  name: string;
  bug: BugName | TdpBugName;
  /**
   * The one design the scenario applies to, when it is about that design's own code (the TDP
   * MMU's bugs: design `tdp-mmu`, TDP mode only); absent: every design that fits the rest.
   */
  onlyDesign?: DesignName;
  description: string;
  vmOptions(bugs: (BugName | TdpBugName)[], mode: MmuModeName): VmOptions;
  /**
   * True when the scenario is about rmap walks and its check reads write protection after a
   * harvest: it does not apply to a design without rmaps (the TDP MMU logs by D bit).
   */
  rmapOnly?: boolean;
  /** False when setup builds sptes the audit cannot see (aliases outside the TDP tree). */
  auditable: boolean;
  scratchWords: number;
  setup(vm: Vm, scratch: Int32Array): void;
  threads: ScenarioThread[];
  check(vm: Vm, scratch: Int32Array): string | null;
  /**
   * A generated scenario's program (src/verify/program.ts): posted to the explore workers,
   * which rebuild the threads from it (they cannot look a generated scenario up by name).
   */
  program?: unknown;
}

export const SLOT_BYTES = 4 << 20;
export const NPAGES = SLOT_BYTES / PAGE_SIZE;
/** scratch layout: [0, NPAGES) copies of each page's first word (the "destination"); then per-scenario words. */
export const S_EXTRA = NPAGES;

export function slot(vm: Vm, thp: boolean, logged: boolean): number {
  const hva = vm.mmap(SLOT_BYTES, { thp });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: logged ? KVM_MEM_LOG_DIRTY_PAGES : 0,
    guestPhysAddr: 0,
    memorySize: SLOT_BYTES,
    userspaceAddr: hva,
  });
  return hva / PAGE_SIZE;
}

export function enableLogging(vm: Vm, hvaPage: number): void {
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: SLOT_BYTES,
    userspaceAddr: hvaPage * PAGE_SIZE,
  });
}

/** Guest writes from the controller thread, before the run (vCPU `id` ends outside guest mode). */
export function prefault(vm: Vm, id: number, gfns: number[], stamp = 1): void {
  asVcpu(vmKvm(vm), id, (v) => {
    for (const g of gfns) v.write64(g, 0, stamp, 0);
  });
}

/** Runs body as vCPU `id` on this thread (kvm_get_running_vcpu() is `id` meanwhile: ring pushes). */
export function asVcpu(kvm: Kvm, id: number, body: (v: Vcpu) => void): void {
  const v = new Vcpu(kvm, id);
  kvm_set_running_vcpu(kvm, id);
  v.enterGuest();
  try {
    body(v);
  } finally {
    v.exitGuest();
    kvm_set_running_vcpu(kvm, -1);
  }
}

/** KVM_GET_DIRTY_LOG from a scenario thread (slots_lock held, as the ioctl does). */
export function harvest(kvm: Kvm): Uint32Array {
  const out = new Uint32Array(NPAGES / 32);
  kvm.slots_lock.lock();
  try {
    kvm_get_dirty_log(kvm, 0, out, newDirtyLogTimes());
  } finally {
    kvm.slots_lock.unlock();
  }
  return out;
}

/** KVM_CLEAR_DIRTY_LOG of the pages set in bm, from a scenario thread (slots_lock held). */
export function clearLog(kvm: Kvm, bm: Uint32Array): void {
  kvm.slots_lock.lock();
  try {
    kvm_clear_dirty_log(kvm, wp_design(kvm), 0, 0, NPAGES, bm, newDirtyLogTimes());
  } finally {
    kvm.slots_lock.unlock();
  }
}

export function pageWord(kvm: Kvm, hvaPage: number): number {
  const pfn = hva_to_pfn(kvm, hvaPage);
  return aload(kvm.mem, pfn < 0 ? 0 : pfn * PAGE_WORDS);
}

/** The "migration" side of the QEMU-style oracle: copy the pages a bitmap reports. */
export function copyReported(kvm: Kvm, hvaBase: number, bm: Uint32Array, scratch: Int32Array): void {
  for (let g = 0; g < NPAGES; g++)
    if ((bm[g >>> 5] >>> (g & 31)) & 1) scratch[g] = pageWord(kvm, hvaBase + g);
}

export function copyAll(kvm: Kvm, hvaBase: number, scratch: Int32Array): void {
  for (let g = 0; g < NPAGES; g++) scratch[g] = pageWord(kvm, hvaBase + g);
}

/** Final round (quiesced) and comparison: every page must equal its copy. */
export function finalRoundMismatch(vm: Vm, hvaBase: number, scratch: Int32Array): string | null {
  const kvm = vmKvm(vm);
  copyReported(kvm, hvaBase, harvest(kvm), scratch);
  for (let g = 0; g < NPAGES; g++) {
    const m = pageWord(kvm, hvaBase + g);
    if (m !== scratch[g])
      return `lost dirty page: gfn ${g} holds ${m} but the migrated copy holds ${scratch[g]} (a write was never reported)`;
  }
  return null;
}

export const notifierOf = (kvm: Kvm): MmuNotifier => ({
  invalidateRangeStart: (s, e) => kvm_mmu_notifier_invalidate_range_start(kvm, s, e),
  invalidateRangeEnd: () => kvm_mmu_notifier_invalidate_range_end(kvm),
});

export const auditCheck = (vm: Vm): string | null => {
  const bad = audit(vmKvm(vm), 3);
  return bad.length ? `audit: ${bad.join("; ")}` : null;
};

export function withMmuLock(kvm: Kvm, fn: () => void): void {
  kvm.mmu_lock.lock();
  try {
    fn();
  } finally {
    kvm.mmu_lock.unlock();
  }
}

export const HVA0 = 1; // scratch word: hva page of gfn 0

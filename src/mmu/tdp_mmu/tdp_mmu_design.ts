/**
 * The TDP MMU as a design of the registry (`tdp-mmu`): Linux 5.12+'s MMU for two-dimensional
 * paging, with mmu_lock a reader-writer lock. Shadow paging (EPT off) stays on the rmap MMU, as
 * in KVM: the design refuses that mode.
 *
 * Lock modes (the table of docs/design.md's TDP MMU chapter):
 *   page_fault             read   (kvm_tdp_mmu_map, cmpxchg per spte)
 *   fast_page_fault        none
 *   protectMasked          write  (clear_dirty_pt_masked, inside GET/CLEAR/ring reset's section)
 *   slotRemoveWriteAccess  read   (wrprot_slot / clear_dirty_slot when logging starts)
 *   zap_gfn_range          write  (tdp_mmu_zap_leafs for the MMU notifier)
 */
import { Kvm, MmuMode } from "../../kvm_host.js";
import { lockdep_assert_held_write } from "../../kvm/lockdep.js";
import { einval } from "../../errors.js";
import { kvm_flush_remote_tlbs } from "../../kvm/requests.js";
import { fast_page_fault } from "../mmu.js";
import type { KvmMmuOps } from "../kvm_mmu.js";
import { DirtyLogTimes, timedFlush } from "../write_protect.js";
import {
  CTL,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  PML_ENTITY_NUM,
  SLOT,
} from "../../kvm_host.js";
import { kvm_tdp_mmu_page_fault } from "./tdp_mmu_fault.js";
import {
  kvm_tdp_mmu_write_protect_gfn_range,
  kvm_tdp_mmu_clear_dirty_pt_masked,
  kvm_tdp_mmu_clear_dirty_slot,
  kvm_tdp_mmu_wrprot_slot,
  tdp_mmu_harvest_walk_reset,
  tdp_mmu_new_harvest_walk,
} from "./tdp_mmu_dirty.js";
import type { TdpHarvestWalk } from "./tdp_mmu_dirty.js";
import { BUG_TDP } from "./tdp_mmu_bugs.js";
import { kvm_tdp_mmu_unmap_hva_range, kvm_tdp_mmu_zap_collapsible_sptes } from "./tdp_mmu_zap.js";
import { kvm_tdp_mmu_invalidate_all_roots } from "./tdp_mmu_root_zap.js";
import { kvm_tdp_mmu_split_for_clear, kvm_tdp_mmu_split_slot } from "./tdp_mmu_split.js";

export const TDP_MMU = "tdp-mmu";

/** Dirty logging by D bit and PML (KvmConfig.pml, default on) rather than write protection. */
export function kvm_tdp_mmu_pml(kvm: Kvm): boolean {
  return kvm.shared.config.pml === true;
}

/**
 * The walk protectMasked keeps across the masks of one harvest section (TdpHarvestWalk): this
 * thread's, used only while it holds mmu_lock for write, dropped at harvestBegin and harvestEnd.
 */
let harvestWalk: TdpHarvestWalk | null = null;

function harvestBegin(kvm: Kvm, times: DirtyLogTimes): void {
  const w0 = kvm.mmu_lock.stats.waitNs;
  kvm.mmu_lock.write_lock();
  times.lockWaitNs += kvm.mmu_lock.stats.waitNs - w0;
  harvestWalk ??= tdp_mmu_new_harvest_walk(kvm);
  harvestWalk.iter.skipAfterRestart = kvm.bug(BUG_TDP["tdp-iter-skip"]);
  tdp_mmu_harvest_walk_reset(harvestWalk);
}

/** kvm_dirty_log_manual_protect_and_init_set (slots_lock held by the caller). */
function manual_protect_and_init_set(kvm: Kvm): boolean {
  const f = kvm.ctl[CTL.manual_dirty_log];
  const both = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
  return (f & both) === both;
}

function protectMasked(kvm: Kvm, slot: number, wordIndex: number, mask: number): boolean {
  const gfn = kvm.slots[SLOT.base_gfn(slot)] + wordIndex * 32;
  let flush = false;
  const walk = harvestWalk ?? undefined;
  if (manual_protect_and_init_set(kvm) && mask !== 0) {
    // The 4 KiB pages were never protected: split and write-protect the huge pages over them.
    const start = gfn + 31 - Math.clz32(mask & -mask);
    const end = gfn + 31 - Math.clz32(mask);
    kvm_tdp_mmu_split_for_clear(kvm, start, end);
    // The split links new tables (and may drop the lock): the kept walk is stale.
    if (walk) tdp_mmu_harvest_walk_reset(walk);
    flush = kvm_tdp_mmu_write_protect_gfn_range(kvm, start, end, 2);
  }
  // Then the 4 KiB leaves, always (kvm_arch_mmu_enable_log_dirty_pt_masked).
  const wrprot = !kvm_tdp_mmu_pml(kvm);
  return kvm_tdp_mmu_clear_dirty_pt_masked(kvm, slot, gfn, mask, wrprot, walk) || flush;
}

function harvestEnd(kvm: Kvm, flush: boolean, times: DirtyLogTimes): void {
  if (harvestWalk) tdp_mmu_harvest_walk_reset(harvestWalk);
  try {
    if (flush) timedFlush(kvm, times, kvm_flush_remote_tlbs);
  } finally {
    kvm.mmu_lock.write_unlock();
  }
}

/**
 * kvm_mmu_slot_apply_flags when logging starts: with PML the 4 KiB leaves lose D and huge ones
 * W; without, every leaf loses W. With INITIALLY_SET (minLevel 2) nothing: every page is
 * reported dirty already, and CLEAR splits and write-protects the huge pages under the range it
 * clears (protectMasked), as 6.x does since "KVM: x86: Not wr-protect huge page with
 * init_all_set dirty log" (5.13); write-protecting them here made the first pass after enabling
 * fault on (and split) every huge page, eager splitting or not. Read lock; the flush after it.
 */
function slotRemoveWriteAccess(kvm: Kvm, slot: number, minLevel = 1): void {
  if (minLevel > 1 && manual_protect_and_init_set(kvm)) return;
  let flush = false;
  kvm.mmu_lock.read_lock();
  try {
    if (minLevel === 1 && kvm_tdp_mmu_pml(kvm)) {
      flush = kvm_tdp_mmu_clear_dirty_slot(kvm, slot);
      flush = kvm_tdp_mmu_wrprot_slot(kvm, slot, 2) || flush;
    } else {
      flush = kvm_tdp_mmu_wrprot_slot(kvm, slot, minLevel);
    }
  } finally {
    kvm.mmu_lock.read_unlock();
  }
  if (flush) kvm_flush_remote_tlbs(kvm);
}

/** Logging stopped: huge pages come back (kvm_mmu_zap_collapsible_sptes), read lock. */
export function kvm_tdp_mmu_recover_huge_pages(kvm: Kvm, slot: number): void {
  kvm.mmu_lock.read_lock();
  try {
    kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot);
  } finally {
    kvm.mmu_lock.read_unlock();
  }
}

/** The whole root goes (kvm_mmu_zap_all_fast): reclaim when the pools run short. Write lock held. */
export function kvm_tdp_mmu_zap_all(kvm: Kvm): boolean {
  lockdep_assert_held_write(kvm);
  return kvm_tdp_mmu_invalidate_all_roots(kvm);
}

/** The ops of a `tdp-mmu` VM; refuses shadow paging. */
export function tdpMmuOps(mode: MmuMode): KvmMmuOps {
  if (mode === MmuMode.Shadow)
    throw einval(
      "mode",
      "the TDP MMU needs two-dimensional paging (EPT/NPT); shadow paging (EPT off) stays on the rmap MMU, as in KVM",
    );
  return {
    name: TDP_MMU,
    page_fault: kvm_tdp_mmu_page_fault,
    fast_page_fault,
    zap_gfn_range: kvm_tdp_mmu_unmap_hva_range,
    harvestBegin,
    protectMasked,
    harvestEnd,
    slotRemoveWriteAccess,
    recover_huge_pages: kvm_tdp_mmu_recover_huge_pages,
    zap_all: kvm_tdp_mmu_zap_all,
    split_huge_pages: kvm_tdp_mmu_split_slot,
    cpu_dirty_log_size: (kvm) => (kvm_tdp_mmu_pml(kvm) ? PML_ENTITY_NUM : 0),
    lock: {
      page_fault: "read",
      fast_page_fault: "none",
      protectMasked: "write",
      slotRemoveWriteAccess: "read",
      zap_gfn_range: "write",
    },
  };
}

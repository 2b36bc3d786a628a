/**
 * Changing a TDP MMU spte (tdp_mmu.c's tdp_mmu_set_spte_atomic, tdp_mmu_iter_set_spte,
 * kvm_tdp_mmu_write_spte, handle_changed_spte) and the frozen value (spte.h's FROZEN_SPTE,
 * REMOVED_SPTE before 6.10).
 *
 * Under the read lock several threads change sptes at once: each change is a cmpxchg from the
 * value the iterator read (tdp_mmu_set_spte_atomic); a lost cmpxchg is -EBUSY and the caller
 * retries with the value it lost to. A change that takes more than one step (a zap that must
 * flush before the spte may be reused, a table being torn down) first freezes the spte: no other
 * thread touches a frozen spte, it retries until the owner writes the final value.
 *
 * Under the write lock sptes are stored plainly, except those with volatile bits: W set by
 * fast_page_fault and D set by the vCPU run without mmu_lock, so such an spte is replaced with
 * xchg and the caller learns what it replaced (ba3a6120a4e7).
 */
import { KF, kfunc_enter, kfunc_exit, kfunc_ret } from "../../sync/kfunc.js";
import { CTL, Kvm, KVM_PAGES_PER_HPAGE, ROLE_INVALID, SP } from "../../kvm_host.js";
import { lockdep_assert_held_read, lockdep_assert_held_write } from "../../kvm/lockdep.js";
import { sp_level } from "../mmu_page.js";
import { BUG_TDP } from "./tdp_mmu_bugs.js";
import { aadd, acas, aload, aor, astore, axchg, spinPoint } from "../../sync/atomic.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  PT_PAGE_TABLE_LEVEL,
  PT64_ENT_PER_PAGE,
  PT_WRITABLE_MASK,
  SPTE_DIRTY,
  SPTE_MMU_WRITEABLE,
  spte_to_child_sp,
  spte_to_pfn,
} from "../spte.js";
import { gfn_to_hva_page, gfn_to_memslot } from "../../mem/memslot.js";
import { set_page_dirty } from "../../mem/host_memory.js";
import { tdp_mmu_state } from "./tdp_mmu_state.js";
import type { TdpIter } from "./tdp_iter.js";
import { trace_kvm_mmu_prepare_zap_page, trace_kvm_tdp_mmu_spte_changed } from "../mmutrace.js";

/**
 * FROZEN_SPTE: not present (bit 0 clear), and no value a zap or a fault ever writes (those write
 * 0 or a present spte), so a cmpxchg from any value another thread read cannot match it by chance.
 */
export const FROZEN_SPTE = 0x5a0;

export function is_frozen_spte(s: number): boolean {
  return s === FROZEN_SPTE;
}

/** -EBUSY: a cmpxchg lost, or the spte is frozen. */
export const EBUSY = -16;

/**
 * spte_has_volatile_bits as 6.x has it for sptes with A/D bits (spte.ts keeps 3.11's, for the
 * rmap designs): a bit of the spte may change without mmu_lock. fast_page_fault sets W only on
 * a leaf that is MMU-writable but not writable; the vCPU sets D only (with PML: A/D bits) on a
 * writable leaf whose D is clear. A writable leaf with D set, or any leaf without PML that is
 * writable, changes only under mmu_lock.
 */
export function tdp_spte_has_volatile_bits(kvm: Kvm, s: number): boolean {
  if ((s & PT_WRITABLE_MASK) === 0) return (s & SPTE_MMU_WRITEABLE) !== 0;
  return (s & SPTE_DIRTY) === 0 && kvm.shared.config.pml === true;
}

/**
 * kvm_tdp_mmu_write_spte: a store under the write lock. An spte with volatile bits (W or D may
 * change without mmu_lock) is replaced with xchg; returns the value replaced.
 */
export function kvm_tdp_mmu_write_spte(
  kvm: Kvm,
  sptep: number,
  oldSpte: number,
  newSpte: number,
  level: number,
): number {
  if (
    is_shadow_present_pte(oldSpte) &&
    is_last_spte(oldSpte, level) &&
    tdp_spte_has_volatile_bits(kvm, oldSpte)
  ) {
    // Bug "tdp-plain-write" (ba3a6120a4e7): a plain store loses a D or W set since oldSpte was read.
    if (!kvm.bug(BUG_TDP["tdp-plain-write"])) return axchg(kvm.spt, sptep, newSpte);
  }
  astore(kvm.spt, sptep, newSpte);
  return oldSpte;
}

/**
 * is_dirty_spte: the leaf holds the only record that its page was written since it was last
 * made clean: D with PML (A/D bits: the vCPU sets D on its first write), else W (writes need W).
 */
export function is_dirty_spte(kvm: Kvm, s: number): boolean {
  return (s & (kvm.shared.config.pml === true ? SPTE_DIRTY : PT_WRITABLE_MASK)) !== 0;
}

/**
 * kvm_set_pfn_dirty for the page a leaf at gfn maps (a huge leaf: its head page, whose flag is
 * the compound page's): the host must write it back before dropping it. A gfn outside every
 * slot (a slot being deleted) has nothing to tell.
 */
export function kvm_set_pfn_dirty(kvm: Kvm, gfn: number): void {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot >= 0) set_page_dirty(kvm, gfn_to_hva_page(kvm, slot, gfn));
}

/**
 * handle_changed_spte: the bookkeeping of old -> new at (gfn, level): dirty state leaving a leaf
 * goes to the host page (kvm_set_pfn_dirty), the large-page count, and a table that is no longer
 * linked is torn down (handle_removed_pt). No rmaps to update. `shared`: the caller holds the
 * read lock.
 */
export function handle_changed_spte(
  kvm: Kvm,
  gfn: number,
  oldSpte: number,
  newSpte: number,
  level: number,
  shared: boolean,
): void {
  const wasPresent = is_shadow_present_pte(oldSpte);
  const isPresent = is_shadow_present_pte(newSpte);
  const wasLeaf = wasPresent && is_last_spte(oldSpte, level);
  const isLeaf = isPresent && is_last_spte(newSpte, level);
  if (oldSpte === newSpte) return;
  // What a locked writer learns of old's D or W comes from kvm_tdp_mmu_write_spte's xchg
  // (ba3a6120a4e7): a plain store would report the stale value and the write would be lost.
  if (
    wasLeaf &&
    is_dirty_spte(kvm, oldSpte) &&
    (!isPresent || !is_dirty_spte(kvm, newSpte) || spte_to_pfn(oldSpte) !== spte_to_pfn(newSpte))
  )
    kvm_set_pfn_dirty(kvm, gfn);
  if (kvm.trace.on) trace_kvm_tdp_mmu_spte_changed(kvm, gfn, level, oldSpte, newSpte);
  if (level > PT_PAGE_TABLE_LEVEL) {
    const wasLarge = wasLeaf && is_large_pte(oldSpte);
    const isLarge = isLeaf && is_large_pte(newSpte);
    if (wasLarge !== isLarge) aadd(kvm.ctl, CTL.lpages, isLarge ? 1 : -1);
  }
  // A link replaced by anything else, or by a link to another table: the old table goes.
  if (wasPresent && !wasLeaf && (!isPresent || isLeaf || spte_to_pfn(oldSpte) !== spte_to_pfn(newSpte)))
    handle_removed_pt(kvm, spte_to_child_sp(oldSpte), gfn, shared);
}

/**
 * tdp_mmu_set_spte_atomic: cmpxchg iter.old_spte -> newSpte, read lock held. On success does the
 * bookkeeping and returns 0; else refreshes iter.old_spte with the value that won and returns
 * EBUSY (a frozen spte is EBUSY without a try).
 */
export function tdp_mmu_set_spte_atomic(kvm: Kvm, iter: TdpIter, newSpte: number): number {
  const kfd = kfunc_enter(KF.tdp_mmu_set_spte_atomic);
  lockdep_assert_held_read(kvm);
  if (is_frozen_spte(iter.old_spte)) return kfunc_ret(kfd, EBUSY);
  const old = acas(kvm.spt, iter.sptep, iter.old_spte, newSpte);
  if (old !== iter.old_spte) {
    iter.old_spte = old;
    return kfunc_ret(kfd, EBUSY);
  }
  handle_changed_spte(kvm, iter.gfn, old, newSpte, iter.level, true);
  return kfunc_ret(kfd, 0);
}

/**
 * tdp_mmu_iter_set_spte (tdp_mmu_set_spte): a change under the write lock; iter.old_spte becomes
 * the value really replaced.
 */
export function tdp_mmu_iter_set_spte(kvm: Kvm, iter: TdpIter, newSpte: number): void {
  lockdep_assert_held_write(kvm);
  iter.old_spte = kvm_tdp_mmu_write_spte(kvm, iter.sptep, iter.old_spte, newSpte, iter.level);
  handle_changed_spte(kvm, iter.gfn, iter.old_spte, newSpte, iter.level, false);
  iter.old_spte = newSpte;
}

/** The spte's current value (READ_ONCE). */
export function tdp_mmu_read_spte(kvm: Kvm, sptep: number): number {
  return aload(kvm.spt, sptep);
}

/**
 * handle_removed_pt (with handle_changed_spte, which it recurses through): table `sp` is no longer linked (the caller replaced its link spte). Freezes
 * each of its 512 sptes, tears down its child tables the same way, and queues it for freeing
 * after the grace period. `shared`: read lock held, other threads may still change the children
 * (each is xchg'd to FROZEN, waiting while another thread has it frozen); under the write lock
 * only volatile leaves need the xchg.
 */
export function handle_removed_pt(kvm: Kvm, sp: number, _gfn: number, shared: boolean): void {
  const kfd = kfunc_enter(KF.handle_removed_pt);
  try {
    const level = sp_level(kvm, sp);
    const base = kvm.spHdr[SP.gfn(sp)];
    if (kvm.trace.on) trace_kvm_mmu_prepare_zap_page(kvm, sp);
    const pages = KVM_PAGES_PER_HPAGE(level);
    const spt = kvm.spt;
    aor(kvm.spHdr, SP.role(sp), ROLE_INVALID);
    for (let i = 0; i < PT64_ENT_PER_PAGE; i++) {
      const sptep = sp * PT64_ENT_PER_PAGE + i;
      let old: number;
      if (shared) {
        // Another thread froze it: it is mid-change (a zap flushing); wait for its final value.
        for (;;) {
          old = axchg(spt, sptep, FROZEN_SPTE);
          if (!is_frozen_spte(old)) break;
          spinPoint(spt, sptep);
        }
      } else {
        old = aload(spt, sptep);
        if (!is_shadow_present_pte(old)) {
          astore(spt, sptep, FROZEN_SPTE);
          continue;
        }
        old = kvm_tdp_mmu_write_spte(kvm, sptep, old, FROZEN_SPTE, level);
      }
      handle_changed_spte(kvm, base + i * pages, old, FROZEN_SPTE, level, shared);
    }
    tdp_mmu_state(kvm).rcuPending.push(sp);
  } finally {
    kfunc_exit(kfd);
  }
}

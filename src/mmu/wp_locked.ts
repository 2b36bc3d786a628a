/**
 * The Linux 3.11 write-protect design: everything under mmu_lock. The harvest holds mmu_lock
 * for the whole bitmap and flushes before releasing it (6dbf79e); W is cleared with
 * mmu_spte_update; a writable large spte is dropped (3.11 spte_write_protect) and the rmap walk
 * restarts; the slot walk breaks the lock every 1024 heads when it is contended
 * (cond_resched_lock), flushing first.
 */
import { KF, kfunc_enter, kfunc_ret } from "../sync/kfunc.js";
import { BUG, Kvm, SLOT } from "../kvm_host.js";
import { lockdep_assert_held_write } from "../kvm/lockdep.js";
import { aread, axchg } from "../sync/atomic.js";
import { gfn_to_rmap, slot_level_pages } from "../mem/memslot.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { for_each_rmap_spte, RMAP_RESTART, rmap_single_spte } from "./rmap.js";
import { drop_spte } from "./mmu_page.js";
import { mmu_spte_update } from "./spte_ops.js";
import {
  is_large_pte,
  is_writable_pte,
  KVM_NR_PAGE_SIZES,
  PT_WRITABLE_MASK,
  spte_has_volatile_bits,
} from "./spte.js";
import { DirtyLogTimes, timedFlush, WriteProtectDesign } from "./write_protect.js";

/** spte_write_protect_locked result: a flush is needed. */
export const WP_FLUSH = 2;

/**
 * 3.11 spte_write_protect: returns RMAP_RESTART | WP_FLUSH if it dropped the spte (a large
 * spte: it left the rmap), WP_FLUSH if W was cleared and a flush is needed, 0 otherwise.
 * mmu_lock held. Shaped as a for_each_rmap_spte callback.
 */
export function spte_write_protect_locked(kvm: Kvm, sptep: number): number {
  const kfd = kfunc_enter(KF.spte_write_protect);
  // Plain read: under mmu_lock only W changes behind us (fast_page_fault sets it, and then marks
  // the page dirty after), and mmu_spte_update replaces a volatile spte with xchg.
  const s = aread(kvm.spt, sptep);
  if (!is_writable_pte(s)) return kfunc_ret(kfd, 0);
  if (is_large_pte(s)) {
    drop_spte(kvm, sptep);
    kvm.wpStats.largeDropped++;
    return kfunc_ret(kfd, RMAP_RESTART | WP_FLUSH);
  }
  kvm.wpStats.protected++;
  return kfunc_ret(kfd, mmu_spte_update(kvm, sptep, s & ~PT_WRITABLE_MASK) ? WP_FLUSH : 0);
}

/** __rmap_write_protect (3.11): every spte of rmap head hi; mmu_lock held. Returns flush. */
export function __rmap_write_protect(kvm: Kvm, hi: number): boolean {
  const kfd = kfunc_enter(KF.rmap_write_protect);
  return kfunc_ret(
    kfd,
    (for_each_rmap_spte(kvm, kvm.rmapPool, hi, spte_write_protect_locked) & WP_FLUSH) !== 0,
  );
}

/**
 * kvm_mmu_write_protect_pt_masked (3.11): the level-1 rmaps of the gfns in mask. mmu_lock held.
 * The common TDP case, a single-entry head whose spte is a writable 4 KiB leaf with volatile
 * bits, is spte_write_protect_locked with mmu_spte_update inline: one plain read, one xchg, and
 * a flush (the old value was locklessly modifiable, patch 3). Anything else takes the general
 * path.
 */
export function kvm_mmu_write_protect_pt_masked(
  kvm: Kvm,
  slot: number,
  wordIndex: number,
  mask: number,
): boolean {
  const kfd = kfunc_enter(KF.kvm_mmu_write_protect_pt_masked);
  lockdep_assert_held_write(kvm);
  const rmaps = kvm.rmapPool;
  const spt = kvm.spt;
  const h = kvm.slots[SLOT.rmap_base(slot)] + wordIndex * 32;
  // Checked once per word: the per-page path is then the bug-free one.
  const plain = kvm.bug(BUG["plain-clear"]);
  let flush = false;
  let n = 0;
  while (mask !== 0) {
    const hi = h + 31 - Math.clz32(mask & -mask);
    mask &= mask - 1;
    const v = rmaps[hi];
    const sptep = rmap_single_spte(v);
    if (sptep < 0) {
      if (v !== 0 && __rmap_write_protect(kvm, hi)) flush = true;
      continue;
    }
    const s = aread(spt, sptep);
    if (!is_writable_pte(s)) continue;
    if (plain || is_large_pte(s) || !spte_has_volatile_bits(s)) {
      if (spte_write_protect_locked(kvm, sptep) !== 0) flush = true;
      continue;
    }
    // Volatile: xchg, as mmu_spte_update. HOST_W and MMU_W do not change outside mmu_lock, so
    // the value replaced is locklessly modifiable too and a flush is needed.
    axchg(spt, sptep, s & ~PT_WRITABLE_MASK);
    n++;
    flush = true;
  }
  kvm.wpStats.protected += n;
  return kfunc_ret(kfd, flush);
}

/**
 * kvm_mmu_slot_remove_write_access (3.11), mmu_lock held by the caller: all levels; when the
 * lock is contended, flushes and drops it every 1024 heads (cond_resched_lock); flushes at
 * the end under the lock.
 */
export function slot_remove_write_access_locked(kvm: Kvm, slot: number, minLevel = 1): void {
  lockdep_assert_held_write(kvm);
  const base = kvm.slots[SLOT.base_gfn(slot)];
  const npages = kvm.slots[SLOT.npages(slot)];
  for (let level = minLevel; level <= KVM_NR_PAGE_SIZES; level++) {
    const n = slot_level_pages(base, npages, level);
    const h0 = gfn_to_rmap(kvm, slot, base, level);
    for (let i = 0; i < n; i++) {
      if (kvm.rmapPool[h0 + i] !== 0) __rmap_write_protect(kvm, h0 + i);
      // cond_resched_rwlock_write, flushing first.
      if ((i & 1023) === 1023 && kvm.mmu_lock.needbreak()) {
        kvm_flush_remote_tlbs(kvm);
        kvm.mmu_lock.cond_resched_write();
      }
    }
  }
  kvm_flush_remote_tlbs(kvm);
}

export const wp_locked: WriteProtectDesign = {
  name: "locked",
  harvestBegin(kvm: Kvm, times: DirtyLogTimes): void {
    const w0 = kvm.mmu_lock.stats.waitNs;
    kvm.mmu_lock.write_lock();
    times.lockWaitNs += kvm.mmu_lock.stats.waitNs - w0;
  },
  protectMasked: kvm_mmu_write_protect_pt_masked,
  harvestEnd(kvm: Kvm, flush: boolean, times: DirtyLogTimes): void {
    try {
      // 3.11 (6dbf79e): the flush stays under mmu_lock.
      if (flush) timedFlush(kvm, times, kvm_flush_remote_tlbs);
    } finally {
      kvm.mmu_lock.write_unlock();
    }
  },
  slotRemoveWriteAccess(kvm: Kvm, slot: number, minLevel = 1): void {
    kvm.mmu_lock.write_lock();
    try {
      slot_remove_write_access_locked(kvm, slot, minLevel);
    } finally {
      kvm.mmu_lock.write_unlock();
    }
  },
};

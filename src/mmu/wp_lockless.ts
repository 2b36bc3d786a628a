/**
 * The seed's write-protect design (patch 13): no mmu_lock. Protection runs in an RCU read
 * section over the lockless rmap walk (pte_list_walk_lockless) and clears W by cmpxchg on a
 * value that is a writable leaf (patch 12: judged from the value, the page may have been
 * reused at another level). HOST_W and MMU_W stay set, so fast_page_fault can make the page
 * writable again; large sptes become read-only and are dropped by the next write fault. The
 * remote flush comes after the section, outside any lock; slots_lock, held by the caller,
 * serialises these deferred flushers (patch 4).
 */
import { KF, kfunc_enter, kfunc_exit, kfunc_ret } from "../sync/kfunc.js";
import { BUG, Kvm, SLOT } from "../kvm_host.js";
import { aload, acas, aread, astore } from "../sync/atomic.js";
import { gfn_to_rmap, slot_level_pages } from "../mem/memslot.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { pte_list_walk_lockless, rmap_single_spte } from "./rmap.js";
import { is_writable_leaf, KVM_NR_PAGE_SIZES, PT_WRITABLE_MASK } from "./spte.js";
import { DirtyLogTimes, RCU_READER_IOCTL, timedFlush, WriteProtectDesign } from "./write_protect.js";

/**
 * The lockless protector of one spte: cmpxchg W away from a writable leaf. The first read is
 * plain (aread): the cmpxchg validates it, and a failed cmpxchg returns the value to retry
 * with, so each protected spte costs one atomic.
 */
export function spte_write_protect_lockless(kvm: Kvm, sptep: number): void {
  const kfd = kfunc_enter(KF.spte_write_protect);
  const spt = kvm.spt;
  let s = aread(spt, sptep);
  for (;;) {
    if (!is_writable_leaf(s)) return kfunc_exit(kfd);
    if (kvm.bug(BUG["plain-clear"])) {
      // Bug: a plain store of a value computed from an earlier load: it overwrites whatever
      // changed in between, e.g. a zap and a re-fault to another frame.
      astore(spt, sptep, s & ~PT_WRITABLE_MASK);
      kvm.wpStats.protected++;
      return kfunc_exit(kfd);
    }
    const old = acas(spt, sptep, s, s & ~PT_WRITABLE_MASK);
    if (old === s) {
      kvm.wpStats.protected++;
      return kfunc_exit(kfd);
    }
    kvm.wpStats.casRetries++;
    s = old;
  }
  kfunc_exit(kfd);
}

/** The walker callback: the walk passes its kvm (no closure per call, no module state). */
function wpCallback(sptep: number, kvm: Kvm): void {
  spte_write_protect_lockless(kvm, sptep);
}

/** Every spte of rmap head hi, lockless; RCU read section held. */
export function rmap_write_protect_lockless(kvm: Kvm, hi: number): void {
  const kfd = kfunc_enter(KF.rmap_write_protect);
  pte_list_walk_lockless(kvm, kvm.rmapPool, hi, hi, wpCallback);
  kfunc_exit(kfd);
}

/**
 * The level-1 rmaps of the gfns in mask, lockless; RCU read section held. The common TDP case, a
 * single-entry head whose spte is a writable leaf, is inline: one plain read of the head, one of
 * the spte, one cmpxchg. Anything else (a chain, a lost cmpxchg, a bug switch) takes the general
 * path.
 */
export function write_protect_pt_masked_lockless(
  kvm: Kvm,
  slot: number,
  wordIndex: number,
  mask: number,
): boolean {
  const kfd = kfunc_enter(KF.kvm_mmu_write_protect_pt_masked);
  const rmaps = kvm.rmapPool;
  const spt = kvm.spt;
  const h = kvm.slots[SLOT.rmap_base(slot)] + wordIndex * 32;
  // Checked once per word: the per-page path is then the bug-free one.
  const plain = kvm.bug(BUG["plain-clear"]);
  let n = 0;
  while (mask !== 0) {
    const hi = h + 31 - Math.clz32(mask & -mask);
    mask &= mask - 1;
    // Plain read (aread): the bitmap xchg that reported this gfn synchronized with the aor of
    // its F4, so the head is at least as new as the F2 before it (docs/locking.md 3.6).
    const v = aread(rmaps, hi);
    const sptep = rmap_single_spte(v);
    if (sptep < 0) {
      if (v !== 0) rmap_write_protect_lockless(kvm, hi);
      continue;
    }
    const s = aread(spt, sptep);
    if (!is_writable_leaf(s)) continue;
    if (plain) spte_write_protect_lockless(kvm, sptep);
    else if (acas(spt, sptep, s, s & ~PT_WRITABLE_MASK) === s) n++;
    else {
      kvm.wpStats.casRetries++;
      spte_write_protect_lockless(kvm, sptep);
    }
  }
  kvm.wpStats.protected += n;
  // W may have been cleared by a cmpxchg nobody flushed for yet: always flush (patch 4).
  return kfunc_ret(kfd, true);
}

/** kvm_mmu_slot_remove_write_access, lockless (patch 13): RCU read section held by the caller. */
export function slot_remove_write_access_lockless(kvm: Kvm, slot: number, minLevel = 1): void {
  const base = kvm.slots[SLOT.base_gfn(slot)];
  const npages = kvm.slots[SLOT.npages(slot)];
  for (let level = minLevel; level <= KVM_NR_PAGE_SIZES; level++) {
    const n = slot_level_pages(base, npages, level);
    const h0 = gfn_to_rmap(kvm, slot, base, level);
    for (let i = 0; i < n; i++)
      if (aload(kvm.rmapPool, h0 + i) !== 0) rmap_write_protect_lockless(kvm, h0 + i);
  }
}

export const wp_lockless: WriteProtectDesign = {
  name: "lockless",
  harvestBegin(kvm: Kvm): void {
    kvm.rcu.readLock(RCU_READER_IOCTL);
  },
  protectMasked: write_protect_pt_masked_lockless,
  harvestEnd(kvm: Kvm, flush: boolean, times: DirtyLogTimes): void {
    kvm.rcu.readUnlock(RCU_READER_IOCTL);
    // Bug skip-flush: no flush after lockless protection.
    if (flush && !kvm.bug(BUG["skip-flush"])) timedFlush(kvm, times, kvm_flush_remote_tlbs);
  },
  slotRemoveWriteAccess(kvm: Kvm, slot: number, minLevel = 1): void {
    kvm.rcu.readLock(RCU_READER_IOCTL);
    try {
      slot_remove_write_access_lockless(kvm, slot, minLevel);
    } finally {
      kvm.rcu.readUnlock(RCU_READER_IOCTL);
    }
    if (!kvm.bug(BUG["skip-flush"])) kvm_flush_remote_tlbs(kvm);
  },
};

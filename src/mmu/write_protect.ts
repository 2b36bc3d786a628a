/**
 * Write protection for dirty logging, in both designs.
 *
 * locked (Linux 3.11): under mmu_lock, through the locked rmap iterator; large sptes are
 * dropped (3.11 spte_write_protect), W is cleared with mmu_spte_update.
 *
 * lockless (the seed, patch 13): no mmu_lock; the caller is in an RCU read section; the rmap is
 * walked by pte_list_walk_lockless and W is cleared by cmpxchg on a value that is a writable
 * leaf (patch 12: judged from the value, the page may have been reused at another level).
 * HOST_W and MMU_W stay set, so fast_page_fault can make the page writable again; large sptes
 * become read-only and are dropped by the next write fault.
 */
import { BUG, Kvm, SLOT_BASE_GFN, SLOT_NPAGES } from "../kvm_host.js";
import { aload, acas, astore } from "../sync/atomic.js";
import { gfn_to_rmap, slot_level_pages } from "../mem/memslot.js";
import { pte_list_walk_lockless, rmap_get_first } from "./rmap.js";
import { drop_spte } from "./mmu_page.js";
import { mmu_spte_update } from "./spte_ops.js";
import {
  is_large_pte,
  is_writable_leaf,
  is_writable_pte,
  PT_WRITABLE_MASK,
  KVM_NR_PAGE_SIZES,
} from "./spte.js";
import { DESC_MORE, DESC_WORDS, PTE_LIST_EXT } from "../kvm_host.js";

/** Write-protect statistics of this thread. */
export const wpStats = { protected: 0, casRetries: 0, largeDropped: 0 };

/**
 * 3.11 spte_write_protect: returns 1 if the spte was dropped (a large spte), 2 if a flush is
 * needed, 0 otherwise. mmu_lock held.
 */
export function spte_write_protect_locked(kvm: Kvm, sptep: number): number {
  const s = aload(kvm.spt, sptep);
  if (!is_writable_pte(s)) return 0;
  if (is_large_pte(s)) {
    drop_spte(kvm, sptep);
    wpStats.largeDropped++;
    return 1;
  }
  wpStats.protected++;
  return mmu_spte_update(kvm, sptep, s & ~PT_WRITABLE_MASK) ? 2 : 0;
}

/** __rmap_write_protect (3.11): restarts from the head after dropping a large spte. Returns flush. */
export function __rmap_write_protect(kvm: Kvm, hi: number): boolean {
  const heads = kvm.rmapPool;
  const v = heads[hi];
  if (v === 0) return false;
  let flush = false;
  if ((v & 1) === 0) {
    const r = spte_write_protect_locked(kvm, (v >>> 1) - 1);
    return r !== 0;
  }
  // Iterate the chain; a drop changes it, so start again from the first entry.
  for (;;) {
    let restarted = false;
    let d = heads[hi];
    if (d === 0) return flush;
    if ((d & 1) === 0) return spte_write_protect_locked(kvm, (d >>> 1) - 1) !== 0 || flush;
    d >>>= 1;
    outer: for (;;) {
      const b = d * DESC_WORDS;
      for (let i = 0; i < PTE_LIST_EXT; i++) {
        const e = kvm.desc[b + i];
        if (e === 0) continue;
        const r = spte_write_protect_locked(kvm, e - 1);
        if (r !== 0) flush = true;
        if (r === 1) {
          restarted = true;
          break outer;
        }
      }
      const m = kvm.desc[b + DESC_MORE];
      if ((m & 1) === 1 || m === 0) break;
      d = (m >>> 1) - 1;
    }
    if (!restarted) return flush;
  }
}

/** The lockless protector of one spte (wp_lockless): cmpxchg W away from a writable leaf. */
export function spte_write_protect_lockless(kvm: Kvm, sptep: number): void {
  for (;;) {
    const s = aload(kvm.spt, sptep);
    if (!is_writable_leaf(s)) return;
    if (kvm.bug(BUG["plain-clear"])) {
      // Bug: a plain store of a value computed from an earlier load (B5): it overwrites
      // whatever changed in between, e.g. a zap and a re-fault to another frame.
      astore(kvm.spt, sptep, s & ~PT_WRITABLE_MASK);
      wpStats.protected++;
      return;
    }
    if (acas(kvm.spt, sptep, s, s & ~PT_WRITABLE_MASK) === s) {
      wpStats.protected++;
      return;
    }
    wpStats.casRetries++;
  }
}

/** Bound per kvm: the walker callback (allocated once per thread). */
let cbKvm: Kvm | null = null;
function wpCallback(sptep: number): void {
  spte_write_protect_lockless(cbKvm!, sptep);
}

export function rmap_write_protect_lockless(kvm: Kvm, hi: number): void {
  cbKvm = kvm;
  pte_list_walk_lockless(kvm, kvm.rmapPool, hi, hi, wpCallback);
}

/**
 * kvm_mmu_slot_remove_write_access, locked (3.11): mmu_lock held by the caller; flushes and
 * drops the lock when it is contended (cond_resched_lock), flushes at the end under the lock.
 */
export function slot_remove_write_access_locked(kvm: Kvm, r: number, flush: (kvm: Kvm) => void): void {
  const base = kvm.slots[r + SLOT_BASE_GFN];
  const npages = kvm.slots[r + SLOT_NPAGES];
  for (let level = 1; level <= KVM_NR_PAGE_SIZES; level++) {
    const n = slot_level_pages(base, npages, level);
    const h0 = gfn_to_rmap(kvm, r, base, level);
    for (let i = 0; i < n; i++) {
      if (kvm.rmapPool[h0 + i] !== 0) __rmap_write_protect(kvm, h0 + i);
      if ((i & 1023) === 1023 && kvm.mmu_lock.isContended()) {
        flush(kvm);
        kvm.mmu_lock.unlock();
        kvm.mmu_lock.lock();
      }
    }
  }
  flush(kvm);
}

/** kvm_mmu_slot_remove_write_access, lockless (patch 13): RCU read section held by the caller. */
export function slot_remove_write_access_lockless(kvm: Kvm, r: number): void {
  const base = kvm.slots[r + SLOT_BASE_GFN];
  const npages = kvm.slots[r + SLOT_NPAGES];
  for (let level = 1; level <= KVM_NR_PAGE_SIZES; level++) {
    const n = slot_level_pages(base, npages, level);
    const h0 = gfn_to_rmap(kvm, r, base, level);
    for (let i = 0; i < n; i++)
      if (aload(kvm.rmapPool, h0 + i) !== 0) rmap_write_protect_lockless(kvm, h0 + i);
  }
}

export function skipFlushBug(kvm: Kvm): boolean {
  return kvm.bug(BUG["skip-flush"]);
}

export { rmap_get_first };

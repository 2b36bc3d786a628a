/**
 * Dirty logging in the TDP MMU: kvm_tdp_mmu_wrprot_slot (logging starts: read lock),
 * kvm_tdp_mmu_clear_dirty_slot (clear_dirty_gfn_range, logging starts with PML: read lock),
 * kvm_tdp_mmu_clear_dirty_pt_masked (GET_DIRTY_LOG, CLEAR_DIRTY_LOG and the ring reset re-arm
 * the pages they report: write lock) and kvm_tdp_mmu_write_protect_gfn (write lock).
 *
 * With PML (A/D bits) a 4 KiB leaf is re-armed by clearing D: the vCPU sets D again on its next
 * write and logs the gpa in its PML buffer, with no fault. Without PML it is write-protected:
 * W is cleared, MMU-writable kept, so the next write takes fast_page_fault. Huge leaves are
 * always write-protected (a write fault splits them).
 */
import { KF, kfunc_enter, kfunc_exit } from "../../sync/kfunc.js";
import { CTL, Kvm, SLOT } from "../../kvm_host.js";
import { lockdep_assert_held_read, lockdep_assert_held_write } from "../../kvm/lockdep.js";
import { aand, aread, awrite } from "../../sync/atomic.js";
import {
  is_last_spte,
  is_shadow_present_pte,
  PT64_ENT_PER_PAGE,
  PT64_INDEX,
  PT_PAGE_TABLE_LEVEL,
  PT_WRITABLE_MASK,
  SPTE_DIRTY,
  SPTE_MMU_WRITEABLE,
} from "../spte.js";
import { set_page_dirty } from "../../mem/host_memory.js";
import { tdp_iter_in_range, tdp_iter_next, tdp_iter_start } from "./tdp_iter.js";
import type { TdpIter } from "./tdp_iter.js";
import { BUG_TDP } from "./tdp_mmu_bugs.js";
import { tdp_iter_for, tdp_mmu_iter_cond_resched } from "./tdp_mmu_resched.js";
import { tdp_mmu_with_root } from "./tdp_mmu_root_zap.js";
import { tdp_mmu_commit_free } from "./tdp_mmu_free.js";
import { is_invalid_root } from "./tdp_mmu_root.js";
import {
  tdp_mmu_iter_set_spte,
  tdp_mmu_set_spte_atomic,
  tdp_spte_has_volatile_bits,
} from "./tdp_mmu_spte.js";

/**
 * Leaves of [start, end) at levels >= minLevel whose bit `bit` is set lose it by cmpxchg, read
 * lock held (wrprot_gfn_range and clear_dirty_gfn_range). A lost cmpxchg re-checks the value that
 * won: it may have stopped being a present leaf (3354ef5a592d). Returns true if any changed.
 */
function clear_bit_gfn_range(
  kvm: Kvm,
  root: number,
  start: number,
  end: number,
  minLevel: number,
  bit: number,
): boolean {
  const iter = tdp_iter_for(kvm);
  let changed = false;
  const checkPresent = !kvm.bug(BUG_TDP["tdp-clear-dirty-nonpresent"]);
  for (
    tdp_iter_start(kvm, iter, root, minLevel, start);
    tdp_iter_in_range(iter, end);
    tdp_iter_next(kvm, iter)
  ) {
    if (tdp_mmu_iter_cond_resched(kvm, iter, false, true)) continue;
    for (;;) {
      if (checkPresent && (!is_shadow_present_pte(iter.old_spte) || !is_last_spte(iter.old_spte, iter.level)))
        break;
      if ((iter.old_spte & bit) === 0) break;
      if (tdp_mmu_set_spte_atomic(kvm, iter, iter.old_spte & ~bit) === 0) {
        changed = true;
        break;
      }
    }
  }
  return changed;
}

function slot_range(kvm: Kvm, slot: number): [number, number] {
  const base = kvm.slots[SLOT.base_gfn(slot)];
  return [base, base + kvm.slots[SLOT.npages(slot)]];
}

/** kvm_tdp_mmu_wrprot_slot: clears W of the slot's leaves at levels >= minLevel. Returns flush. */
export function kvm_tdp_mmu_wrprot_slot(kvm: Kvm, slot: number, minLevel: number): boolean {
  const kfd = kfunc_enter(KF.kvm_tdp_mmu_wrprot_slot);
  try {
    lockdep_assert_held_read(kvm);
    const [start, end] = slot_range(kvm, slot);
    const r = tdp_mmu_with_root(kvm, true, (root) =>
      clear_bit_gfn_range(kvm, root, start, end, minLevel, PT_WRITABLE_MASK),
    );
    tdp_mmu_commit_free(kvm);
    return r;
  } finally {
    kfunc_exit(kfd);
  }
}

/** kvm_tdp_mmu_clear_dirty_slot: clears D of the slot's 4 KiB leaves. Returns flush. */
export function kvm_tdp_mmu_clear_dirty_slot(kvm: Kvm, slot: number): boolean {
  const kfd = kfunc_enter(KF.kvm_tdp_mmu_clear_dirty_slot);
  try {
    lockdep_assert_held_read(kvm);
    const [start, end] = slot_range(kvm, slot);
    const r = tdp_mmu_with_root(kvm, true, (root) =>
      clear_bit_gfn_range(kvm, root, start, end, PT_PAGE_TABLE_LEVEL, SPTE_DIRTY),
    );
    tdp_mmu_commit_free(kvm);
    return r;
  } finally {
    kfunc_exit(kfd);
  }
}

/**
 * tdp_mmu_clear_spte_bits: a locked clear of `bits` in a leaf; an spte with volatile bits loses
 * them by one atomic and (atomic64_fetch_and: the vCPU may set D, fast_page_fault W, at any
 * moment), else a plain store (WRITE_ONCE: nothing changes it without mmu_lock, and the harvest's
 * flush publishes it before the pages are reported). iter.old_spte becomes the value written.
 */
function tdp_mmu_clear_spte_bits(kvm: Kvm, iter: TdpIter, bits: number): void {
  const old = iter.old_spte;
  if (tdp_spte_has_volatile_bits(kvm, old) && !kvm.bug(BUG_TDP["tdp-plain-write"])) {
    iter.old_spte = aand(kvm.spt, iter.sptep, ~bits) & ~bits;
  } else {
    awrite(kvm.spt, iter.sptep, old & ~bits);
    iter.old_spte = old & ~bits;
  }
}

/**
 * The walk clear_dirty_pt_masked keeps between the masks of one write-locked section (one
 * GET_DIRTY_LOG, CLEAR_DIRTY_LOG or ring reset): `root` is the root it walks, valid only while
 * `iter.valid`. Private to the thread that holds mmu_lock for write; tdp_mmu_harvest_walk_reset
 * drops it when the section starts and after anything that may change a table link.
 */
export interface TdpHarvestWalk {
  iter: TdpIter;
  root: number;
}

export function tdp_mmu_new_harvest_walk(kvm: Kvm): TdpHarvestWalk {
  return { iter: tdp_iter_for(kvm), root: 0 };
}

export function tdp_mmu_harvest_walk_reset(walk: TdpHarvestWalk): void {
  walk.iter.valid = false;
  walk.root = 0;
}

/** A fresh walk per call for callers that keep none (tests, one-off callers). */
let oneShotWalk: TdpHarvestWalk | null = null;

/**
 * Positions walk.iter on the 4 KiB spte of `start`: a walk from the root, or, when the walk
 * already stands in the leaf table that maps `start` at or before it, the entry of that table.
 * The second is what the first would reach: under the write lock no table link changes (every
 * link change needs mmu_lock; the lockless fast_page_fault and the vCPU's D-bit writes change
 * leaf bits only), so the path from the root to that table is the one the walk came down.
 */
function clear_dirty_walk_start(kvm: Kvm, walk: TdpHarvestWalk, root: number, start: number): void {
  const iter = walk.iter;
  if (
    walk.root === root &&
    iter.valid &&
    iter.level === PT_PAGE_TABLE_LEVEL &&
    start >= iter.gfn &&
    start - (iter.gfn - PT64_INDEX(iter.gfn, PT_PAGE_TABLE_LEVEL)) < PT64_ENT_PER_PAGE
  ) {
    iter.sptep += start - iter.gfn;
    iter.gfn = start;
    iter.next_last_level_gfn = start;
    iter.old_spte = aread(kvm.spt, iter.sptep);
    return;
  }
  walk.root = root;
  tdp_iter_start(kvm, iter, root, PT_PAGE_TABLE_LEVEL, start);
}

/**
 * clear_dirty_pt_masked: re-arms the 4 KiB leaves of the gfns in `mask` (bit n = gfn + n): D
 * cleared (`wrprot` false, PML) or W cleared. Write lock held; it never yields. Returns flush.
 *
 * KVM calls it once per 64-bit word of the dirty bitmap (kvm_arch_mmu_enable_log_dirty_pt_masked
 * from kvm_get_dirty_log_protect, kvm_clear_dirty_log_protect, kvm_reset_dirty_gfn), each call a
 * walk from the root (tdp_root_for_each_leaf_pte from gfn + __ffs(mask)) that stops once every
 * bit of the mask is handled. Our bitmap words are 32 bits, so a 512-entry leaf table gets 16
 * calls instead of 8; rather than 16 descents, the caller may pass the walk of its section
 * (`walk`), and a mask that falls in the leaf table the walk stands on continues there
 * (clear_dirty_walk_start says why that is the same spte a walk from the root reaches).
 */
function clear_dirty_pt_masked(
  kvm: Kvm,
  walk: TdpHarvestWalk,
  root: number,
  slot: number,
  gfn: number,
  mask: number,
  wrprot: boolean,
): boolean {
  const bit = wrprot ? PT_WRITABLE_MASK : SPTE_DIRTY;
  // The host page of gfn g is hva0 + g (kvm_set_pfn_dirty without the slot lookup).
  const hva0 = kvm.slots[SLOT.hva_page(slot)] - kvm.slots[SLOT.base_gfn(slot)];
  const end = gfn + 32;
  const checkPresent = !kvm.bug(BUG_TDP["tdp-clear-dirty-nonpresent"]);
  const iter = walk.iter;
  let flush = false;
  for (
    clear_dirty_walk_start(kvm, walk, root, gfn + 31 - Math.clz32(mask & -mask));
    tdp_iter_in_range(iter, end);
    tdp_iter_next(kvm, iter)
  ) {
    if (mask === 0) break;
    if (iter.level > PT_PAGE_TABLE_LEVEL || iter.gfn < gfn) continue;
    // The rest of the word in the leaf table the walk stands on: straight to each bit's spte.
    if (end - (iter.gfn - PT64_INDEX(iter.gfn, PT_PAGE_TABLE_LEVEL)) <= PT64_ENT_PER_PAGE)
      return clear_dirty_leaf_table(kvm, iter, gfn, mask, bit, hva0, checkPresent) || flush;
    const b = 1 << (iter.gfn - gfn);
    if ((mask & b) === 0) continue;
    mask &= ~b;
    if (clear_dirty_leaf(kvm, iter, bit, hva0, checkPresent)) flush = true;
  }
  return flush;
}

/**
 * One leaf of clear_dirty_pt_masked, the iterator standing on it: clears `bit` if the leaf is
 * present and has it, and gives its dirty state to the host page. True if it cleared.
 */
function clear_dirty_leaf(
  kvm: Kvm,
  iter: TdpIter,
  bit: number,
  hva0: number,
  checkPresent: boolean,
): boolean {
  // 3354ef5a592d: only a present leaf has dirty state to clear.
  if (checkPresent && !is_shadow_present_pte(iter.old_spte)) return false;
  // The value the step read: a page in `mask` had its bit set before its bitmap bit, and the
  // bitmap's xchg ordered that before this walk, so the read cannot miss it.
  if ((iter.old_spte & bit) === 0) return false;
  tdp_mmu_clear_spte_bits(kvm, iter, bit);
  // The leaf's dirty state goes to the host page (kvm_set_pfn_dirty).
  set_page_dirty(kvm, hva0 + iter.gfn);
  return true;
}

/**
 * The rest of clear_dirty_pt_masked when every gfn of the word left is in the leaf table the
 * iterator stands on (iter.gfn >= gfn, the bits below it done): the steps between two set bits
 * only skip sptes whose gfn is not in `mask`, so the loop moves the iterator straight to each
 * set bit's entry (index arithmetic within the table, no walk). It stops on the last one, where
 * the section's next word continues (clear_dirty_walk_start). Returns flush.
 */
function clear_dirty_leaf_table(
  kvm: Kvm,
  iter: TdpIter,
  gfn: number,
  mask: number,
  bit: number,
  hva0: number,
  checkPresent: boolean,
): boolean {
  const sptep0 = iter.sptep - (iter.gfn - gfn);
  let flush = false;
  mask &= -1 << (iter.gfn - gfn);
  while (mask !== 0) {
    const n = 31 - Math.clz32(mask & -mask);
    mask &= mask - 1;
    iter.sptep = sptep0 + n;
    iter.gfn = gfn + n;
    iter.next_last_level_gfn = iter.gfn;
    iter.old_spte = aread(kvm.spt, iter.sptep);
    if (clear_dirty_leaf(kvm, iter, bit, hva0, checkPresent)) flush = true;
  }
  return flush;
}

/**
 * kvm_tdp_mmu_clear_dirty_pt_masked: clear_dirty_pt_masked on the VM's valid root
 * (for_each_valid_tdp_mmu_root: under the write lock no root can go, so no reference is taken).
 * `walk`: the section's kept walk (above); without one the walk starts from the root.
 */
export function kvm_tdp_mmu_clear_dirty_pt_masked(
  kvm: Kvm,
  slot: number,
  gfn: number,
  mask: number,
  wrprot: boolean,
  walk?: TdpHarvestWalk,
): boolean {
  lockdep_assert_held_write(kvm);
  if (mask === 0) return false;
  const root = kvm.ctl[CTL.root];
  if (root === 0 || is_invalid_root(kvm, root)) return false;
  if (walk === undefined) {
    oneShotWalk ??= tdp_mmu_new_harvest_walk(kvm);
    walk = oneShotWalk;
    walk.iter.skipAfterRestart = kvm.bug(BUG_TDP["tdp-iter-skip"]);
    tdp_mmu_harvest_walk_reset(walk);
  }
  return clear_dirty_pt_masked(kvm, walk, root, slot, gfn, mask, wrprot);
}

/**
 * kvm_mmu_slot_gfn_write_protect at levels >= minLevel over gfns [start, end]: the huge leaves
 * covering a CLEAR range lose W (the rest of the huge page is reported dirty). Write lock held.
 */
export function kvm_tdp_mmu_write_protect_gfn_range(
  kvm: Kvm,
  start: number,
  end: number,
  minLevel: number,
): boolean {
  const kfd = kfunc_enter(KF.kvm_tdp_mmu_write_protect_gfn_range);
  try {
    lockdep_assert_held_write(kvm);
    return tdp_mmu_with_root(kvm, false, (root) => {
      const iter = tdp_iter_for(kvm);
      let changed = false;
      for (
        tdp_iter_start(kvm, iter, root, minLevel, start);
        tdp_iter_in_range(iter, end + 1);
        tdp_iter_next(kvm, iter)
      ) {
        if (!is_shadow_present_pte(iter.old_spte) || !is_last_spte(iter.old_spte, iter.level)) continue;
        if ((iter.old_spte & PT_WRITABLE_MASK) === 0) continue;
        tdp_mmu_iter_set_spte(kvm, iter, iter.old_spte & ~PT_WRITABLE_MASK);
        changed = true;
      }
      return changed;
    });
  } finally {
    kfunc_exit(kfd);
  }
}

/**
 * kvm_tdp_mmu_write_protect_gfn: no leaf of gfn at levels >= minLevel stays writable or
 * MMU-writable (fast_page_fault must not restore W: the page is tracked). Write lock held.
 * Returns true if it changed an spte.
 */
export function kvm_tdp_mmu_write_protect_gfn(kvm: Kvm, gfn: number, minLevel: number): boolean {
  lockdep_assert_held_write(kvm);
  const r = tdp_mmu_with_root(kvm, false, (root) => {
    const iter = tdp_iter_for(kvm);
    let changed = false;
    for (
      tdp_iter_start(kvm, iter, root, minLevel, gfn);
      tdp_iter_in_range(iter, gfn + 1);
      tdp_iter_next(kvm, iter)
    ) {
      if (!is_shadow_present_pte(iter.old_spte) || !is_last_spte(iter.old_spte, iter.level)) continue;
      // Bug 7c8a4742c4ab: "already write-protected" judged by W alone, MMU-writable left set.
      if (kvm.bug(BUG_TDP["tdp-wrprot-early-break"]) && (iter.old_spte & PT_WRITABLE_MASK) === 0) break;
      const n = iter.old_spte & ~(PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE);
      if (n === iter.old_spte) continue;
      tdp_mmu_iter_set_spte(kvm, iter, n);
      changed = true;
    }
    return changed;
  });
  tdp_mmu_commit_free(kvm);
  return r;
}

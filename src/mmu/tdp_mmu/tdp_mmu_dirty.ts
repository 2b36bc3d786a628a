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
import { Kvm, lockdep_assert_held_read, lockdep_assert_held_write, SLOT } from "../../kvm_host.js";
import { acas, aload, astore } from "../../sync/atomic.js";
import {
  is_last_spte,
  is_shadow_present_pte,
  PT_PAGE_TABLE_LEVEL,
  PT_WRITABLE_MASK,
  spte_has_volatile_bits,
  SPTE_DIRTY,
  SPTE_MMU_WRITEABLE,
} from "../spte.js";
import { tdp_iter_in_range, tdp_iter_next, tdp_iter_start } from "./tdp_iter.js";
import type { TdpIter } from "./tdp_iter.js";
import { BUG_TDP } from "./tdp_mmu_bugs.js";
import { tdp_iter_for, tdp_mmu_iter_cond_resched, tdp_mmu_with_root } from "./tdp_mmu_resched.js";
import { tdp_mmu_commit_free } from "./tdp_mmu_free.js";
import { tdp_mmu_iter_set_spte, tdp_mmu_set_spte_atomic } from "./tdp_mmu_spte.js";

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
  lockdep_assert_held_read(kvm);
  const [start, end] = slot_range(kvm, slot);
  const r = tdp_mmu_with_root(kvm, true, (root) =>
    clear_bit_gfn_range(kvm, root, start, end, minLevel, PT_WRITABLE_MASK),
  );
  tdp_mmu_commit_free(kvm);
  return r;
}

/** kvm_tdp_mmu_clear_dirty_slot: clears D of the slot's 4 KiB leaves. Returns flush. */
export function kvm_tdp_mmu_clear_dirty_slot(kvm: Kvm, slot: number): boolean {
  lockdep_assert_held_read(kvm);
  const [start, end] = slot_range(kvm, slot);
  const r = tdp_mmu_with_root(kvm, true, (root) =>
    clear_bit_gfn_range(kvm, root, start, end, PT_PAGE_TABLE_LEVEL, SPTE_DIRTY),
  );
  tdp_mmu_commit_free(kvm);
  return r;
}

/**
 * tdp_mmu_clear_spte_bits: a locked clear of `bits` in a leaf; an spte with volatile bits loses
 * them by cmpxchg (the vCPU may set D, fast_page_fault W, at any moment), else a plain store.
 */
function tdp_mmu_clear_spte_bits(kvm: Kvm, iter: TdpIter, bits: number): void {
  let old = iter.old_spte;
  if (spte_has_volatile_bits(old) && !kvm.bug(BUG_TDP["tdp-plain-write"])) {
    for (;;) {
      const got = acas(kvm.spt, iter.sptep, old, old & ~bits);
      if (got === old) break;
      old = got;
    }
  } else {
    astore(kvm.spt, iter.sptep, old & ~bits);
  }
  iter.old_spte = old & ~bits;
}

/**
 * kvm_tdp_mmu_clear_dirty_pt_masked: re-arms the 4 KiB leaves of the gfns in `mask` (bit n =
 * gfn + n): D cleared (`wrprot` false, PML) or W cleared. Write lock held. Returns flush.
 */
export function kvm_tdp_mmu_clear_dirty_pt_masked(
  kvm: Kvm,
  slot: number,
  gfn: number,
  mask: number,
  wrprot: boolean,
): boolean {
  lockdep_assert_held_write(kvm);
  if (mask === 0) return false;
  const bit = wrprot ? PT_WRITABLE_MASK : SPTE_DIRTY;
  const first = gfn + 31 - Math.clz32(mask & -mask);
  const end = gfn + 32 - Math.clz32(mask);
  void slot;
  return tdp_mmu_with_root(kvm, false, (root) => {
    const iter = tdp_iter_for(kvm);
    let flush = false;
    for (
      tdp_iter_start(kvm, iter, root, PT_PAGE_TABLE_LEVEL, first);
      tdp_iter_in_range(iter, end);
      tdp_iter_next(kvm, iter)
    ) {
      if (iter.level > PT_PAGE_TABLE_LEVEL || iter.gfn < gfn) continue;
      const b = 1 << (iter.gfn - gfn);
      if ((mask & b) === 0) continue;
      // 3354ef5a592d: only a present leaf has dirty state to clear.
      if (!is_shadow_present_pte(iter.old_spte) && !kvm.bug(BUG_TDP["tdp-clear-dirty-nonpresent"])) continue;
      iter.old_spte = aload(kvm.spt, iter.sptep);
      if ((iter.old_spte & bit) === 0) continue;
      tdp_mmu_clear_spte_bits(kvm, iter, bit);
      flush = true;
    }
    return flush;
  });
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

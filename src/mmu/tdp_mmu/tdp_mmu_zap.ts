/**
 * TDP MMU zaps: tdp_mmu_zap_leafs for the MMU notifier (write lock), tdp_mmu_zap_spte_atomic
 * (read lock: freeze, flush, clear) and the recovery of huge pages when dirty logging stops
 * (kvm_tdp_mmu_zap_collapsible_sptes, read lock).
 */
import { KF, kfunc_enter, kfunc_exit } from "../../sync/kfunc.js";
import { Kvm, SLOT } from "../../kvm_host.js";
import { lockdep_assert_held_read, lockdep_assert_held_write } from "../../kvm/lockdep.js";
import { astore } from "../../sync/atomic.js";
import { kvm_flush_remote_tlbs } from "../../kvm/requests.js";
import { gfn_to_hva_page, lpage_info_index } from "../../mem/memslot.js";
import { hva_is_huge } from "../../mem/host_memory.js";
import { kvm_handle_hva_range } from "../mmu_notifier.js";
import { is_last_spte, is_shadow_present_pte, PT_DIRECTORY_LEVEL, PT_PAGE_TABLE_LEVEL } from "../spte.js";
import { tdp_iter_in_range, tdp_iter_next, tdp_iter_start } from "./tdp_iter.js";
import type { TdpIter } from "./tdp_iter.js";
import { tdp_mmu_commit_free } from "./tdp_mmu_free.js";
import { tdp_iter_for, tdp_mmu_iter_cond_resched } from "./tdp_mmu_resched.js";
import { tdp_mmu_with_root } from "./tdp_mmu_root_zap.js";
import {
  EBUSY,
  FROZEN_SPTE,
  handle_changed_spte,
  tdp_mmu_iter_set_spte,
  tdp_mmu_set_spte_atomic,
} from "./tdp_mmu_spte.js";

/**
 * tdp_mmu_zap_leafs: clears every leaf of root in [start, end) under the write lock, yielding
 * (flush first) when someone waits. Returns true if a flush is still owed.
 */
export function tdp_mmu_zap_leafs(
  kvm: Kvm,
  root: number,
  start: number,
  end: number,
  canYield: boolean,
  flush: boolean,
): boolean {
  const kfd = kfunc_enter(KF.tdp_mmu_zap_leafs);
  try {
    lockdep_assert_held_write(kvm);
    const iter = tdp_iter_for(kvm);
    for (
      tdp_iter_start(kvm, iter, root, PT_PAGE_TABLE_LEVEL, start);
      tdp_iter_in_range(iter, end);
      tdp_iter_next(kvm, iter)
    ) {
      if (canYield && tdp_mmu_iter_cond_resched(kvm, iter, flush, false)) {
        flush = false;
        continue;
      }
      if (!is_shadow_present_pte(iter.old_spte) || !is_last_spte(iter.old_spte, iter.level)) continue;
      tdp_mmu_iter_set_spte(kvm, iter, 0);
      flush = true;
    }
    return flush;
  } finally {
    kfunc_exit(kfd);
  }
}

/** tdp_mmu_zap_leafs of [gfnStart, gfnEnd) in every root: a kvm_handle_hva_range handler. */
function kvm_tdp_mmu_unmap_gfn_range(
  kvm: Kvm,
  _slot: number,
  gfnStart: number,
  gfnEnd: number,
  flush: boolean,
): boolean {
  const zapped = tdp_mmu_with_root(kvm, false, (root: number): boolean =>
    tdp_mmu_zap_leafs(kvm, root, gfnStart, gfnEnd, true, flush),
  );
  return zapped || flush;
}

/**
 * kvm_tdp_mmu_unmap_gfn_range as the zap_gfn_range op: the gfns of host pages [hvaStart, hvaEnd)
 * in every slot. Runs inside invalidate_range_start's write-locked section. Returns flush.
 */
export function kvm_tdp_mmu_unmap_hva_range(kvm: Kvm, hvaStart: number, hvaEnd: number): boolean {
  lockdep_assert_held_write(kvm);
  const flush = kvm_handle_hva_range(kvm, hvaStart, hvaEnd, kvm_tdp_mmu_unmap_gfn_range);
  tdp_mmu_commit_free(kvm);
  return flush;
}

/**
 * tdp_mmu_zap_spte_atomic: under the read lock, freezes the spte (so nobody installs anything
 * there while vCPUs may still use it), flushes, then clears it. 0 or EBUSY.
 */
export function tdp_mmu_zap_spte_atomic(kvm: Kvm, iter: TdpIter): number {
  lockdep_assert_held_read(kvm);
  const r = tdp_mmu_set_spte_atomic(kvm, iter, FROZEN_SPTE);
  if (r !== 0) return r;
  kvm_flush_remote_tlbs(kvm);
  astore(kvm.spt, iter.sptep, 0);
  // The frozen -> 0 step has no bookkeeping of its own; old -> FROZEN did it.
  handle_changed_spte(kvm, iter.gfn, FROZEN_SPTE, 0, iter.level, true);
  iter.old_spte = 0;
  return 0;
}

/**
 * kvm_tdp_mmu_zap_collapsible_sptes: dirty logging stopped on `slot`; every level-2 table whose
 * 2 MiB range the host backs with a huge page is zapped, so the next fault maps it huge again.
 * Read lock held.
 */
export function kvm_tdp_mmu_zap_collapsible_sptes(kvm: Kvm, slot: number): void {
  lockdep_assert_held_read(kvm);
  const base = kvm.slots[SLOT.base_gfn(slot)];
  const end = base + kvm.slots[SLOT.npages(slot)];
  tdp_mmu_with_root(kvm, true, (root) => {
    const iter = tdp_iter_for(kvm);
    for (
      tdp_iter_start(kvm, iter, root, PT_DIRECTORY_LEVEL, base);
      tdp_iter_in_range(iter, end);
      tdp_iter_next(kvm, iter)
    ) {
      if (tdp_mmu_iter_cond_resched(kvm, iter, false, true)) continue;
      for (;;) {
        if (iter.level !== PT_DIRECTORY_LEVEL || !is_shadow_present_pte(iter.old_spte)) break;
        if (is_last_spte(iter.old_spte, iter.level)) break;
        if (iter.gfn < base || iter.gfn + 512 > end) break;
        if (!hva_is_huge(kvm, gfn_to_hva_page(kvm, slot, iter.gfn))) break;
        if (kvm.lpagePool[lpage_info_index(kvm, slot, iter.gfn, PT_DIRECTORY_LEVEL)] !== 0) break;
        if (tdp_mmu_zap_spte_atomic(kvm, iter) !== EBUSY) break;
        // Lost a cmpxchg: look again at the value that won.
      }
    }
    return false;
  });
  tdp_mmu_commit_free(kvm);
}

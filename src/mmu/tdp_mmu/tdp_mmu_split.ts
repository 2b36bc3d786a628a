/**
 * Eager page splitting (kvm_tdp_mmu_try_split_huge_pages): when dirty logging starts, every huge
 * leaf of the slot is split into 512 4 KiB leaves at once, under the read lock, so the first
 * pass of the guest's writes does not fault once per huge page and then once per 4 KiB page. No
 * flush: the translation is the same. With KVM_DIRTY_LOG_INITIALLY_SET nothing is protected at
 * enable time, and the split moves to CLEAR_DIRTY_LOG, under the write lock, range by range.
 *
 * Tables come from the pool, which is under the write lock: outside a vCPU the split drops the
 * read lock to take a batch (KVM drops it to allocate with GFP_KERNEL), then restarts its walk
 * from the root, as after any yield.
 */
import { Kvm } from "../../kvm_host.js";
import { lockdep_assert_held, lockdep_assert_held_read } from "../../kvm/lockdep.js";
import { SLOT } from "../../kvm_host.js";
import { sp_pool_pop, sp_pool_push } from "../mmu_page.js";
import { is_large_pte, is_shadow_present_pte, PT_DIRECTORY_LEVEL } from "../spte.js";
import { tdp_iter_in_range, tdp_iter_next, tdp_iter_start } from "./tdp_iter.js";
import { tdp_mmu_split_huge_page } from "./tdp_mmu_fault.js";
import { tdp_mmu_alloc_sp, tdp_mmu_commit_free, tdp_mmu_unalloc_sp } from "./tdp_mmu_free.js";
import { tdp_iter_for, tdp_mmu_iter_cond_resched } from "./tdp_mmu_resched.js";
import { tdp_mmu_with_root } from "./tdp_mmu_root_zap.js";
import { tdp_mmu_state } from "./tdp_mmu_state.js";

/** Pages taken from the pool per trip for the write lock. */
const SPLIT_BATCH = 64;

/** Takes up to SPLIT_BATCH pages from the pool into this thread's stash. Write lock held. */
function stash_fill(kvm: Kvm): void {
  const st = tdp_mmu_state(kvm);
  while (st.stash.length < SPLIT_BATCH) {
    const sp = sp_pool_pop(kvm);
    if (sp < 0) break;
    st.stash.push(sp);
  }
}

/** Gives the stash back to the pool. Write lock held. */
function stash_drain(kvm: Kvm): void {
  const st = tdp_mmu_state(kvm);
  while (st.stash.length > 0) sp_pool_push(kvm, st.stash.pop()!);
}

/**
 * tdp_mmu_split_huge_pages_root: splits the huge leaves of root in [start, end). `shared`: the
 * read lock is held (cmpxchg, the lock dropped for pages); else the write lock (pages straight
 * from the pool). Returns the pages split; stops early when the pool is empty.
 */
function tdp_mmu_split_huge_pages_root(
  kvm: Kvm,
  root: number,
  start: number,
  end: number,
  shared: boolean,
): number {
  const iter = tdp_iter_for(kvm);
  const st = tdp_mmu_state(kvm);
  let n = 0;
  for (
    tdp_iter_start(kvm, iter, root, PT_DIRECTORY_LEVEL, start);
    tdp_iter_in_range(iter, end);
    tdp_iter_next(kvm, iter)
  ) {
    if (tdp_mmu_iter_cond_resched(kvm, iter, false, shared)) continue;
    if (!is_shadow_present_pte(iter.old_spte) || !is_large_pte(iter.old_spte)) continue;
    let sp = tdp_mmu_alloc_sp(kvm, -1, iter.gfn, iter.level - 1);
    if (sp < 0) {
      if (shared) {
        kvm.mmu_lock.read_unlock();
        kvm.mmu_lock.write_lock();
        stash_fill(kvm);
        kvm.mmu_lock.write_unlock();
        kvm.mmu_lock.read_lock();
        // The lock was dropped: restart from the root, as after a yield.
        iter.yielded = true;
        if (st.stash.length === 0) break;
        continue;
      }
      stash_fill(kvm);
      sp = tdp_mmu_alloc_sp(kvm, -1, iter.gfn, iter.level - 1);
      if (sp < 0) break;
    }
    if (tdp_mmu_split_huge_page(kvm, iter, sp, shared) === 0) n++;
    else tdp_mmu_unalloc_sp(kvm, -1, sp);
  }
  return n;
}

/**
 * kvm_tdp_mmu_try_split_huge_pages over [start, end) of the VM's root. mmu_lock held in the
 * mode `shared` says. Returns the pages split.
 */
export function kvm_tdp_mmu_try_split_huge_pages(
  kvm: Kvm,
  start: number,
  end: number,
  shared: boolean,
): number {
  lockdep_assert_held(kvm);
  let n = 0;
  tdp_mmu_with_root(kvm, shared, (root) => {
    n = tdp_mmu_split_huge_pages_root(kvm, root, start, end, shared);
    return false;
  });
  tdp_mmu_commit_free(kvm);
  return n;
}

/** Eager splitting is on for this VM (KvmConfig.eager_page_split, default on). */
export function eager_page_split(kvm: Kvm): boolean {
  return kvm.shared.config.eager_page_split !== false;
}

/**
 * The split_huge_pages op (kvm_mmu_slot_try_split_huge_pages): logging starts on `slot`. Takes
 * the read lock; pages left in the stash go back to the pool under the write lock.
 */
export function kvm_tdp_mmu_split_slot(kvm: Kvm, slot: number): void {
  if (!eager_page_split(kvm)) return;
  const start = kvm.slots[SLOT.base_gfn(slot)];
  const end = start + kvm.slots[SLOT.npages(slot)];
  kvm.mmu_lock.read_lock();
  try {
    lockdep_assert_held_read(kvm);
    kvm_tdp_mmu_try_split_huge_pages(kvm, start, end, true);
  } finally {
    kvm.mmu_lock.read_unlock();
  }
  if (tdp_mmu_state(kvm).stash.length === 0) return;
  kvm.mmu_lock.write_lock();
  try {
    stash_drain(kvm);
  } finally {
    kvm.mmu_lock.write_unlock();
  }
}

/**
 * CLEAR_DIRTY_LOG with INITIALLY_SET (kvm_arch_mmu_enable_log_dirty_pt_masked): the huge pages
 * that cover gfns [start, end] are split before their 4 KiB pages are re-armed. Write lock held.
 */
export function kvm_tdp_mmu_split_for_clear(kvm: Kvm, start: number, end: number): void {
  if (!eager_page_split(kvm)) return;
  kvm_tdp_mmu_try_split_huge_pages(kvm, start, end + 1, false);
  stash_drain(kvm);
}

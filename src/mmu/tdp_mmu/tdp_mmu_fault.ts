/**
 * TDP MMU page faults: the page_fault op (direct_page_fault's shape: fast path, pfn lookup,
 * then kvm_tdp_mmu_map under mmu_lock held for READ), kvm_tdp_mmu_map and its target-level
 * step (tdp_mmu_map_handle_target_level), linking a new table (tdp_mmu_link_sp) and splitting a
 * huge page on the way down (tdp_mmu_split_huge_page).
 *
 * Many vCPUs fault at once: every spte change is a cmpxchg from the value the walk read; a lost
 * one, or a frozen spte, ends the fault with RET_PF_RETRY (the vCPU retries the access and
 * faults again if it must). A fault never waits for another under the lock.
 */
import { KF, kfunc_enter, kfunc_exit } from "../../sync/kfunc.js";
import { CTL, Kvm, KVM_PAGES_PER_HPAGE } from "../../kvm_host.js";
import { lockdep_assert_held_read, lockdep_assert_held_write } from "../../kvm/lockdep.js";
import { aload, spinPoint } from "../../sync/atomic.js";
import { mark_page_dirty_in_slot } from "../../mem/memslot.js";
import { mmu_notifier_retry } from "../mmu_notifier.js";
import { direct_page_fault_prepare, kvm_mmu_hugepage_adjust } from "../faultin.js";
import type { KvmPageFault } from "../mmu.js";
import { RET_PF_RETRY } from "../kvm_mmu.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  make_link_spte,
  PT_PAGE_SIZE_MASK,
  PT_PAGE_TABLE_LEVEL,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  SPTE_DIRTY,
  SPTE_HOST_WRITEABLE,
  SPTE_MMU_WRITEABLE,
  SPTE_PFN_SHIFT,
  spte_to_pfn,
} from "../spte.js";
import { TdpIter, tdp_iter_in_range, tdp_iter_next, tdp_iter_start } from "./tdp_iter.js";
import { BUG_TDP } from "./tdp_mmu_bugs.js";
import { tdp_mmu_alloc_sp, tdp_mmu_commit_free, tdp_mmu_unalloc_sp } from "./tdp_mmu_free.js";
import { is_invalid_root, kvm_tdp_mmu_get_vcpu_root_hpa } from "./tdp_mmu_root.js";
import { EBUSY, is_frozen_spte, tdp_mmu_iter_set_spte, tdp_mmu_set_spte_atomic } from "./tdp_mmu_spte.js";
import { tdp_iter_for } from "./tdp_mmu_resched.js";
import { tdp_mmu_state } from "./tdp_mmu_state.js";
import {
  trace_kvm_mmu_set_spte,
  trace_kvm_mmu_split_huge_page,
  trace_kvm_mmu_spte_requested,
} from "../mmutrace.js";

/** The fault iterator of this thread (one vCPU per thread: no allocation per fault). */
const faultIters = new WeakMap<Kvm, TdpIter>();

function fault_iter(kvm: Kvm): TdpIter {
  let it = faultIters.get(kvm);
  if (it === undefined) {
    it = tdp_iter_for(kvm);
    faultIters.set(kvm, it);
  }
  return it;
}

/**
 * make_spte for a TDP leaf mapping `pfn` at `level`: writable when the host allows (ACC_ALL),
 * with D set on a writable spte (KVM sets the dirty bit with W: the fault itself marks the page
 * dirty), so only a later D-clear makes the vCPU log the page again.
 */
export function tdp_make_spte(pfn: number, level: number, writable: boolean): number {
  let s = PT_PRESENT_MASK | PT_USER_MASK | (pfn << SPTE_PFN_SHIFT);
  if (level > PT_PAGE_TABLE_LEVEL) s |= PT_PAGE_SIZE_MASK;
  if (writable) s |= SPTE_HOST_WRITEABLE | PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE | SPTE_DIRTY;
  return s;
}

/**
 * make_huge_page_split_spte: child `index` of huge spte `huge` at level `level + 1`: the same
 * bits, the frame advanced, large only above level 1. The translation is unchanged.
 */
export function make_huge_page_split_spte(huge: number, childLevel: number, index: number): number {
  const pfn = spte_to_pfn(huge) + index * KVM_PAGES_PER_HPAGE(childLevel);
  let s = (huge & ((1 << SPTE_PFN_SHIFT) - 1) & ~PT_PAGE_SIZE_MASK) | (pfn << SPTE_PFN_SHIFT);
  if (childLevel > PT_PAGE_TABLE_LEVEL) s |= PT_PAGE_SIZE_MASK;
  return s;
}

/**
 * tdp_mmu_link_sp: links table sp at the iterator: a cmpxchg under the read lock (`shared`, 0 or
 * EBUSY), a store under the write lock (0).
 */
export function tdp_mmu_link_sp(kvm: Kvm, iter: TdpIter, sp: number, shared = true): number {
  if (shared) return tdp_mmu_set_spte_atomic(kvm, iter, make_link_spte(sp));
  tdp_mmu_iter_set_spte(kvm, iter, make_link_spte(sp));
  return 0;
}

/**
 * tdp_mmu_split_huge_page: fills table sp with the 512 pieces of the huge spte at the iterator,
 * then links it in its place (cmpxchg). No flush: the translation is the same. 0 or EBUSY.
 */
export function tdp_mmu_split_huge_page(kvm: Kvm, iter: TdpIter, sp: number, shared = true): number {
  const kfd = kfunc_enter(KF.tdp_mmu_split_huge_page);
  try {
    const huge = iter.old_spte;
    const base = sp * PT64_ENT_PER_PAGE;
    for (let i = 0; i < PT64_ENT_PER_PAGE; i++)
      kvm.spt[base + i] = make_huge_page_split_spte(huge, iter.level - 1, i);
    const r = tdp_mmu_link_sp(kvm, iter, sp, shared);
    if (r === 0) tdp_mmu_state(kvm).splits++;
    if (kvm.trace.on) trace_kvm_mmu_split_huge_page(kvm, iter.gfn, huge, iter.level, r === 0 ? 0 : -r);
    return r;
  } finally {
    kfunc_exit(kfd);
  }
}

/** tdp_mmu_map_handle_target_level: installs the leaf. RET_PF_RETRY either way (the vCPU retries). */
function tdp_mmu_map_handle_target_level(kvm: Kvm, fault: KvmPageFault, iter: TdpIter): number {
  const off = fault.gfn & (KVM_PAGES_PER_HPAGE(iter.level) - 1);
  const newSpte = tdp_make_spte(fault.pfn - off, iter.level, fault.map_writable);
  if (iter.old_spte === newSpte) return RET_PF_RETRY; // RET_PF_SPURIOUS: another vCPU mapped it
  if (tdp_mmu_set_spte_atomic(kvm, iter, newSpte) !== 0) return RET_PF_RETRY;
  if (kvm.trace.on) trace_kvm_mmu_set_spte(kvm, iter.level, iter.gfn, iter.sptep);
  // As mmu_set_spte's F4: the spte is writable before the page is logged dirty.
  if ((newSpte & PT_WRITABLE_MASK) !== 0) mark_page_dirty_in_slot(kvm, fault.slot, fault.gfn - off);
  return RET_PF_RETRY;
}

/** kvm_tdp_mmu_map: walks to fault.goal_level building what is missing. Read lock held. */
export function kvm_tdp_mmu_map(kvm: Kvm, fault: KvmPageFault): number {
  const kfd = kfunc_enter(KF.kvm_tdp_mmu_map);
  try {
    lockdep_assert_held_read(kvm);
    const root = aload(kvm.ctl, CTL.root);
    if (root === 0 || is_invalid_root(kvm, root)) return RET_PF_RETRY;
    const iter = fault_iter(kvm);
    const gfn = fault.gfn;
    if (kvm.trace.on) trace_kvm_mmu_spte_requested(kvm, fault);
    try {
      for (
        tdp_iter_start(kvm, iter, root, PT_PAGE_TABLE_LEVEL, gfn);
        tdp_iter_in_range(iter, gfn + 1);
        tdp_iter_next(kvm, iter)
      ) {
        if (iter.level === fault.goal_level) return tdp_mmu_map_handle_target_level(kvm, fault, iter);
        if (is_frozen_spte(iter.old_spte)) return RET_PF_RETRY;
        const present = is_shadow_present_pte(iter.old_spte);
        if (present && !is_last_spte(iter.old_spte, iter.level)) continue;
        // A table is needed here: a new one, or the pieces of a huge page (dirty logging's 4 KiB).
        const sp = tdp_mmu_alloc_sp(kvm, fault.vcpuId, iter.gfn, iter.level - 1);
        if (sp < 0) return RET_PF_RETRY;
        const r =
          present && is_large_pte(iter.old_spte)
            ? tdp_mmu_split_huge_page(kvm, iter, sp)
            : tdp_mmu_link_sp(kvm, iter, sp);
        if (r === EBUSY) {
          tdp_mmu_unalloc_sp(kvm, fault.vcpuId, sp);
          return RET_PF_RETRY;
        }
      }
      return RET_PF_RETRY;
    } finally {
      tdp_mmu_commit_free(kvm);
    }
  } finally {
    kfunc_exit(kfd);
  }
}

/** make_mmu_pages_available: reclaims shadow pages; a write-lock-only helper. */
function make_mmu_pages_available(kvm: Kvm): void {
  lockdep_assert_held_write(kvm);
}

/**
 * The TDP MMU's page_fault op (kvm_tdp_page_fault -> direct_page_fault): returns RET_PF_RETRY.
 * Throws KvmError(EFAULT) for a gfn outside every memslot or a write to read-only memory.
 */
export function kvm_tdp_mmu_page_fault(kvm: Kvm, fault: KvmPageFault): number {
  if (!direct_page_fault_prepare(kvm, fault)) return RET_PF_RETRY;
  // kvm_mmu_load: the root is made under the write lock, once.
  if (aload(kvm.ctl, CTL.root) === 0) {
    kvm.mmu_lock.write_lock();
    try {
      kvm_tdp_mmu_get_vcpu_root_hpa(kvm, fault.vcpuId);
    } finally {
      kvm.mmu_lock.write_unlock();
    }
  }
  kvm.mmu_lock.read_lock();
  try {
    fault.stats.slow++;
    // Bug 47b0c2e4c220: a write-lock-only helper called under the read lock.
    if (kvm.bug(BUG_TDP["tdp-wrong-lock"])) make_mmu_pages_available(kvm);
    if (mmu_notifier_retry(kvm, fault.mmu_seq)) {
      fault.stats.retries++;
      spinPoint(kvm.ctl, CTL.notifier_count);
      return RET_PF_RETRY;
    }
    // Slot flags change under the write lock: stable while the read lock is held.
    kvm_mmu_hugepage_adjust(kvm, fault);
    return kvm_tdp_mmu_map(kvm, fault);
  } finally {
    kvm.mmu_lock.read_unlock();
  }
}

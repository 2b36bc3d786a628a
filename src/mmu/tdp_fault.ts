/**
 * TDP page faults: tdp_page_fault, its lockless fast path (fast_page_fault, mmu.ts) and its slow
 * path under mmu_lock held for write (__direct_map, then mmu_set_spte in mmu.ts).
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import { BUG, CTL, Kvm } from "../kvm_host.js";
import { lockdep_assert_held_write } from "../kvm/lockdep.js";
import { spinPoint } from "../sync/atomic.js";
import { drop_large_spte, kvm_mmu_get_page, link_shadow_page, mmu_alloc_roots } from "./mmu_page.js";
import { mmu_notifier_retry } from "./mmu_notifier.js";
import { direct_page_fault_prepare, kvm_mmu_hugepage_adjust } from "./faultin.js";
import { KvmPageFault, mmu_set_spte, shadow_walk_init, shadow_walk_next, shadow_walk_okay } from "./mmu.js";
import { RET_PF_RETRY } from "./kvm_mmu.js";
import { is_shadow_present_pte, KVM_PAGES_PER_HPAGE_MASK } from "./spte.js";
import { ACC_ALL } from "./guest_pt.js";
import { trace_kvm_mmu_spte_requested } from "./mmutrace.js";

/**
 * tdp_page_fault (kvm_mmu->page_fault in TDP mode): returns RET_PF_RETRY: the vCPU retries the
 * access. The vCPU is outside guest mode (mode OUTSIDE) for the whole call. Throws
 * KvmError(EFAULT) for a gfn outside every memslot.
 */
export function tdp_page_fault(kvm: Kvm, fault: KvmPageFault): number {
  const kfd = kfunc_enter(KF.kvm_tdp_page_fault);
  try {
    if (!direct_page_fault_prepare(kvm, fault)) return RET_PF_RETRY;
    kvm.mmu_lock.write_lock();
    kvm.mmu_cache_vcpu = fault.vcpuId;
    try {
      fault.stats.slow++;
      if (mmu_notifier_retry(kvm, fault.mmu_seq) && !kvm.bug(BUG["no-notifier-retry"])) {
        fault.stats.retries++;
        // The vCPU will retry until the invalidation ends: a wait loop for the scheduler.
        spinPoint(kvm.ctl, CTL.notifier_count);
        return RET_PF_RETRY;
      }
      kvm_mmu_hugepage_adjust(kvm, fault);
      __direct_map(kvm, fault);
    } finally {
      kvm.mmu_cache_vcpu = -1;
      kvm.mmu_lock.write_unlock();
    }
    return RET_PF_RETRY;
  } finally {
    kfunc_exit(kfd);
  }
}

/** __direct_map: maps fault.gfn at fault.goal_level (transparent_hugepage_adjust). mmu_lock held for write. */
function __direct_map(kvm: Kvm, fault: KvmPageFault): void {
  lockdep_assert_held_write(kvm);
  const level = fault.goal_level;
  // transparent_hugepage_adjust: the large page's first gfn and frame.
  const off = fault.gfn & KVM_PAGES_PER_HPAGE_MASK(level);
  const gfn = fault.gfn - off;
  const it = fault.it;
  if (kvm.trace.on) trace_kvm_mmu_spte_requested(kvm, fault);
  for (shadow_walk_init(it, mmu_alloc_roots(kvm), gfn); shadow_walk_okay(it); shadow_walk_next(kvm, it)) {
    if (it.level === level) {
      mmu_set_spte(kvm, fault, it.sptep, ACC_ALL, gfn, fault.pfn - off);
      return;
    }
    drop_large_spte(kvm, it.sptep);
    if (!is_shadow_present_pte(kvm.spt[it.sptep])) {
      const base = gfn - (gfn & KVM_PAGES_PER_HPAGE_MASK(it.level));
      link_shadow_page(kvm, it.sptep, kvm_mmu_get_page(kvm, base, it.level - 1));
    }
  }
}

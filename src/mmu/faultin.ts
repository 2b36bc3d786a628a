/**
 * The head of direct_page_fault that both TDP fault paths run before they take mmu_lock (the
 * 3.11/seed design's tdp_page_fault, tdp_fault.ts, and the TDP MMU's, tdp_mmu/tdp_mmu_fault.ts),
 * and kvm_faultin_pfn (mmu.c): the host frame behind the gfn. KVM shares direct_page_fault
 * between its two MMUs and branches only at the lock; here each design has its own function
 * after this head.
 */
import { CTL, Kvm } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { aload } from "../sync/atomic.js";
import { gfn_to_memslot, lpage_info_index, slot_dirty_logged } from "../mem/memslot.js";
import { gfn_to_pfn_memslot } from "../mem/guest_memory.js";
import { hva_is_huge } from "../mem/host_memory.js";
import { handle_userfault } from "../mem/userfault.js";
import { mmu_topup_memory_caches } from "./mmu_cache.js";
import type { KvmPageFault } from "./mmu.js";
import { PT_DIRECTORY_LEVEL, PT_PAGE_TABLE_LEVEL } from "./spte.js";
import { trace_fast_page_fault } from "./mmutrace.js";

/**
 * kvm_faultin_pfn: reads mmu_notifier_seq into fault.mmu_seq, then looks up the host frame of
 * fault.gfn in fault.slot (gfn_to_pfn; the smp_rmb pairs with invalidate_range_end) into
 * fault.pfn, map_writable and host_huge. Throws KvmError(EFAULT) for host memory that is not
 * mapped, or for a write to memory the host maps read-only.
 */
export function kvm_faultin_pfn(kvm: Kvm, fault: KvmPageFault): void {
  const gfn = fault.gfn;
  fault.mmu_seq = aload(kvm.ctl, CTL.notifier_seq);
  const hf = fault.hf;
  if (!gfn_to_pfn_memslot(kvm, fault.slot, gfn, hf))
    throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: host memory not mapped`);
  fault.pfn = hf.pfn;
  fault.map_writable = hf.writable;
  fault.host_huge = hva_is_huge(kvm, hf.hvaPage);
  // KVM exits to userspace (KVM_EXIT_MMIO) for a write to read-only memory; we stop the vCPU.
  if (fault.write && !fault.map_writable)
    throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: write to read-only memory`);
}

/**
 * direct_page_fault up to mmu_lock: fault.slot (KvmError(EFAULT) for a gfn outside every
 * memslot), the lockless fast path, a page post-copy has not brought yet, the vCPU's memory
 * caches, then kvm_faultin_pfn. Returns true to go on under mmu_lock, false when the fault is
 * done or must be retried (the caller returns RET_PF_RETRY).
 */
export function direct_page_fault_prepare(kvm: Kvm, fault: KvmPageFault): boolean {
  const gfn = fault.gfn;
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: no memslot`);
  fault.slot = slot;
  if (fault.write && fault.present) {
    const fixed = kvm.ops.fast_page_fault(kvm, fault);
    if (kvm.trace.on) trace_fast_page_fault(kvm, fault, fixed);
    if (fixed) return false;
  }
  // A page post-copy has not brought yet: wait for it here, before mmu_lock (false: retry later).
  if (!handle_userfault(kvm, fault.vcpuId, slot, gfn)) return false;
  // Before mmu_lock: the slow path then cannot run out of pages or descriptors.
  mmu_topup_memory_caches(kvm, fault.vcpuId);
  kvm_faultin_pfn(kvm, fault);
  return true;
}

/**
 * kvm_mmu_hugepage_adjust: the fault's goal level, 2 MiB where the host backs the gfn with a huge
 * page, the slot is not dirty-logged (force_pt_level) and no guest table in the region is
 * tracked; else 4 KiB. mmu_lock held (either mode): slot flags change under the write lock.
 */
export function kvm_mmu_hugepage_adjust(kvm: Kvm, fault: KvmPageFault): void {
  fault.goal_level =
    !slot_dirty_logged(kvm, fault.slot) &&
    fault.host_huge &&
    kvm.lpagePool[lpage_info_index(kvm, fault.slot, fault.gfn, PT_DIRECTORY_LEVEL)] === 0
      ? PT_DIRECTORY_LEVEL
      : PT_PAGE_TABLE_LEVEL;
}

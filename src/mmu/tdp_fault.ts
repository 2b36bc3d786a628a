/**
 * TDP page faults: tdp_page_fault, its lockless fast path (fast_page_fault, mmu.ts) and its slow
 * path under mmu_lock (__direct_map, then mmu_set_spte in mmu.ts).
 */
import { BUG, CTL, Kvm } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { aload, spinPoint } from "../sync/atomic.js";
import { gfn_to_memslot, lpage_info_index, slot_dirty_logged } from "../mem/memslot.js";
import { gfn_to_pfn_memslot, HostFrame } from "../mem/guest_memory.js";
import { hva_is_huge } from "../mem/host_memory.js";
import { handle_userfault } from "../mem/userfault.js";
import { drop_large_spte, kvm_mmu_get_page, link_shadow_page, mmu_alloc_roots } from "./mmu_page.js";
import { mmu_notifier_retry } from "./mmu_notifier.js";
import { mmu_topup_memory_caches } from "./mmu_cache.js";
import {
  fast_page_fault,
  FaultStats,
  mmu_set_spte,
  shadow_walk_init,
  shadow_walk_next,
  shadow_walk_okay,
  ShadowWalkIterator,
} from "./mmu.js";
import {
  is_shadow_present_pte,
  KVM_PAGES_PER_HPAGE_MASK,
  PT_DIRECTORY_LEVEL,
  PT_PAGE_TABLE_LEVEL,
} from "./spte.js";
import { ACC_ALL } from "./guest_pt.js";

const hf = new HostFrame();
const it = new ShadowWalkIterator();

/**
 * tdp_page_fault: returns when the vCPU should retry the access. The vCPU is outside guest mode
 * (mode OUTSIDE) for the whole call. Throws KvmError(EFAULT) for a gfn outside every memslot.
 */
export function tdp_page_fault(
  kvm: Kvm,
  vcpuId: number,
  gfn: number,
  write: boolean,
  present: boolean,
  st: FaultStats,
): void {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: no memslot`);
  if (write && present && fast_page_fault(kvm, vcpuId, gfn, st)) return;
  // A page post-copy has not brought yet: wait for it here, before mmu_lock (false: retry later).
  if (!handle_userfault(kvm, vcpuId, slot, gfn)) return;
  // Before mmu_lock: the slow path below then cannot run out of pages or descriptors.
  mmu_topup_memory_caches(kvm, vcpuId);

  const mmuSeq = aload(kvm.ctl, CTL.notifier_seq);
  // gfn_to_pfn, after reading mmu_notifier_seq (the smp_rmb pairs with invalidate_range_end).
  if (!gfn_to_pfn_memslot(kvm, slot, gfn, hf))
    throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: host memory not mapped`);
  const pfn = hf.pfn;
  const mapWritable = hf.writable;
  const hostHuge = hva_is_huge(kvm, hf.hvaPage);
  // KVM exits to userspace (KVM_EXIT_MMIO) for a write to read-only memory; we stop the vCPU.
  if (write && !mapWritable)
    throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: write to read-only memory`);

  kvm.mmu_lock.lock();
  kvm.mmu_cache_vcpu = vcpuId;
  try {
    st.slow++;
    if (mmu_notifier_retry(kvm, mmuSeq) && !kvm.bug(BUG["no-notifier-retry"])) {
      st.retries++;
      // The vCPU will retry until the invalidation ends: a wait loop for the scheduler.
      spinPoint(kvm.ctl, CTL.notifier_count);
      return;
    }
    // force_pt_level while the slot is dirty-logged (flags change under mmu_lock).
    let level = PT_PAGE_TABLE_LEVEL;
    if (
      !slot_dirty_logged(kvm, slot) &&
      hostHuge &&
      kvm.lpagePool[lpage_info_index(kvm, slot, gfn, PT_DIRECTORY_LEVEL)] === 0
    )
      level = PT_DIRECTORY_LEVEL;
    // transparent_hugepage_adjust.
    const off = gfn & KVM_PAGES_PER_HPAGE_MASK(level);
    __direct_map(kvm, slot, gfn - off, pfn - off, level, write, mapWritable);
  } finally {
    kvm.mmu_cache_vcpu = -1;
    kvm.mmu_lock.unlock();
  }
}

/** __direct_map: mmu_lock held. */
function __direct_map(
  kvm: Kvm,
  slot: number,
  gfn: number,
  pfn: number,
  level: number,
  write: boolean,
  mapWritable: boolean,
): void {
  for (shadow_walk_init(it, mmu_alloc_roots(kvm), gfn); shadow_walk_okay(it); shadow_walk_next(kvm, it)) {
    if (it.level === level) {
      mmu_set_spte(kvm, slot, it.sptep, ACC_ALL, level, gfn, pfn, write, mapWritable);
      return;
    }
    drop_large_spte(kvm, it.sptep);
    if (!is_shadow_present_pte(kvm.spt[it.sptep])) {
      const base = gfn - (gfn & KVM_PAGES_PER_HPAGE_MASK(it.level));
      link_shadow_page(kvm, it.sptep, kvm_mmu_get_page(kvm, base, it.level - 1));
    }
  }
}

/**
 * The pte_list_desc cache: a type-stable slab, as `pte_list_desc_cache` with SLAB_DESTROY_BY_RCU.
 * A freed descriptor may be handed out again at once, but its memory is never anything but a
 * descriptor, so a lockless walker that still stands on it reads a descriptor of some chain (or
 * one under construction, `more == 0`) and the nulls check sends it back to its own head.
 *
 * The free list links live beside the descriptors, not inside them (as SLUB keeps the free pointer
 * outside SLAB_TYPESAFE_BY_RCU objects): a freed descriptor keeps its last contents for walkers.
 * Allocation and free happen under mmu_lock.
 *
 * A vCPU allocates from its own memory cache (mmu_pte_list_desc_cache, VCPU.desc_cache), which
 * mmu_topup_memory_caches fills from here before the fault takes mmu_lock, so the fault cannot
 * run out half-way. Cached descriptors are linked through the same free-list links.
 */
import { CTL, DESC, Kvm, VCPU } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { astore } from "../sync/atomic.js";

/** The free-list links follow the last descriptor row: link of d at descLinkBase + d. */
export function descLinkBase(kvm: Kvm): number {
  return DESC.row(kvm.shared.config.maxDesc);
}

/** Takes a descriptor off the slab (not counted as used): -1 when none is left. mmu_lock held. */
export function desc_pool_pop(kvm: Kvm): number {
  const ctl = kvm.ctl;
  const free = ctl[CTL.desc_free];
  if (free !== 0) {
    ctl[CTL.desc_free] = kvm.desc[descLinkBase(kvm) + free - 1];
    return free - 1;
  }
  const d = ctl[CTL.desc_high];
  if (d >= kvm.shared.config.maxDesc) return -1;
  ctl[CTL.desc_high] = d + 1;
  return d;
}

/** Puts a descriptor that is neither used nor cached back on the slab. mmu_lock held. */
export function desc_pool_push(kvm: Kvm, d: number): void {
  kvm.desc[descLinkBase(kvm) + d] = kvm.ctl[CTL.desc_free];
  kvm.ctl[CTL.desc_free] = d + 1;
}

/** Descriptors the slab can still hand out (free list and never used). mmu_lock held. */
export function desc_pool_avail(kvm: Kvm): number {
  return kvm.shared.config.maxDesc - kvm.ctl[CTL.desc_used] - kvm.ctl[CTL.desc_cached];
}

/** Puts d on the vCPU's descriptor cache. mmu_lock held. */
export function desc_cache_push(kvm: Kvm, vcpuId: number, d: number): void {
  const row = vcpuId;
  kvm.desc[descLinkBase(kvm) + d] = kvm.vcpu[VCPU.desc_cache(row)];
  kvm.vcpu[VCPU.desc_cache(row)] = d + 1;
  kvm.vcpu[VCPU.desc_cache_n(row)]++;
  kvm.ctl[CTL.desc_cached]++;
}

/** Takes a descriptor off the vCPU's cache: -1 when it is empty. mmu_lock held. */
export function desc_cache_pop(kvm: Kvm, vcpuId: number): number {
  const row = vcpuId;
  const head = kvm.vcpu[VCPU.desc_cache(row)];
  if (head === 0) return -1;
  kvm.vcpu[VCPU.desc_cache(row)] = kvm.desc[descLinkBase(kvm) + head - 1];
  kvm.vcpu[VCPU.desc_cache_n(row)]--;
  kvm.ctl[CTL.desc_cached]--;
  return head - 1;
}

/**
 * mmu_memory_cache_alloc: a descriptor whose `more` is 0 ("under construction"), from the cache
 * of the vCPU that holds mmu_lock (kvm.mmu_cache_vcpu), or from the slab for callers without one
 * (tests, scenarios). The top-up sized the cache for the worst case of one fault, so an empty
 * cache is a bug in that bound; the slab still backs it. mmu_lock held.
 */
export function mmu_alloc_pte_list_desc(kvm: Kvm): number {
  const ctl = kvm.ctl;
  let d = kvm.mmu_cache_vcpu >= 0 ? desc_cache_pop(kvm, kvm.mmu_cache_vcpu) : -1;
  if (d < 0) d = desc_pool_pop(kvm);
  if (d < 0) throw new KvmError("ENOMEM", "pte_list_desc slab exhausted (maxDesc)");
  ctl[CTL.desc_used]++;
  ctl[CTL.desc_allocs]++;
  // Patch 9: pointer-sized stores only, `more` first so a walker that reads it restarts.
  astore(kvm.desc, DESC.more(d), 0);
  return d;
}

/** mmu_lock held. The contents stay readable for walkers until the descriptor is reused. */
export function mmu_free_pte_list_desc(kvm: Kvm, d: number): void {
  const ctl = kvm.ctl;
  kvm.desc[descLinkBase(kvm) + d] = ctl[CTL.desc_free];
  ctl[CTL.desc_free] = d + 1;
  ctl[CTL.desc_used]--;
}

/**
 * The pte_list_desc cache: a type-stable slab, as `pte_list_desc_cache` with SLAB_DESTROY_BY_RCU.
 * A freed descriptor may be handed out again at once, but its memory is never anything but a
 * descriptor, so a lockless walker that still stands on it reads a descriptor of some chain (or
 * one under construction, `more == 0`) and the nulls check sends it back to its own head.
 *
 * The free list links live beside the descriptors, not inside them (as SLUB keeps the free pointer
 * outside SLAB_TYPESAFE_BY_RCU objects): a freed descriptor keeps its last contents for walkers.
 * Allocation and free happen under mmu_lock.
 */
import { CTL, DESC, Kvm } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { astore } from "../sync/atomic.js";

/** The free-list links follow the last descriptor row: link of d at descLinkBase + d. */
export function descLinkBase(kvm: Kvm): number {
  return DESC.row(kvm.shared.config.maxDesc);
}

/** Returns a descriptor index whose `more` is 0 ("under construction"). mmu_lock held. */
export function mmu_alloc_pte_list_desc(kvm: Kvm): number {
  const ctl = kvm.ctl;
  let d: number;
  const free = ctl[CTL.desc_free];
  if (free !== 0) {
    d = free - 1;
    ctl[CTL.desc_free] = kvm.desc[descLinkBase(kvm) + d];
  } else {
    d = ctl[CTL.desc_high];
    if (d >= kvm.shared.config.maxDesc)
      throw new KvmError("ENOMEM", "pte_list_desc slab exhausted (maxDesc)");
    ctl[CTL.desc_high] = d + 1;
  }
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

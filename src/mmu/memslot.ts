/**
 * The MMU's part of a memslot change (x86's kvm_arch_* memslot hooks), handed to
 * kvm_set_memslot (src/mem/set_memslot.ts) by the ioctl layer: mem/ is below mmu/.
 */
import { Kvm, SLOT } from "../kvm_host.js";
import type { KvmArchMemslotOps } from "../mem/set_memslot.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { kvm_set_dirty_logging } from "./dirty_log.js";

/**
 * kvm_arch_flush_shadow_memslot: zaps every spte that maps the slot's host range and flushes
 * the remote TLBs. mmu_lock held.
 */
export function kvm_arch_flush_shadow_memslot(kvm: Kvm, slot: number): void {
  const hva = kvm.slots[SLOT.hva_page(slot)];
  kvm.ops.zap_gfn_range(kvm, hva, hva + kvm.slots[SLOT.npages(slot)]);
  kvm_flush_remote_tlbs(kvm);
}

/** The same, taking mmu_lock: a slot's backing dropped as a whole (userfault discard). */
export function kvm_mmu_zap_memslot(kvm: Kvm, slot: number): void {
  kvm.mmu_lock.lock();
  try {
    kvm_arch_flush_shadow_memslot(kvm, slot);
  } finally {
    kvm.mmu_lock.unlock();
  }
}

/** x86's memslot hooks; slot_apply_flags is kvm_mmu_slot_apply_flags (dirty logging). */
export const kvm_x86_memslot_ops: KvmArchMemslotOps = {
  flush_shadow_memslot: kvm_arch_flush_shadow_memslot,
  slot_apply_flags: kvm_set_dirty_logging,
};

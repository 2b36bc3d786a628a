/**
 * KVM_GET_DIRTY_LOG and enabling dirty logging, over the VM's write-protect design
 * (src/mmu/write_protect.ts).
 *
 * Per bit the order is the kernel's: (1) snapshot-and-clear the bitmap word with xchg,
 * (2) write-protect the reported gfns, (3) flush remote TLBs, (4) hand the snapshot out.
 * (1) and (2) run between the design's harvestBegin and harvestEnd; (3) is in harvestEnd,
 * inside or after the design's critical section.
 */
import { Kvm, KVM_MEM_LOG_DIRTY_PAGES, SLOT } from "../kvm_host.js";
import { aload, astore, axchg } from "../sync/atomic.js";
import { hweight32 } from "../mem/dirty_bitmap.js";
import { DirtyLogTimes, WriteProtectDesign } from "./write_protect.js";
import { wp_locked } from "./wp_locked.js";
import { wp_lockless } from "./wp_lockless.js";

export { DirtyLogTimes, newDirtyLogTimes, RCU_READER_IOCTL } from "./write_protect.js";

/** The designs, indexed by config.wp (WpStrategy). */
export const WP_DESIGNS: readonly WriteProtectDesign[] = [wp_locked, wp_lockless];

/** The VM's write-protect design: fixed by config.wp when the VM is created. */
export function wp_design(kvm: Kvm): WriteProtectDesign {
  return WP_DESIGNS[kvm.wp];
}

/**
 * kvm_vm_ioctl_get_dirty_log for slot `slot`: fills `out` (one bit per page) and returns the
 * number of dirty pages; adds this call's times to `times`. slots_lock is held by the caller.
 */
export function kvm_get_dirty_log(kvm: Kvm, slot: number, out: Uint32Array, times: DirtyLogTimes): number {
  const design = wp_design(kvm);
  const words = kvm.slots[SLOT.bitmap_words(slot)];
  const bm = kvm.bitmapPool;
  const b0 = kvm.slots[SLOT.bitmap_base(slot)];
  const t0 = performance.now();
  const wait0 = times.lockWaitNs;
  const flush0 = times.flushNs;
  let dirty = 0;
  let flush = false;
  design.harvestBegin(kvm, times);
  try {
    for (let i = 0; i < words; i++) {
      if (aload(bm, b0 + i) === 0) {
        out[i] = 0;
        continue;
      }
      const mask = axchg(bm, b0 + i, 0);
      out[i] = mask;
      if (mask === 0) continue;
      dirty += hweight32(mask);
      // As KVM's kvm_get_dirty_log_protect: any reported page means a flush.
      flush = true;
      design.protectMasked(kvm, slot, i, mask);
    }
  } finally {
    design.harvestEnd(kvm, flush, times);
  }
  times.protectNs += (performance.now() - t0) * 1e6 - (times.lockWaitNs - wait0) - (times.flushNs - flush0);
  times.dirtyPages += dirty;
  return dirty;
}

/**
 * Sets or clears KVM_MEM_LOG_DIRTY_PAGES on slot `slot` (slots_lock held) and, when logging is
 * turned on, write-protects the slot (kvm_arch_commit_memory_region). The flag is stored under
 * mmu_lock, so every slow-path fault that read the old flag has finished before protection
 * starts (KVM gets the same from synchronize_srcu on the memslot array).
 */
export function kvm_set_dirty_logging(kvm: Kvm, slot: number, enable: boolean): void {
  const flags = kvm.slots[SLOT.flags(slot)];
  const was = (flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
  if (was === enable) return;
  if (enable) {
    // A fresh bitmap: nothing is dirty yet.
    const b0 = kvm.slots[SLOT.bitmap_base(slot)];
    for (let i = 0; i < kvm.slots[SLOT.bitmap_words(slot)]; i++) astore(kvm.bitmapPool, b0 + i, 0);
  }
  kvm.mmu_lock.lock();
  astore(
    kvm.slots,
    SLOT.flags(slot),
    enable ? flags | KVM_MEM_LOG_DIRTY_PAGES : flags & ~KVM_MEM_LOG_DIRTY_PAGES,
  );
  kvm.mmu_lock.unlock();
  if (enable) wp_design(kvm).slotRemoveWriteAccess(kvm, slot);
}

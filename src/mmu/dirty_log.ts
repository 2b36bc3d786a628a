/**
 * KVM_GET_DIRTY_LOG and enabling dirty logging, over the VM's write-protect design
 * (src/mmu/write_protect.ts).
 *
 * Per bit the order is the kernel's: (1) snapshot-and-clear the bitmap word with xchg,
 * (2) write-protect the reported gfns, (3) flush remote TLBs, (4) hand the snapshot out.
 * (1) and (2) run between the design's harvestBegin and harvestEnd; (3) is in harvestEnd,
 * inside or after the design's critical section.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import {
  BUG,
  CTL,
  Kvm,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
  SLOT,
} from "../kvm_host.js";
import { aread, astore, axchg } from "../sync/atomic.js";
import { hweight32 } from "../mem/dirty_bitmap.js";
import { kvm_flush_pml_buffers } from "../kvm/pml.js";
import { DirtyLogTimes } from "./write_protect.js";
import type { KvmMmuOps } from "./kvm_mmu.js";
// The registry: every thread that runs dirty logging has the designs (and Kvm can resolve them).
import "./design.js";

export { DirtyLogTimes, newDirtyLogTimes, RCU_READER_IOCTL } from "./write_protect.js";

/** The VM's design (its MMU ops, write protection included): fixed by config.wp at creation. */
export function wp_design(kvm: Kvm): KvmMmuOps {
  return kvm.ops;
}

/**
 * kvm_arch_sync_dirty_log: with D-bit logging the vCPUs' PML buffers go into the bitmap first
 * (kvm_flush_pml_buffers). slots_lock held.
 */
export function kvm_arch_sync_dirty_log(kvm: Kvm): void {
  if ((kvm.ops.cpu_dirty_log_size?.(kvm) ?? 0) !== 0) kvm_flush_pml_buffers(kvm);
}

/** kvm_arch_sync_dirty_log, its time added to times.pmlFlushNs. */
export function timed_sync_dirty_log(kvm: Kvm, times: DirtyLogTimes): void {
  if ((kvm.ops.cpu_dirty_log_size?.(kvm) ?? 0) === 0) return;
  const t = performance.now();
  kvm_flush_pml_buffers(kvm);
  times.pmlFlushNs += (performance.now() - t) * 1e6;
}

/** Manual protect is on (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE). slots_lock held. */
export function manual_protect(kvm: Kvm): boolean {
  return (kvm.ctl[CTL.manual_dirty_log] & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) !== 0;
}

/** Manual protect with INITIALLY_SET (kvm_dirty_log_manual_protect_and_init_set). */
export function manual_protect_and_init_set(kvm: Kvm): boolean {
  const f = kvm.ctl[CTL.manual_dirty_log];
  return (f & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE) !== 0 && (f & KVM_DIRTY_LOG_INITIALLY_SET) !== 0;
}

/**
 * kvm_vm_ioctl_get_dirty_log for slot `slot`: fills `out` (one bit per page) and returns the
 * number of dirty pages; adds this call's times to `times`. slots_lock is held by the caller.
 * With manual protect it only copies the live bitmap: no clear, no protection, no flush (the
 * pages are cleared and re-protected by KVM_CLEAR_DIRTY_LOG, src/mmu/clear_dirty_log.ts).
 */
export function kvm_get_dirty_log(kvm: Kvm, slot: number, out: Uint32Array, times: DirtyLogTimes): number {
  const kfd = kfunc_enter(KF.kvm_get_dirty_log);
  try {
    timed_sync_dirty_log(kvm, times);
    if (manual_protect(kvm)) return get_dirty_log_copy(kvm, slot, out, times);
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
        // A plain pre-check (KVM's `if (!dirty_bitmap[i])`): a bit set concurrently and missed
        // here is reported by the next call; the xchg is what clears.
        if (aread(bm, b0 + i) === 0) {
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
  } finally {
    kfunc_exit(kfd);
  }
}

function get_dirty_log_copy(kvm: Kvm, slot: number, out: Uint32Array, times: DirtyLogTimes): number {
  const words = kvm.slots[SLOT.bitmap_words(slot)];
  const bm = kvm.bitmapPool;
  const b0 = kvm.slots[SLOT.bitmap_base(slot)];
  const t0 = performance.now();
  let dirty = 0;
  for (let i = 0; i < words; i++) {
    const x = aread(bm, b0 + i);
    out[i] = x;
    if (x !== 0) dirty += hweight32(x);
  }
  times.protectNs += (performance.now() - t0) * 1e6;
  times.dirtyPages += dirty;
  return dirty;
}

/**
 * Sets or clears KVM_MEM_LOG_DIRTY_PAGES on slot `slot` (slots_lock held) and, when logging is
 * turned on, write-protects the slot (kvm_arch_commit_memory_region). The flag is stored under
 * mmu_lock, so every slow-path fault that read the old flag has finished before protection
 * starts (KVM gets the same from synchronize_srcu on the memslot array).
 *
 * With manual protect and INITIALLY_SET the new bitmap starts all ones (bits past the slot end
 * clear) and 4 KiB pages are not protected: every page is reported dirty, and the first CLEAR
 * of a page protects it. Large sptes are still protected, because CLEAR protects level 1 only
 * (the TDP MMU, as 6.x, protects nothing then: its CLEAR splits and protects the huge pages).
 */
export function kvm_set_dirty_logging(kvm: Kvm, slot: number, enable: boolean): void {
  const flags = kvm.slots[SLOT.flags(slot)];
  const was = (flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
  if (was === enable) return;
  const initSet = enable && manual_protect_and_init_set(kvm);
  if (enable) {
    // A fresh bitmap: nothing is dirty yet, or (INITIALLY_SET) everything is.
    const b0 = kvm.slots[SLOT.bitmap_base(slot)];
    const words = kvm.slots[SLOT.bitmap_words(slot)];
    // Bug initially-set-zero: protection is delayed, but the bitmap starts empty.
    const ones = initSet && !kvm.bug(BUG["initially-set-zero"]);
    for (let i = 0; i < words; i++) astore(kvm.bitmapPool, b0 + i, ones ? -1 : 0);
    const tail = kvm.slots[SLOT.npages(slot)] & 31;
    if (ones && tail !== 0) astore(kvm.bitmapPool, b0 + words - 1, (1 << tail) - 1);
  }
  kvm.mmu_lock.write_lock();
  astore(
    kvm.slots,
    SLOT.flags(slot),
    enable ? flags | KVM_MEM_LOG_DIRTY_PAGES : flags & ~KVM_MEM_LOG_DIRTY_PAGES,
  );
  kvm.mmu_lock.write_unlock();
  const ops = wp_design(kvm);
  if (!enable) ops.recover_huge_pages?.(kvm, slot);
  // Eager page splitting splits at enable time, except with INITIALLY_SET (CLEAR splits then).
  else if (!initSet) ops.split_huge_pages?.(kvm, slot);
  if (enable) ops.slotRemoveWriteAccess(kvm, slot, initSet ? 2 : 1);
}

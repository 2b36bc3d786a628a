/**
 * KVM_GET_DIRTY_LOG and enabling dirty logging, in the two designs of the comparison.
 *
 * Per bit the order is the kernel's: (1) snapshot-and-clear the bitmap word with xchg,
 * (2) write-protect the reported gfns, (3) flush remote TLBs, (4) hand the snapshot out.
 * locked (3.11): (1)-(3) under mmu_lock. lockless (the seed): no mmu_lock; (2) in an RCU read
 * section; (3) outside any lock but under slots_lock, which serialises the deferred flushers.
 */
import {
  Kvm,
  KVM_MEM_LOG_DIRTY_PAGES,
  SLOT_BASE_GFN,
  SLOT_BITMAP_BASE,
  SLOT_BITMAP_WORDS,
  SLOT_FLAGS,
  SLOT_RMAP_BASE,
  WpStrategy,
} from "../kvm_host.js";
import { aload, astore, axchg } from "../sync/atomic.js";
import { hweight32 } from "../mem/dirty_bitmap.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import {
  __rmap_write_protect,
  rmap_write_protect_lockless,
  skipFlushBug,
  spte_write_protect_lockless,
  spte_write_protect_locked,
  slot_remove_write_access_locked,
  slot_remove_write_access_lockless,
} from "./write_protect.js";

/** The RCU reader slot of the thread that runs the ioctls (the VM owner). */
export const RCU_READER_IOCTL = 0;

export interface DirtyLogTimes {
  /** ns spent waiting for mmu_lock (locked design). */
  lockWaitNs: number;
  /** ns spent in the remote TLB flush. */
  flushNs: number;
  dirtyPages: number;
}

/**
 * kvm_vm_ioctl_get_dirty_log for slot row r: fills `out` (one bit per page) and returns the
 * number of dirty pages. slots_lock is held by the caller.
 */
export function kvm_get_dirty_log(kvm: Kvm, r: number, out: Uint32Array, times: DirtyLogTimes): number {
  const words = kvm.slots[r + SLOT_BITMAP_WORDS];
  const bm = kvm.bitmapPool;
  const b0 = kvm.slots[r + SLOT_BITMAP_BASE];
  const l1 = kvm.slots[r + SLOT_RMAP_BASE];
  let dirty = 0;
  if (kvm.wp === WpStrategy.Locked) {
    const rmaps = kvm.rmapPool;
    const w0 = kvm.mmu_lock.stats.waitNs;
    kvm.mmu_lock.lock();
    times.lockWaitNs += kvm.mmu_lock.stats.waitNs - w0;
    try {
      let flush = false;
      for (let i = 0; i < words; i++) {
        if (aload(bm, b0 + i) === 0) {
          out[i] = 0;
          continue;
        }
        let mask = axchg(bm, b0 + i, 0);
        out[i] = mask;
        dirty += hweight32(mask);
        // kvm_mmu_write_protect_pt_masked: level-1 rmaps of the reported gfns.
        const h = l1 + i * 32;
        while (mask !== 0) {
          const bit = 31 - Math.clz32(mask & -mask);
          // As in the lockless path: a single-entry head inline, chains through the iterator.
          const v = rmaps[h + bit];
          if (v !== 0 && (v & 1) === 0) {
            if (spte_write_protect_locked(kvm, (v >>> 1) - 1) !== 0) flush = true;
          } else if (v !== 0 && __rmap_write_protect(kvm, h + bit)) flush = true;
          mask &= mask - 1;
        }
      }
      // 3.11 (6dbf79e): the flush stays under mmu_lock.
      if (dirty !== 0 || flush) {
        const t = performance.now();
        kvm_flush_remote_tlbs(kvm);
        times.flushNs += (performance.now() - t) * 1e6;
      }
    } finally {
      kvm.mmu_lock.unlock();
    }
  } else {
    const rmaps = kvm.rmapPool;
    kvm.rcu.readLock(RCU_READER_IOCTL);
    try {
      for (let i = 0; i < words; i++) {
        if (aload(bm, b0 + i) === 0) {
          out[i] = 0;
          continue;
        }
        let mask = axchg(bm, b0 + i, 0);
        out[i] = mask;
        dirty += hweight32(mask);
        const h = l1 + i * 32;
        while (mask !== 0) {
          const bit = 31 - Math.clz32(mask & -mask);
          // The common TDP case, a single-entry head, inline; chains go through the walker.
          const v = aload(rmaps, h + bit);
          if (v !== 0 && (v & 1) === 0) spte_write_protect_lockless(kvm, (v >>> 1) - 1);
          else if (v !== 0) rmap_write_protect_lockless(kvm, h + bit);
          mask &= mask - 1;
        }
      }
    } finally {
      kvm.rcu.readUnlock(RCU_READER_IOCTL);
    }
    if (dirty !== 0 && !skipFlushBug(kvm)) {
      const t = performance.now();
      kvm_flush_remote_tlbs(kvm);
      times.flushNs += (performance.now() - t) * 1e6;
    }
  }
  times.dirtyPages += dirty;
  return dirty;
}

/**
 * Sets or clears KVM_MEM_LOG_DIRTY_PAGES on slot row r (slots_lock held) and, when logging is
 * turned on, write-protects the slot (kvm_arch_commit_memory_region). The flag is stored under
 * mmu_lock, so every slow-path fault that read the old flag has finished before protection
 * starts (KVM gets the same from synchronize_srcu on the memslot array).
 */
export function kvm_set_dirty_logging(kvm: Kvm, r: number, enable: boolean): void {
  const flags = kvm.slots[r + SLOT_FLAGS];
  const was = (flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
  if (was === enable) return;
  if (enable) {
    // A fresh bitmap: nothing is dirty yet.
    const b0 = kvm.slots[r + SLOT_BITMAP_BASE];
    for (let i = 0; i < kvm.slots[r + SLOT_BITMAP_WORDS]; i++) astore(kvm.bitmapPool, b0 + i, 0);
  }
  kvm.mmu_lock.lock();
  astore(
    kvm.slots,
    r + SLOT_FLAGS,
    enable ? flags | KVM_MEM_LOG_DIRTY_PAGES : flags & ~KVM_MEM_LOG_DIRTY_PAGES,
  );
  if (!enable) {
    kvm.mmu_lock.unlock();
    return;
  }
  if (kvm.wp === WpStrategy.Locked) {
    try {
      slot_remove_write_access_locked(kvm, r, kvm_flush_remote_tlbs);
    } finally {
      kvm.mmu_lock.unlock();
    }
    return;
  }
  kvm.mmu_lock.unlock();
  kvm.rcu.readLock(RCU_READER_IOCTL);
  try {
    slot_remove_write_access_lockless(kvm, r);
  } finally {
    kvm.rcu.readUnlock(RCU_READER_IOCTL);
  }
  if (!skipFlushBug(kvm)) kvm_flush_remote_tlbs(kvm);
}

export { SLOT_BASE_GFN };

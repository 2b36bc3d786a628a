/**
 * KVM_CLEAR_DIRTY_LOG (kvm_clear_dirty_log_protect), over the VM's write-protect design: with
 * manual protect, GET only copies the bitmap and userspace clears and re-protects the pages it
 * has copied, here. Per bitmap word, `mask &= fetch_andnot(word, mask)`: only bits this call
 * really cleared are re-protected (a bit already clear belongs to a page nobody wrote since its
 * last protection); the remote flush happens only if something was cleared.
 *
 * The order per bit matters as in GET: clear first, then protect. A write between the two
 * faults after the protection and sets the bit again; the other way round a write between
 * protect and clear would have its bit erased while the page stays writable.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import { BUG, Kvm, SLOT } from "../kvm_host.js";
import { aand, aread } from "../sync/atomic.js";
import { hweight32 } from "../mem/dirty_bitmap.js";
import { DirtyLogTimes, WriteProtectDesign } from "./write_protect.js";
import { timed_sync_dirty_log } from "./dirty_log.js";

/**
 * Clears in slot `slot` the pages [firstPage, firstPage + numPages) set in `bitmap` (bit n of
 * `bitmap` = page firstPage + n; words past its end count as 0) and re-protects those that were
 * dirty. The caller has checked the arguments (firstPage % 64 == 0, the range in the slot) and
 * holds slots_lock. Returns the pages cleared; adds this call's times to `times`.
 */
export function kvm_clear_dirty_log(
  kvm: Kvm,
  design: WriteProtectDesign,
  slot: number,
  firstPage: number,
  numPages: number,
  bitmap: Uint32Array,
  times: DirtyLogTimes,
): number {
  const kfd = kfunc_enter(KF.kvm_clear_dirty_log);
  try {
    timed_sync_dirty_log(kvm, times);
    const bm = kvm.bitmapPool;
    const b0 = kvm.slots[SLOT.bitmap_base(slot)];
    const npages = kvm.slots[SLOT.npages(slot)];
    const w0 = firstPage >>> 5;
    const words = Math.ceil(numPages / 32);
    const protectFirst = kvm.bug(BUG["clear-protect-first"]);
    const t0 = performance.now();
    const wait0 = times.lockWaitNs;
    const flush0 = times.flushNs;
    let cleared = 0;
    let flush = false;
    design.harvestBegin(kvm, times);
    try {
      for (let i = 0; i < words; i++) {
        const wi = w0 + i;
        let mask = i < bitmap.length ? bitmap[i] | 0 : 0;
        // Bits past the end of the slot are ignored.
        const left = npages - wi * 32;
        if (left < 32) mask &= left <= 0 ? 0 : (1 << left) - 1;
        if (mask === 0) continue;
        if (protectFirst) {
          // Bug: protects before clearing, so a write in between loses its bit.
          design.protectMasked(kvm, slot, wi, mask);
          flush = true;
        }
        // A word with none of these bits set needs no atomic: clearing clear bits is a no-op. A
        // plain read suffices: only CLEAR (this thread, slots_lock) clears bits, so a bit GET saw
        // set is still seen set.
        if ((aread(bm, b0 + wi) & mask) === 0) continue;
        mask &= aand(bm, b0 + wi, ~mask);
        if (mask === 0) continue;
        cleared += hweight32(mask);
        flush = true;
        if (!protectFirst) design.protectMasked(kvm, slot, wi, mask);
      }
    } finally {
      design.harvestEnd(kvm, flush, times);
    }
    times.protectNs += (performance.now() - t0) * 1e6 - (times.lockWaitNs - wait0) - (times.flushNs - flush0);
    times.dirtyPages += cleared;
    return cleared;
  } finally {
    kfunc_exit(kfd);
  }
}

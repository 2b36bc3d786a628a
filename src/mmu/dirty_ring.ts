/**
 * KVM_RESET_DIRTY_RINGS: the part of the dirty ring (src/mem/dirty_ring.ts) that write-protects
 * the harvested pages again, through the VM's write-protect design.
 */
import {
  BUG,
  CTL,
  Kvm,
  KVM_DIRTY_GFN_F_RESET,
  KVM_USER_MEM_SLOTS,
  RING_GFN,
  RING_HDR,
  SLOT,
} from "../kvm_host.js";
import { aload, aread, astore, awrite } from "../sync/atomic.js";
import { entry, ring_base } from "../mem/dirty_ring.js";
import { DirtyLogTimes, WriteProtectDesign } from "./write_protect.js";
import { TracePhase } from "../sync/trace_ring.js";
import { TP } from "../sync/tracepoints.js";

/** Index of the highest set bit of the 64-bit mask hi:lo (two int32 halves), -1 if none. */
function fls64(lo: number, hi: number): number {
  return hi !== 0 ? 63 - Math.clz32(hi) : 31 - Math.clz32(lo);
}

/**
 * kvm_reset_dirty_gfn: write-protects the pages `offset + bit` of the 64-bit mask hi:lo of the
 * slot an entry names, one bitmap word at a time. Entries naming no slot, or pages past its end,
 * are skipped silently, as KVM does. Inside the design's section. (The mask is two int32 halves,
 * not a BigInt: a BigInt per entry cost most of the reset's time.)
 */
function reset_dirty_gfn(
  kvm: Kvm,
  design: WriteProtectDesign,
  slot: number,
  offset: number,
  lo: number,
  hi: number,
): void {
  const id = slot & 0xffff;
  if (slot >>> 16 !== 0 || id >= KVM_USER_MEM_SLOTS || (lo | hi) === 0) return;
  if (aload(kvm.slots, SLOT.active(id)) === 0) return;
  if (offset + fls64(lo, hi) >= kvm.slots[SLOT.npages(id)]) return;
  // The mask shifted to the page's bit in its bitmap word spans up to three words.
  const w = offset >>> 5;
  const sh = offset & 31;
  const w0 = lo << sh;
  const w1 = sh === 0 ? hi : (hi << sh) | (lo >>> (32 - sh));
  const w2 = sh === 0 ? 0 : hi >>> (32 - sh);
  if (w0 !== 0) design.protectMasked(kvm, id, w, w0);
  if (w1 !== 0) design.protectMasked(kvm, id, w + 1, w1 | 0);
  if (w2 !== 0) design.protectMasked(kvm, id, w + 2, w2 | 0);
}

/** Entries the reset copies out of a ring before it coalesces them (the scratch arrays' length). */
export const RESET_BATCH = 512;

/**
 * The reset's coalescing state, an Int32Array carried across batches: the mask (two int32
 * halves) of the pages `offset + bit` of `slot`; an empty mask holds nothing.
 */
export const enum RC {
  slot = 0,
  offset = 1,
  lo = 2,
  hi = 3,
  words = 4,
}

/**
 * kvm_dirty_ring_reset's coalescing, over `n` harvested entries in ring order (slots[k],
 * offsets[k]): offsets of one slot within 64 pages (forwards, and backwards while no bit falls
 * off the top) join the mask in `c`; any other entry protects the mask first and starts a new
 * one. What is left in `c` is the caller's to protect (reset_flush). Typed arrays in and out:
 * no object per entry. Inside the design's section.
 */
export function kvm_reset_dirty_gfns(
  kvm: Kvm,
  design: WriteProtectDesign,
  slots: Int32Array,
  offsets: Int32Array,
  n: number,
  c: Int32Array,
): void {
  let curSlot = c[RC.slot];
  let curOffset = c[RC.offset];
  let lo = c[RC.lo];
  let hi = c[RC.hi];
  for (let k = 0; k < n; k++) {
    const slot = slots[k];
    const offset = offsets[k];
    if ((lo | hi) !== 0) {
      if (slot === curSlot) {
        const delta = offset - curOffset;
        if (delta >= 0 && delta < 64) {
          if (delta < 32) lo |= 1 << delta;
          else hi |= 1 << (delta - 32);
          continue;
        }
        // Backwards within 64 pages, if no bit falls off the top.
        const d = -delta;
        if (delta > -64 && delta < 0 && fls64(lo, hi) + d <= 63) {
          curOffset = offset;
          if (d >= 32) {
            hi = lo << (d - 32);
            lo = 0;
          } else {
            hi = (hi << d) | (lo >>> (32 - d));
            lo = lo << d;
          }
          // Bug reset-coalesce-backward: the new lowest page is not put in the mask.
          if (!kvm.bug(BUG["reset-coalesce-backward"])) lo |= 1;
          continue;
        }
      }
      reset_dirty_gfn(kvm, design, curSlot, curOffset, lo, hi);
    }
    curSlot = slot;
    curOffset = offset;
    lo = 1;
    hi = 0;
  }
  c[RC.slot] = curSlot;
  c[RC.offset] = curOffset;
  c[RC.lo] = lo;
  c[RC.hi] = hi;
}

/** Protects the mask left in the coalescing state `c` and empties it. */
function reset_flush(kvm: Kvm, design: WriteProtectDesign, c: Int32Array): void {
  reset_dirty_gfn(kvm, design, c[RC.slot], c[RC.offset], c[RC.lo], c[RC.hi]);
  c[RC.lo] = c[RC.hi] = 0;
}

/** The reset's scratch (kvm.ring_reset_scratch): RESET_BATCH entries and the coalescing state. */
type ResetScratch = NonNullable<Kvm["ring_reset_scratch"]>;

/**
 * kvm_dirty_ring_reset of vCPU v, inside the design's section: frees every harvested (RESET)
 * entry from reset_index on, a batch at a time copied to the scratch arrays, and re-protects
 * their pages, coalesced (kvm_reset_dirty_gfns). Returns the entries reset.
 */
function dirty_ring_reset(kvm: Kvm, design: WriteProtectDesign, v: number, x: ResetScratch): number {
  const ring = kvm.dirtyRing;
  const size = kvm.ctl[CTL.dirty_ring_size];
  const b = ring_base(kvm, v);
  const { slots, offsets } = x;
  let reset = ring[b + RING_HDR.reset_index]; // written only here, under slots_lock
  let count = 0;
  // The walk follows the RESET flags, not dirty_index: the vCPU publishes flags before it
  // advances dirty_index, so a harvested entry may not be counted there yet, and it must be
  // reset (protected) now, before userspace reads its page. At most one lap.
  for (let full = true; full && count < size;) {
    let n = 0;
    while (n < RESET_BATCH && count < size) {
      const e = entry(size, reset);
      // READ_ONCE: slots_lock orders the harvester's RESET before this; a vCPU may be storing
      // DIRTY into a later entry meanwhile, which reads as not RESET either way.
      if ((aread(ring, b + RING_GFN.flags(e)) & KVM_DIRTY_GFN_F_RESET) === 0) break;
      slots[n] = aread(ring, b + RING_GFN.slot(e));
      offsets[n] = aread(ring, b + RING_GFN.offset_lo(e));
      // The release store of reset_index below publishes it before the vCPU reuses the entry.
      awrite(ring, b + RING_GFN.flags(e), 0);
      reset = (reset + 1) | 0;
      count++;
      n++;
    }
    kvm_reset_dirty_gfns(kvm, design, slots, offsets, n, x.c);
    full = n === RESET_BATCH;
  }
  reset_flush(kvm, design, x.c);
  astore(ring, b + RING_HDR.reset_index, reset);
  if (kvm.trace.on)
    kvm.trace.emit(
      TP.kvm_dirty_ring_reset,
      TracePhase.Instant,
      v,
      aload(ring, b + RING_HDR.dirty_index),
      reset,
    );
  return count;
}

/**
 * KVM_RESET_DIRTY_RINGS: resets every vCPU's ring inside one section of the design (mmu_lock,
 * or the lockless design's RCU read section), flushes remote TLBs if anything was reset, then
 * wakes the vCPUs that wait in a ring-full exit. slots_lock held by the caller. Returns the
 * entries reset.
 */
export function kvm_reset_dirty_rings(kvm: Kvm, design: WriteProtectDesign, times: DirtyLogTimes): number {
  if (kvm.ctl[CTL.dirty_ring_size] === 0) return 0;
  const n = aload(kvm.ctl, CTL.nr_vcpus);
  let count = 0;
  // Made once per thread and VM: a typed array costs tens of microseconds to allocate.
  const x: ResetScratch = (kvm.ring_reset_scratch ??= {
    slots: new Int32Array(RESET_BATCH),
    offsets: new Int32Array(RESET_BATCH),
    c: new Int32Array(RC.words),
  });
  design.harvestBegin(kvm, times);
  try {
    for (let v = 0; v < n; v++) count += dirty_ring_reset(kvm, design, v, x);
  } finally {
    design.harvestEnd(kvm, count > 0, times);
  }
  times.dirtyPages += count;
  // Only now may a blocked vCPU go on: its pages are protected and the TLBs flushed.
  for (let v = 0; v < n; v++) Atomics.notify(kvm.dirtyRing, ring_base(kvm, v) + RING_HDR.reset_index);
  return count;
}

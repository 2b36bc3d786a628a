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
import { aload, astore } from "../sync/atomic.js";
import { entry, ring_base } from "../mem/dirty_ring.js";
import { DirtyLogTimes, WriteProtectDesign } from "./write_protect.js";

const MASK64 = (1n << 64n) - 1n;

/**
 * kvm_reset_dirty_gfn: write-protects the pages `offset + bit` of `mask` (up to 64 bits) of the
 * slot an entry names, one bitmap word at a time. Entries naming no slot, or pages past its end,
 * are skipped silently, as KVM does. Inside the design's section.
 */
function reset_dirty_gfn(
  kvm: Kvm,
  design: WriteProtectDesign,
  slot: number,
  offset: number,
  mask: bigint,
): void {
  const id = slot & 0xffff;
  if (slot >>> 16 !== 0 || id >= KVM_USER_MEM_SLOTS || mask === 0n) return;
  if (aload(kvm.slots, SLOT.active(id)) === 0) return;
  const fls = mask.toString(2).length - 1;
  if (offset + fls >= kvm.slots[SLOT.npages(id)]) return;
  let w = offset >>> 5;
  for (let m = mask << BigInt(offset & 31); m !== 0n; m >>= 32n, w++) {
    const x = Number(m & 0xffffffffn) | 0;
    if (x !== 0) design.protectMasked(kvm, id, w, x);
  }
}

/**
 * kvm_dirty_ring_reset of vCPU v, inside the design's section: frees every harvested (RESET)
 * entry from reset_index on, coalescing offsets of one slot within 64 pages (forwards and
 * backwards) into one mask, and re-protects them. Returns the entries reset.
 */
function dirty_ring_reset(kvm: Kvm, design: WriteProtectDesign, v: number): number {
  const ring = kvm.dirtyRing;
  const size = kvm.ctl[CTL.dirty_ring_size];
  const b = ring_base(kvm, v);
  let reset = ring[b + RING_HDR.reset_index]; // written only here, under slots_lock
  let count = 0;
  let curSlot = 0;
  let curOffset = 0;
  let mask = 0n;
  // The walk follows the RESET flags, not dirty_index: the vCPU publishes flags before it
  // advances dirty_index, so a harvested entry may not be counted there yet, and it must be
  // reset (protected) now, before userspace reads its page. At most one lap.
  while (count < size) {
    const e = entry(size, reset);
    if ((aload(ring, b + RING_GFN.flags(e)) & KVM_DIRTY_GFN_F_RESET) === 0) break;
    const slot = aload(ring, b + RING_GFN.slot(e));
    const offset = aload(ring, b + RING_GFN.offset_lo(e));
    astore(ring, b + RING_GFN.flags(e), 0);
    reset = (reset + 1) | 0;
    count++;
    if (mask !== 0n) {
      if (slot === curSlot) {
        const delta = offset - curOffset;
        if (delta >= 0 && delta < 64) {
          mask |= 1n << BigInt(delta);
          continue;
        }
        // Backwards within 64 pages, if no bit falls off the top.
        const d = BigInt(-delta);
        if (delta > -64 && delta < 0 && ((mask << d) & MASK64) >> d === mask) {
          curOffset = offset;
          // Bug reset-coalesce-backward: the new lowest page is not put in the mask.
          mask = (mask << d) | (kvm.bug(BUG["reset-coalesce-backward"]) ? 0n : 1n);
          continue;
        }
      }
      reset_dirty_gfn(kvm, design, curSlot, curOffset, mask);
    }
    curSlot = slot;
    curOffset = offset;
    mask = 1n;
  }
  reset_dirty_gfn(kvm, design, curSlot, curOffset, mask);
  astore(ring, b + RING_HDR.reset_index, reset);
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
  design.harvestBegin(kvm, times);
  try {
    for (let v = 0; v < n; v++) count += dirty_ring_reset(kvm, design, v);
  } finally {
    design.harvestEnd(kvm, count > 0, times);
  }
  times.dirtyPages += count;
  // Only now may a blocked vCPU go on: its pages are protected and the TLBs flushed.
  for (let v = 0; v < n; v++) Atomics.notify(kvm.dirtyRing, ring_base(kvm, v) + RING_HDR.reset_index);
  return count;
}

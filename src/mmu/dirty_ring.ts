/**
 * The per-vCPU dirty ring (KVM_CAP_DIRTY_LOG_RING): the vCPU pushes {slot, offset} entries,
 * userspace harvests them in order and marks them RESET, and KVM_RESET_DIRTY_RINGS walks the
 * RESET entries, frees them and write-protects their pages again through the VM's design.
 *
 * All rings live in one SharedArrayBuffer (`kvm.dirtyRing`): vCPU v's ring starts at
 * v * ring_words(size), a header (RING_HDR) then `size` entries of four words (RING_GFN).
 *
 * Ordering: the vCPU stores slot and offset, then flags = DIRTY (Atomics.store: a release), then
 * dirty_index. The harvester loads flags (Atomics.load: an acquire) before slot and offset, so a
 * DIRTY entry always carries its own page. RESET is published the same way, and the reset loads
 * flags before it reads slot and offset.
 */
import {
  BUG,
  CTL_DIRTY_RING_FULL_EXITS,
  CTL_DIRTY_RING_SIZE,
  CTL_NR_VCPUS,
  Kvm,
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_DIRTY_RING_RSVD_ENTRIES,
  KVM_REQ_DIRTY_RING_SOFT_FULL,
  KVM_USER_MEM_SLOTS,
  RING_DIRTY_INDEX,
  RING_FETCH_INDEX,
  RING_FULL_EXITS,
  RING_GFN_FLAGS,
  RING_GFN_OFFSET,
  RING_GFN_SLOT,
  RING_GFN_WORDS,
  RING_HDR_WORDS,
  RING_RESET_INDEX,
  SLOT_ACTIVE,
  SLOT_NPAGES,
  SLOT_STRIDE,
  VCPU_REQUESTS,
  VCPU_STRIDE,
} from "../kvm_host.js";
import { aadd, aload, aor, astore, schedHookInstalled, spinPoint } from "../sync/atomic.js";
import { DirtyLogTimes, WriteProtectDesign } from "./write_protect.js";

/** Int32 words of one vCPU's ring of `size` entries. */
export function ring_words(size: number): number {
  return RING_HDR_WORDS + size * RING_GFN_WORDS;
}

/** Index in kvm.dirtyRing of vCPU v's ring header. */
export function ring_base(kvm: Kvm, v: number): number {
  return v * ring_words(kvm.ctl[CTL_DIRTY_RING_SIZE]);
}

function entry(base: number, size: number, index: number): number {
  return base + RING_HDR_WORDS + (index & (size - 1)) * RING_GFN_WORDS;
}

/*
 * kvm_get_running_vcpu(): the vCPU this thread runs, -1 on a thread that runs none (the VM
 * owner, the host thread). A vCPU worker sets it once; the explorer sets it around a vCPU step.
 */
let runningVcpu = -1;

export function kvm_set_running_vcpu(id: number): void {
  runningVcpu = id;
}

export function kvm_get_running_vcpu(): number {
  return runningVcpu;
}

/** Used entries of vCPU v's ring (dirty_index - reset_index, u32). */
export function kvm_dirty_ring_used(kvm: Kvm, v: number): number {
  const b = ring_base(kvm, v);
  return (aload(kvm.dirtyRing, b + RING_DIRTY_INDEX) - aload(kvm.dirtyRing, b + RING_RESET_INDEX)) >>> 0;
}

export function kvm_dirty_ring_soft_full(kvm: Kvm, v: number): boolean {
  return kvm_dirty_ring_used(kvm, v) >= kvm.ctl[CTL_DIRTY_RING_SIZE] - KVM_DIRTY_RING_RSVD_ENTRIES;
}

/**
 * kvm_dirty_ring_push, on vCPU v's own thread: the entry, then flags = DIRTY, then dirty_index.
 * At the soft limit it requests KVM_REQ_DIRTY_RING_SOFT_FULL: the vCPU leaves at its next entry.
 * A truly full ring cannot happen (the vCPU stops at size - 64); KVM only warns.
 */
export function kvm_dirty_ring_push(kvm: Kvm, v: number, slot: number, offset: number): void {
  const ring = kvm.dirtyRing;
  const size = kvm.ctl[CTL_DIRTY_RING_SIZE];
  const b = ring_base(kvm, v);
  const di = ring[b + RING_DIRTY_INDEX]; // only this vCPU writes it
  const e = entry(b, size, di);
  if (kvm.bug(BUG["ring-flags-before-entry"])) {
    // Bug: the entry is published before it is filled: a harvester may read the old page.
    astore(ring, e + RING_GFN_FLAGS, KVM_DIRTY_GFN_F_DIRTY);
    astore(ring, e + RING_GFN_SLOT, slot);
    astore(ring, e + RING_GFN_OFFSET, offset);
  } else {
    astore(ring, e + RING_GFN_SLOT, slot);
    astore(ring, e + RING_GFN_OFFSET, offset);
    // smp_wmb + set_dirtied: Atomics.store orders the two stores above before it.
    astore(ring, e + RING_GFN_FLAGS, KVM_DIRTY_GFN_F_DIRTY);
  }
  astore(ring, b + RING_DIRTY_INDEX, (di + 1) | 0);
  if (kvm_dirty_ring_soft_full(kvm, v))
    aor(kvm.vcpu, v * VCPU_STRIDE + VCPU_REQUESTS, KVM_REQ_DIRTY_RING_SOFT_FULL);
}

/**
 * One wait of vCPU v in a ring-full exit: true while the ring is still soft-full (after up to
 * 50 ms asleep on reset_index, or one scheduling point under the explorer).
 */
export function kvm_dirty_ring_wait(kvm: Kvm, v: number): boolean {
  if (!kvm_dirty_ring_soft_full(kvm, v)) return false;
  const i = ring_base(kvm, v) + RING_RESET_INDEX;
  if (schedHookInstalled()) spinPoint(kvm.dirtyRing, i);
  else Atomics.wait(kvm.dirtyRing, i, Atomics.load(kvm.dirtyRing, i), 50);
  return true;
}

/** Counts a KVM_EXIT_DIRTY_RING_FULL of vCPU v and wakes whoever waits for one. */
export function kvm_dirty_ring_full_exit(kvm: Kvm, v: number): void {
  aadd(kvm.dirtyRing, ring_base(kvm, v) + RING_FULL_EXITS, 1);
  aadd(kvm.ctl, CTL_DIRTY_RING_FULL_EXITS, 1);
  Atomics.notify(kvm.ctl, CTL_DIRTY_RING_FULL_EXITS);
}

/**
 * Userspace's harvest of vCPU v's ring (the selftest's and QEMU's reaper): from fetch_index, in
 * order and without skipping, every entry whose flags are DIRTY (acquire) is passed to fn and
 * marked RESET (release). Stops at the first entry that is not DIRTY or after `max` entries.
 * Returns the number harvested. One harvester per ring at a time (the caller serialises).
 */
export function kvm_dirty_ring_harvest(
  kvm: Kvm,
  v: number,
  max: number,
  fn: (slot: number, offset: number) => void,
): number {
  const ring = kvm.dirtyRing;
  const size = kvm.ctl[CTL_DIRTY_RING_SIZE];
  const b = ring_base(kvm, v);
  let fetch = aload(ring, b + RING_FETCH_INDEX);
  let n = 0;
  while (n < max) {
    const e = entry(b, size, fetch);
    if (aload(ring, e + RING_GFN_FLAGS) !== KVM_DIRTY_GFN_F_DIRTY) break;
    const slot = aload(ring, e + RING_GFN_SLOT);
    const offset = aload(ring, e + RING_GFN_OFFSET);
    astore(ring, e + RING_GFN_FLAGS, KVM_DIRTY_GFN_F_RESET);
    fetch = (fetch + 1) | 0;
    n++;
    fn(slot, offset);
  }
  astore(ring, b + RING_FETCH_INDEX, fetch);
  return n;
}

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
  const r = id * SLOT_STRIDE;
  if (aload(kvm.slots, r + SLOT_ACTIVE) === 0) return;
  const fls = mask.toString(2).length - 1;
  if (offset + fls >= kvm.slots[r + SLOT_NPAGES]) return;
  let w = offset >>> 5;
  for (let m = mask << BigInt(offset & 31); m !== 0n; m >>= 32n, w++) {
    const x = Number(m & 0xffffffffn) | 0;
    if (x !== 0) design.protectMasked(kvm, r, w, x);
  }
}

/**
 * kvm_dirty_ring_reset of vCPU v, inside the design's section: frees every harvested (RESET)
 * entry from reset_index on, coalescing offsets of one slot within 64 pages (forwards and
 * backwards) into one mask, and re-protects them. Returns the entries reset.
 */
function dirty_ring_reset(kvm: Kvm, design: WriteProtectDesign, v: number): number {
  const ring = kvm.dirtyRing;
  const size = kvm.ctl[CTL_DIRTY_RING_SIZE];
  const b = ring_base(kvm, v);
  let reset = ring[b + RING_RESET_INDEX]; // written only here, under slots_lock
  let count = 0;
  let curSlot = 0;
  let curOffset = 0;
  let mask = 0n;
  // The walk follows the RESET flags, not dirty_index: the vCPU publishes flags before it
  // advances dirty_index, so a harvested entry may not be counted there yet, and it must be
  // reset (protected) now, before userspace reads its page. At most one lap.
  while (count < size) {
    const e = entry(b, size, reset);
    if ((aload(ring, e + RING_GFN_FLAGS) & KVM_DIRTY_GFN_F_RESET) === 0) break;
    const slot = aload(ring, e + RING_GFN_SLOT);
    const offset = aload(ring, e + RING_GFN_OFFSET);
    astore(ring, e + RING_GFN_FLAGS, 0);
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
  astore(ring, b + RING_RESET_INDEX, reset);
  return count;
}

/**
 * KVM_RESET_DIRTY_RINGS: resets every vCPU's ring inside one section of the design (mmu_lock,
 * or the lockless design's RCU read section), flushes remote TLBs if anything was reset, then
 * wakes the vCPUs that wait in a ring-full exit. slots_lock held by the caller. Returns the
 * entries reset.
 */
export function kvm_reset_dirty_rings(kvm: Kvm, design: WriteProtectDesign, times: DirtyLogTimes): number {
  if (kvm.ctl[CTL_DIRTY_RING_SIZE] === 0) return 0;
  const n = aload(kvm.ctl, CTL_NR_VCPUS);
  let count = 0;
  design.harvestBegin(kvm, times);
  try {
    for (let v = 0; v < n; v++) count += dirty_ring_reset(kvm, design, v);
  } finally {
    design.harvestEnd(kvm, count > 0, times);
  }
  times.dirtyPages += count;
  // Only now may a blocked vCPU go on: its pages are protected and the TLBs flushed.
  for (let v = 0; v < n; v++) Atomics.notify(kvm.dirtyRing, ring_base(kvm, v) + RING_RESET_INDEX);
  return count;
}

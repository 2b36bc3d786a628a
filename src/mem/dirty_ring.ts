/**
 * The per-vCPU dirty ring (KVM_CAP_DIRTY_LOG_RING): the vCPU pushes {slot, offset} entries,
 * userspace harvests them in order and marks them RESET, and KVM_RESET_DIRTY_RINGS walks the
 * RESET entries, frees them and write-protects their pages again through the VM's design
 * (the reset is in src/mmu/dirty_ring.ts: it needs the write-protect design; this file is what
 * the vCPU and the harvester need, below the MMU).
 *
 * All rings live in one SharedArrayBuffer (`kvm.dirtyRing`): vCPU v's ring starts at
 * v * ring_words(size), a header (RING_HDR) then `size` entries of four words (RING_GFN).
 *
 * Ordering: the vCPU stores slot and offset, then flags = DIRTY (Atomics.store: a release), then
 * dirty_index. The harvester loads flags (Atomics.load: an acquire) before slot and offset, so a
 * DIRTY entry always carries its own page. RESET is published the same way, and the reset loads
 * flags before it reads slot and offset.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import {
  BUG,
  CTL,
  Kvm,
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_DIRTY_RING_RSVD_ENTRIES,
  KVM_REQ_DIRTY_RING_SOFT_FULL,
  RING_GFN,
  RING_HDR,
  VCPU,
} from "../kvm_host.js";
import { aadd, aload, aor, aread, astore, schedHookInstalled, spinPoint } from "../sync/atomic.js";

/** Int32 words of one vCPU's ring of `size` entries. */
export function ring_words(size: number): number {
  return RING_GFN.row(size);
}

/** Index in kvm.dirtyRing of vCPU v's ring header. */
export function ring_base(kvm: Kvm, v: number): number {
  return v * ring_words(kvm.ctl[CTL.dirty_ring_size]);
}

/** The entry (row of RING_GFN) that free-running index `index` names in a ring of `size`. */
export function entry(size: number, index: number): number {
  return index & (size - 1);
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
  return (
    (aload(kvm.dirtyRing, b + RING_HDR.dirty_index) - aload(kvm.dirtyRing, b + RING_HDR.reset_index)) >>> 0
  );
}

export function kvm_dirty_ring_soft_full(kvm: Kvm, v: number): boolean {
  return kvm_dirty_ring_used(kvm, v) >= kvm.ctl[CTL.dirty_ring_size] - KVM_DIRTY_RING_RSVD_ENTRIES;
}

/**
 * kvm_dirty_ring_push, on vCPU v's own thread: the entry, then flags = DIRTY, then dirty_index.
 * At the soft limit it requests KVM_REQ_DIRTY_RING_SOFT_FULL: the vCPU leaves at its next entry.
 * A truly full ring cannot happen (the vCPU stops at size - 64); KVM only warns.
 */
export function kvm_dirty_ring_push(kvm: Kvm, v: number, slot: number, offset: number): void {
  const kfd = kfunc_enter(KF.kvm_dirty_ring_push);
  try {
    const ring = kvm.dirtyRing;
    const size = kvm.ctl[CTL.dirty_ring_size];
    const b = ring_base(kvm, v);
    const di = ring[b + RING_HDR.dirty_index]; // only this vCPU writes it
    const e = entry(size, di);
    if (kvm.bug(BUG["ring-flags-before-entry"])) {
      // Bug: the entry is published before it is filled: a harvester may read the old page.
      astore(ring, b + RING_GFN.flags(e), KVM_DIRTY_GFN_F_DIRTY);
      astore(ring, b + RING_GFN.slot(e), slot);
      astore(ring, b + RING_GFN.offset_lo(e), offset);
    } else {
      astore(ring, b + RING_GFN.slot(e), slot);
      astore(ring, b + RING_GFN.offset_lo(e), offset);
      // smp_wmb + set_dirtied: Atomics.store orders the two stores above before it.
      astore(ring, b + RING_GFN.flags(e), KVM_DIRTY_GFN_F_DIRTY);
    }
    astore(ring, b + RING_HDR.dirty_index, (di + 1) | 0);
    if (kvm_dirty_ring_soft_full(kvm, v)) aor(kvm.vcpu, VCPU.requests(v), KVM_REQ_DIRTY_RING_SOFT_FULL);
  } finally {
    kfunc_exit(kfd);
  }
}

/**
 * One wait of vCPU v in a ring-full exit: true while the ring is still soft-full (after up to
 * 50 ms asleep on reset_index, or one scheduling point under the explorer).
 */
export function kvm_dirty_ring_wait(kvm: Kvm, v: number): boolean {
  if (!kvm_dirty_ring_soft_full(kvm, v)) return false;
  const i = ring_base(kvm, v) + RING_HDR.reset_index;
  if (schedHookInstalled()) spinPoint(kvm.dirtyRing, i);
  else Atomics.wait(kvm.dirtyRing, i, Atomics.load(kvm.dirtyRing, i), 50);
  return true;
}

/** Counts a KVM_EXIT_DIRTY_RING_FULL of vCPU v and wakes whoever waits for one. */
export function kvm_dirty_ring_full_exit(kvm: Kvm, v: number): void {
  aadd(kvm.dirtyRing, ring_base(kvm, v) + RING_HDR.full_exits, 1);
  aadd(kvm.ctl, CTL.dirty_ring_full_exits, 1);
  Atomics.notify(kvm.ctl, CTL.dirty_ring_full_exits);
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
  const kfd = kfunc_enter(KF.kvm_dirty_ring_harvest);
  try {
    const ring = kvm.dirtyRing;
    const size = kvm.ctl[CTL.dirty_ring_size];
    const b = ring_base(kvm, v);
    let fetch = aload(ring, b + RING_HDR.fetch_index);
    let n = 0;
    while (n < max) {
      const e = entry(size, fetch);
      if (aload(ring, b + RING_GFN.flags(e)) !== KVM_DIRTY_GFN_F_DIRTY) break;
      // READ_ONCE: the acquire load of the flags orders these after the vCPU's stores of them.
      const slot = aread(ring, b + RING_GFN.slot(e));
      const offset = aread(ring, b + RING_GFN.offset_lo(e));
      astore(ring, b + RING_GFN.flags(e), KVM_DIRTY_GFN_F_RESET);
      fetch = (fetch + 1) | 0;
      n++;
      fn(slot, offset);
    }
    astore(ring, b + RING_HDR.fetch_index, fetch);
    return n;
  } finally {
    kfunc_exit(kfd);
  }
}

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
 * DIRTY entry always carries its own page. The harvester's RESET and the reset's 0 are plain
 * stores: slots_lock orders the harvest before the reset, and the reset's release store of
 * reset_index orders its stores before the vCPU reuses those entries.
 */
import { KF, kfunc_enter, kfunc_exit, kfunc_ret } from "../sync/kfunc.js";
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
import { aadd, aload, aor, aread, astore, awrite, schedHookInstalled, spinPoint } from "../sync/atomic.js";
import { TracePhase } from "../sync/trace_ring.js";
import { TP } from "../sync/tracepoints.js";

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

/**
 * kvm_set_running_vcpu: vCPU `id` of this VM runs on this thread from now on (-1: none). Per
 * thread and per VM, as KVM's per-CPU kvm_running_vcpu whose vcpu->kvm mark_page_dirty_in_slot
 * checks: a write to another VM from this thread is no vCPU write there. A vCPU worker sets it
 * once; the explorer sets it around a vCPU step.
 */
export function kvm_set_running_vcpu(kvm: Kvm, id: number): void {
  kvm.running_vcpu = id;
}

/** kvm_get_running_vcpu: the vCPU of this VM this thread runs, -1 on a thread that runs none. */
export function kvm_get_running_vcpu(kvm: Kvm): number {
  return kvm.running_vcpu;
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
  if (kvm.trace.on && kvm.trace.sampled())
    kvm.trace.emit(
      TP.kvm_dirty_ring_push,
      TracePhase.Instant,
      v,
      di + 1,
      ring[b + RING_HDR.reset_index],
      slot,
      offset,
    );
  if (kvm_dirty_ring_soft_full(kvm, v)) aor(kvm.vcpu, VCPU.requests(v), KVM_REQ_DIRTY_RING_SOFT_FULL);
  kfunc_exit(kfd);
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

/**
 * The sleep userspace asked for after each ring-full exit of vCPU v, in us (QEMU's
 * cpu->throttle_us_per_full, set by dirty-limit; 0: none).
 */
export function kvm_dirty_ring_throttle_us(kvm: Kvm, v: number): number {
  return aload(kvm.dirtyRing, ring_base(kvm, v) + RING_HDR.throttle_us);
}

/** Counts a KVM_EXIT_DIRTY_RING_FULL of vCPU v and wakes whoever waits for one. */
export function kvm_dirty_ring_full_exit(kvm: Kvm, v: number): void {
  if (kvm.trace.on) kvm.trace.emit(TP.kvm_dirty_ring_exit, TracePhase.Instant, v);
  aadd(kvm.dirtyRing, ring_base(kvm, v) + RING_HDR.full_exits, 1);
  aadd(kvm.ctl, CTL.dirty_ring_full_exits, 1);
  Atomics.notify(kvm.ctl, CTL.dirty_ring_full_exits);
}

/**
 * Userspace's harvest of vCPU v's ring (the selftest's and QEMU's reaper): from fetch_index, in
 * order and without skipping, every entry whose flags are DIRTY is copied to slots[k],
 * offsets[k] (k = 0, 1, ...) and marked RESET. Stops at the first entry that is not DIRTY, after
 * `max` entries or when the arrays are full. Returns the number harvested: no object per entry.
 * One harvester per ring at a time (the caller serialises, with slots_lock).
 */
export function kvm_dirty_ring_harvest(
  kvm: Kvm,
  v: number,
  slots: Int32Array,
  offsets: Int32Array,
  max: number,
): number {
  const kfd = kfunc_enter(KF.kvm_dirty_ring_harvest);
  const ring = kvm.dirtyRing;
  const size = kvm.ctl[CTL.dirty_ring_size];
  const b = ring_base(kvm, v);
  const lim = Math.min(max, slots.length, offsets.length, size);
  const fetch = aload(ring, b + RING_HDR.fetch_index);
  // The run of DIRTY entries, by READ_ONCE of the flags; then one acquire load, of the last
  // one's flags, instead of one per entry (QEMU's load_acquire each): the vCPU publishes the
  // flags of its ring in ring order, each with a release, so the acquire that sees the last
  // DIRTY orders the slot and offset of every entry before it too. Should it not see DIRTY
  // (a plain read may run ahead), the run ends one entry earlier.
  let n = 0;
  while (n < lim && aread(ring, b + RING_GFN.flags(entry(size, fetch + n))) === KVM_DIRTY_GFN_F_DIRTY) n++;
  while (n > 0 && aload(ring, b + RING_GFN.flags(entry(size, fetch + n - 1))) !== KVM_DIRTY_GFN_F_DIRTY) n--;
  for (let k = 0; k < n; k++) {
    const e = entry(size, fetch + k);
    slots[k] = aread(ring, b + RING_GFN.slot(e));
    offsets[k] = aread(ring, b + RING_GFN.offset_lo(e));
    // QEMU stores RESET with a release; here the harvest and the reset both hold slots_lock,
    // whose unlock publishes it, and the vCPU never reads flags: a plain store.
    awrite(ring, b + RING_GFN.flags(e), KVM_DIRTY_GFN_F_RESET);
  }
  astore(ring, b + RING_HDR.fetch_index, (fetch + n) | 0);
  return kfunc_ret(kfd, n);
}

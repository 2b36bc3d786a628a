/**
 * The dirty-ring ioctls (KVM_CAP_DIRTY_LOG_RING, KVM_RESET_DIRTY_RINGS) and userspace's side of
 * the rings: harvest, ring-full statistics and the wait for a ring-full exit. The rings
 * themselves are src/mem/dirty_ring.ts; the reset's re-protection is src/mmu/dirty_ring.ts.
 */
import {
  CTL,
  KVM_DIRTY_RING_MAX_ENTRIES,
  KVM_DIRTY_RING_MIN_ENTRIES,
  KVM_USER_MEM_SLOTS,
  RING_HDR,
  SLOT,
} from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { kvm_dirty_ring_harvest, ring_base, ring_words } from "../mem/dirty_ring.js";
import { kvm_reset_dirty_rings } from "../mmu/dirty_ring.js";
import { kvm_arch_sync_dirty_log, wp_design } from "../mmu/dirty_log.js";
import { waitAsyncAlive } from "../sync/atomic.js";
import { isInt, vm_throw_if_failed, vm_timed_dirty_log_call, VmState } from "./state.js";

/** One harvested dirty-ring entry: slot id and page offset in the slot. */
export interface DirtyGfn {
  slot: number;
  offset: number;
}

/** Vm.enableDirtyRing (KVM_CAP_DIRTY_LOG_RING): see there. */
export function kvm_vm_ioctl_enable_dirty_log_ring(
  st: VmState,
  entries: number,
  opts: { withBitmap?: boolean },
): void {
  const kvm = st.kvm;
  // KVM's order: a power of two (EINVAL), then the upper bound (E2BIG); 2^53 is a power of two.
  if (
    typeof entries !== "number" ||
    !Number.isInteger(entries) ||
    entries <= 0 ||
    entries !== 2 ** Math.round(Math.log2(entries))
  )
    throw einval("entries", `must be a power of two, got ${String(entries)}`);
  if (entries < KVM_DIRTY_RING_MIN_ENTRIES)
    throw einval(
      "entries",
      `must be at least ${KVM_DIRTY_RING_MIN_ENTRIES} (one page of entries), got ${entries}`,
    );
  if (entries > KVM_DIRTY_RING_MAX_ENTRIES)
    throw new KvmError("E2BIG", `entries: at most ${KVM_DIRTY_RING_MAX_ENTRIES}, got ${entries}`);
  if (kvm.ctl[CTL.dirty_ring_size] !== 0) throw einval("entries", "the dirty ring is already enabled");
  if (st.created.size !== 0) throw einval("entries", "the dirty ring must be enabled before any vCPU exists");
  const withBitmap = (opts ?? {}).withBitmap ?? false;
  if (typeof withBitmap !== "boolean")
    throw einval("withBitmap", `must be a boolean, got ${String(withBitmap)}`);
  kvm.slots_lock.lock();
  try {
    if (withBitmap)
      for (let id = 0; id < KVM_USER_MEM_SLOTS; id++)
        if (kvm.slots[SLOT.active(id)] !== 0)
          throw einval("withBitmap", "the ring's bitmap must be enabled before any memslot exists");
    let ring: SharedArrayBuffer;
    try {
      ring = new SharedArrayBuffer(st.shared.config.maxVcpus * ring_words(entries) * 4);
    } catch (e) {
      throw new KvmError("ENOMEM", `entries: cannot allocate the rings (${(e as Error).message})`);
    }
    // Before any vCPU exists: every worker attaches to this buffer.
    st.shared.dirtyRing = ring;
    kvm.dirtyRing = new Int32Array(ring);
    kvm.ctl[CTL.dirty_ring_with_bitmap] = withBitmap ? 1 : 0;
    Atomics.store(kvm.ctl, CTL.dirty_ring_size, entries);
  } finally {
    kvm.slots_lock.unlock();
  }
}

function check_ring_vcpu(st: VmState, vcpuId: number): void {
  if (st.kvm.ctl[CTL.dirty_ring_size] === 0) throw einval("vcpuId", "the dirty ring is not enabled");
  if (!isInt(vcpuId) || !st.created.has(vcpuId)) throw einval("vcpuId", `no vCPU ${String(vcpuId)}`);
}

/** Vm.harvestDirtyRingInto: see there. */
export function vm_harvest_dirty_ring_into(
  st: VmState,
  vcpuId: number,
  slots: Int32Array,
  offsets: Int32Array,
): number {
  check_ring_vcpu(st, vcpuId);
  if (!(slots instanceof Int32Array)) throw einval("slots", `must be an Int32Array, got ${String(slots)}`);
  if (!(offsets instanceof Int32Array))
    throw einval("offsets", `must be an Int32Array, got ${String(offsets)}`);
  if (offsets.length !== slots.length)
    throw einval("offsets", `must have the length of slots (${slots.length}), got ${offsets.length}`);
  st.kvm.slots_lock.lock();
  try {
    // With PML the vCPUs' buffers reach the rings only at an exit: kick them first, as QEMU's
    // kvm_dirty_ring_flush does (kvm_cpu_synchronize_kick_all) before it reaps.
    kvm_arch_sync_dirty_log(st.kvm);
    return kvm_dirty_ring_harvest(st.kvm, vcpuId, slots, offsets, slots.length);
  } finally {
    st.kvm.slots_lock.unlock();
  }
}

/** Vm.harvestDirtyRing: vm_harvest_dirty_ring_into, then one object per entry. */
export function vm_harvest_dirty_ring(st: VmState, vcpuId: number, max: number): DirtyGfn[] {
  check_ring_vcpu(st, vcpuId);
  if (!(max === Infinity || (isInt(max) && max >= 0)))
    throw einval("max", `must be an integer >= 0, got ${String(max)}`);
  // A ring never holds more than its size of DIRTY entries.
  const cap = Math.min(max, st.kvm.ctl[CTL.dirty_ring_size]);
  const slots = new Int32Array(cap);
  const offsets = new Int32Array(cap);
  const n = vm_harvest_dirty_ring_into(st, vcpuId, slots, offsets);
  const out: DirtyGfn[] = [];
  for (let k = 0; k < n; k++) out.push({ slot: slots[k], offset: offsets[k] });
  return out;
}

/** Vm.resetDirtyRings (KVM_RESET_DIRTY_RINGS): see there. */
export function kvm_vm_ioctl_reset_dirty_pages(st: VmState): number {
  const kvm = st.kvm;
  if (kvm.ctl[CTL.dirty_ring_size] === 0) throw einval("resetDirtyRings", "the dirty ring is not enabled");
  kvm.slots_lock.lock();
  try {
    return vm_timed_dirty_log_call(st, "reset", (call) => kvm_reset_dirty_rings(kvm, wp_design(kvm), call));
  } finally {
    kvm.slots_lock.unlock();
  }
}

/** Most a vCPU may be told to sleep per ring-full exit: 60 s. */
export const MAX_THROTTLE_US = 60_000_000;

/** Vm.setDirtyRingThrottle: see there. */
export function vm_set_dirty_ring_throttle(st: VmState, vcpuId: number, us: number): void {
  check_ring_vcpu(st, vcpuId);
  if (!isInt(us) || us < 0 || us > MAX_THROTTLE_US)
    throw einval("us", `must be an integer 0..${MAX_THROTTLE_US}, got ${String(us)}`);
  Atomics.store(st.kvm.dirtyRing, ring_base(st.kvm, vcpuId) + RING_HDR.throttle_us, us);
}

/** Vm.dirtyRingStats: see there. */
export function vm_dirty_ring_stats(st: VmState, vcpuId?: number): { fullExits: number; dropped: number } {
  const kvm = st.kvm;
  let fullExits: number;
  if (vcpuId === undefined) fullExits = Atomics.load(kvm.ctl, CTL.dirty_ring_full_exits);
  else {
    check_ring_vcpu(st, vcpuId);
    fullExits = Atomics.load(kvm.dirtyRing, ring_base(kvm, vcpuId) + RING_HDR.full_exits);
  }
  return { fullExits, dropped: Atomics.load(kvm.ctl, CTL.dirty_ring_dropped) };
}

/** Vm.waitDirtyRingFull: see there. */
export async function vm_wait_dirty_ring_full(
  st: VmState,
  opts: { since?: number; timeoutMs?: number },
): Promise<number> {
  const ctl = st.kvm.ctl;
  if (ctl[CTL.dirty_ring_size] === 0) throw einval("waitDirtyRingFull", "the dirty ring is not enabled");
  if (typeof opts !== "object" || opts === null)
    throw einval("opts", `must be an object, got ${String(opts)}`);
  const since = opts.since ?? Atomics.load(ctl, CTL.dirty_ring_full_exits);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  if (!isInt(since)) throw einval("since", `must be an integer, got ${String(since)}`);
  if (typeof timeoutMs !== "number" || !(timeoutMs >= 0))
    throw einval("timeoutMs", `must be a number >= 0, got ${String(timeoutMs)}`);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    vm_throw_if_failed(st);
    const n = Atomics.load(ctl, CTL.dirty_ring_full_exits);
    const left = deadline - performance.now();
    if (n > since || left <= 0) return n;
    await waitAsyncAlive(ctl, CTL.dirty_ring_full_exits, n, Math.min(left, 50));
  }
}

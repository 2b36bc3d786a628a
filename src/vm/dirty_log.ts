/**
 * The dirty-bitmap ioctls: KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG and
 * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2. Arguments are checked here, in KVM's order, under
 * slots_lock; the harvest and the protection are the MMU's (src/mmu/dirty_log.ts,
 * src/mmu/clear_dirty_log.ts). Each call's times are added to the VM's.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import {
  CTL,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_MEM_LOG_DIRTY_PAGES,
  SLOT,
} from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { kvm_get_dirty_log, wp_design } from "../mmu/dirty_log.js";
import { kvm_clear_dirty_log } from "../mmu/clear_dirty_log.js";
import { check_slot, check_slot_id, describe, isInt, vm_timed_dirty_log_call, VmState } from "./state.js";

/** ENXIO in ring mode without the bitmap (kvm_use_dirty_bitmap). */
function check_bitmap_mode(st: VmState, what: string): void {
  const ctl = st.kvm.ctl;
  if (ctl[CTL.dirty_ring_size] !== 0 && ctl[CTL.dirty_ring_with_bitmap] === 0)
    throw new KvmError("ENXIO", `${what}: the VM logs to dirty rings and has no dirty bitmap`);
}

/** Vm.getDirtyLog (KVM_GET_DIRTY_LOG): see there. */
export function kvm_vm_ioctl_get_dirty_log(st: VmState, slot: number, out?: Uint32Array): Uint32Array {
  const kfd = kfunc_enter(KF.kvm_vm_ioctl_get_dirty_log);
  try {
    const kvm = st.kvm;
    kvm.slots_lock.lock();
    try {
      check_bitmap_mode(st, "getDirtyLog");
      check_slot(kvm, slot);
      if ((kvm.slots[SLOT.flags(slot)] & KVM_MEM_LOG_DIRTY_PAGES) === 0)
        throw new KvmError("ENOENT", `slot: slot ${slot} is not dirty-logged`);
      const words = kvm.slots[SLOT.bitmap_words(slot)];
      // Checked before the harvest: a bad `out` must not cost the dirty bits it would carry.
      if (out !== undefined && !(out instanceof Uint32Array))
        throw einval("out", `must be a Uint32Array, got ${describe(out)}`);
      // KVM's copy_to_user fails on a short buffer: EFAULT (KVM has harvested by then; we have not).
      if (out !== undefined && out.length < words)
        throw new KvmError("EFAULT", `out: needs ${words} words, got ${out.length}`);
      const bitmap = out ?? new Uint32Array(words);
      vm_timed_dirty_log_call(st, "get", (call) => kvm_get_dirty_log(kvm, slot, bitmap, call), [slot]);
      return bitmap;
    } finally {
      kvm.slots_lock.unlock();
    }
  } finally {
    kfunc_exit(kfd);
  }
}

/** Vm.enableManualDirtyLogProtect (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): see there. */
export function kvm_vm_enable_manual_dirty_log_protect(st: VmState, flags: number): void {
  const all = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
  if (!isInt(flags) || (flags & ~all) !== 0)
    throw einval("flags", `unknown flags ${String(flags)} (known: 1 MANUAL_PROTECT_ENABLE, 2 INITIALLY_SET)`);
  if (flags === KVM_DIRTY_LOG_INITIALLY_SET)
    throw einval("flags", "INITIALLY_SET requires MANUAL_PROTECT_ENABLE");
  const kvm = st.kvm;
  kvm.slots_lock.lock();
  try {
    Atomics.store(kvm.ctl, CTL.manual_dirty_log, flags);
  } finally {
    kvm.slots_lock.unlock();
  }
}

/** KVM_CLEAR_DIRTY_LOG's checks of the range and the bitmap, in KVM's order. slots_lock held. */
function check_clear_range(
  st: VmState,
  slot: number,
  firstPage: number,
  numPages: number,
  bitmap: Uint32Array,
): void {
  const kvm = st.kvm;
  check_bitmap_mode(st, "clearDirtyLog");
  // KVM's order: the id, then first_page's alignment, then whether the slot exists.
  check_slot_id(slot);
  if (!isInt(firstPage) || firstPage < 0 || firstPage % 64 !== 0)
    throw einval("firstPage", `must be a multiple of 64, got ${String(firstPage)}`);
  check_slot(kvm, slot);
  if ((kvm.slots[SLOT.flags(slot)] & KVM_MEM_LOG_DIRTY_PAGES) === 0)
    throw new KvmError("ENOENT", `slot: slot ${slot} is not dirty-logged (no bitmap)`);
  const npages = kvm.slots[SLOT.npages(slot)];
  if (firstPage > npages)
    throw einval("firstPage", `${firstPage} is past the end of slot ${slot} (${npages} pages)`);
  if (!isInt(numPages) || numPages < 0 || numPages > npages - firstPage)
    throw einval(
      "numPages",
      `must be 0..${npages - firstPage} from page ${firstPage}, got ${String(numPages)}`,
    );
  if (numPages % 64 !== 0 && numPages < npages - firstPage)
    throw einval("numPages", `must be a multiple of 64 unless the range ends the slot, got ${numPages}`);
  if (!(bitmap instanceof Uint32Array))
    throw einval("bitmap", `must be a Uint32Array, got ${describe(bitmap)}`);
  if (bitmap.length < Math.ceil(numPages / 32))
    throw new KvmError("EFAULT", `bitmap: needs ${Math.ceil(numPages / 32)} words, got ${bitmap.length}`);
}

/** Vm.clearDirtyLog (KVM_CLEAR_DIRTY_LOG): see there. */
export function kvm_vm_ioctl_clear_dirty_log(
  st: VmState,
  slot: number,
  firstPage: number,
  numPages: number,
  bitmap: Uint32Array,
): number {
  const kfd = kfunc_enter(KF.kvm_vm_ioctl_clear_dirty_log);
  try {
    const kvm = st.kvm;
    kvm.slots_lock.lock();
    try {
      check_clear_range(st, slot, firstPage, numPages, bitmap);
      return vm_timed_dirty_log_call(
        st,
        "clear",
        (call) => kvm_clear_dirty_log(kvm, wp_design(kvm), slot, firstPage, numPages, bitmap, call),
        [slot, firstPage, numPages],
      );
    } finally {
      kvm.slots_lock.unlock();
    }
  } finally {
    kfunc_exit(kfd);
  }
}

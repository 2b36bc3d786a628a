/**
 * The host's reads and writes of guest-physical memory through the memslots (kvm_read_guest,
 * kvm_write_guest and page-sized reads for the oracles). A page still missing under post-copy
 * is refused (EFAULT).
 */
import { KVM_USER_MEM_SLOTS, PAGE_SIZE, SLOT } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { host_read_u64, hva_to_pfn } from "../mem/host_memory.js";
import { uffd_missing } from "../mem/userfault.js";
import { guest_range_check, guest_read, guest_write } from "../guest/host_access.js";
import { isInt, VmState } from "./state.js";

function missing(gpa: number): KvmError {
  return new KvmError(
    "EFAULT",
    `gpa: 0x${gpa.toString(16)} is missing (post-copy: the page has not arrived yet)`,
  );
}

/** Vm.readGuestU64: see there. */
export function vm_read_guest_u64(st: VmState, gpa: number): [number, number] {
  const gfn = Math.floor(gpa / PAGE_SIZE);
  const s = st.kvm.slots;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (!s[SLOT.active(id)]) continue;
    const base = s[SLOT.base_gfn(id)];
    if (gfn >= base && gfn < base + s[SLOT.npages(id)]) {
      if (uffd_missing(st.kvm, id, gfn)) throw missing(gpa);
      return host_read_u64(st.kvm, (s[SLOT.hva_page(id)] + gfn - base) * PAGE_SIZE + (gpa % PAGE_SIZE));
    }
  }
  throw new KvmError("EFAULT", `gpa: 0x${gpa.toString(16)} is in no memslot`);
}

/** Vm.readGuestPage: see there. */
export function vm_read_guest_page(st: VmState, gpa: number, out: Int32Array): Int32Array {
  if (!isInt(gpa) || gpa < 0 || gpa % PAGE_SIZE !== 0)
    throw einval("gpa", `must be a page-aligned address, got ${String(gpa)}`);
  if (!(out instanceof Int32Array)) throw einval("out", "must be an Int32Array");
  if (out.length < PAGE_SIZE / 4) throw einval("out", `needs ${PAGE_SIZE / 4} words, got ${out.length}`);
  const gfn = gpa / PAGE_SIZE;
  const kvm = st.kvm;
  const s = kvm.slots;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (!s[SLOT.active(id)]) continue;
    const base = s[SLOT.base_gfn(id)];
    if (gfn < base || gfn >= base + s[SLOT.npages(id)]) continue;
    if (uffd_missing(kvm, id, gfn)) throw missing(gpa);
    kvm.mm_lock.lock();
    try {
      const pfn = hva_to_pfn(kvm, s[SLOT.hva_page(id)] + gfn - base);
      out.set(kvm.mem.subarray(pfn * (PAGE_SIZE / 4), (pfn + 1) * (PAGE_SIZE / 4)));
    } finally {
      kvm.mm_lock.unlock();
    }
    return out;
  }
  throw new KvmError("EFAULT", `gpa: 0x${gpa.toString(16)} is in no memslot`);
}

/** Vm.writeGuest (kvm_write_guest): see there. */
export function kvm_write_guest(st: VmState, gpa: number, bytes: Uint8Array): void {
  if (!(bytes instanceof Uint8Array)) throw einval("bytes", "must be a Uint8Array");
  guest_range_check(st.kvm, gpa, bytes.length, true);
  guest_write(st.kvm, gpa, bytes);
}

/** Vm.readGuest (kvm_read_guest): see there. */
export function kvm_read_guest(st: VmState, gpa: number, length: number): Uint8Array {
  guest_range_check(st.kvm, gpa, length, false);
  return guest_read(st.kvm, gpa, length);
}

/**
 * Host-side access to guest-physical memory (kvm_read_guest / kvm_write_guest): through the
 * memslot's hva and the host page table, one page at a time under mm_lock, so the frame cannot
 * be migrated or reused while it is copied (the host thread migrates under mm_lock too).
 * Owner thread only: memslots change only on that thread, so the range check made first stays
 * true for the copy.
 */
import { Kvm, KVM_MEM_READONLY, PAGE_SIZE, SLOT } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { gfn_to_hva_page, gfn_to_memslot, mark_page_dirty_in_slot } from "../mem/memslot.js";
import { uffd_missing } from "../mem/userfault.js";
import { hva_to_pfn } from "../mem/host_memory.js";

const hex = (x: number): string => `0x${x.toString(16)}`;

/**
 * EINVAL unless gpa and length are non-negative integers; EFAULT unless every page of
 * [gpa, gpa + length) lies in a memslot with backing (and, for a write, not a read-only slot).
 */
export function guest_range_check(kvm: Kvm, gpa: number, length: number, write: boolean): void {
  if (typeof gpa !== "number" || !Number.isSafeInteger(gpa) || gpa < 0)
    throw einval("gpa", `must be a non-negative integer, got ${String(gpa)}`);
  if (typeof length !== "number" || !Number.isSafeInteger(length) || length < 0)
    throw einval("length", `must be a non-negative integer, got ${String(length)}`);
  if (length === 0) return;
  const last = Math.floor((gpa + length - 1) / PAGE_SIZE);
  for (let gfn = Math.floor(gpa / PAGE_SIZE); gfn <= last; gfn++) {
    const slot = gfn_to_memslot(kvm, gfn);
    if (slot < 0)
      throw new KvmError(
        "EFAULT",
        `gpa: ${hex(gfn * PAGE_SIZE)} (in [${hex(gpa)}, +${hex(length)})) is in no memslot`,
      );
    if (write && (kvm.slots[SLOT.flags(slot)] & KVM_MEM_READONLY) !== 0)
      throw new KvmError("EFAULT", `gpa: ${hex(gfn * PAGE_SIZE)} is in a read-only memslot`);
    if (hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn)) < 0)
      throw new KvmError("EFAULT", `gpa: ${hex(gfn * PAGE_SIZE)} has no host backing`);
    // The owner cannot block for the page (it is the thread that brings it): refused.
    if (uffd_missing(kvm, slot, gfn))
      throw new KvmError(
        "EFAULT",
        `gpa: ${hex(gfn * PAGE_SIZE)} is missing (post-copy: the page has not arrived yet)`,
      );
  }
}

/** The bytes of host memory of one frame, from byte `off`, `n` long. */
function frameBytes(kvm: Kvm, pfn: number, off: number, n: number): Uint8Array {
  return new Uint8Array(kvm.mem.buffer, kvm.mem.byteOffset + pfn * PAGE_SIZE + off, n);
}

/** Page by page: `each(pfn, off, n, done)` under mm_lock, then `after(slot, gfn)` without. */
function forEachPage(
  kvm: Kvm,
  gpa: number,
  length: number,
  each: (pfn: number, off: number, n: number, done: number) => void,
  after?: (slot: number, gfn: number) => void,
): void {
  let done = 0;
  while (done < length) {
    const a = gpa + done;
    const gfn = Math.floor(a / PAGE_SIZE);
    const off = a % PAGE_SIZE;
    const n = Math.min(PAGE_SIZE - off, length - done);
    const slot = gfn_to_memslot(kvm, gfn);
    kvm.mm_lock.lock();
    try {
      const pfn = hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn));
      each(pfn, off, n, done);
    } finally {
      kvm.mm_lock.unlock();
    }
    after?.(slot, gfn);
    done += n;
  }
}

/** kvm_write_guest after guest_range_check: copy, then mark_page_dirty per page. */
export function guest_write(kvm: Kvm, gpa: number, bytes: Uint8Array): void {
  forEachPage(
    kvm,
    gpa,
    bytes.length,
    (pfn, off, n, done) => frameBytes(kvm, pfn, off, n).set(bytes.subarray(done, done + n)),
    (slot, gfn) => mark_page_dirty_in_slot(kvm, slot, gfn),
  );
}

/** kvm_read_guest after guest_range_check, into `out` (its length is the length read). */
export function guest_read_into(kvm: Kvm, gpa: number, out: Uint8Array): Uint8Array {
  forEachPage(kvm, gpa, out.length, (pfn, off, n, done) => out.set(frameBytes(kvm, pfn, off, n), done));
  return out;
}

export function guest_read(kvm: Kvm, gpa: number, length: number): Uint8Array {
  return guest_read_into(kvm, gpa, new Uint8Array(length));
}

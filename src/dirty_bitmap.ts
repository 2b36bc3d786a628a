/**
 * Helpers on the dirty bitmaps vm.getDirtyLog returns (bit n of word n >> 5 = page base_gfn + n
 * of the slot): iterate and count the set bits, and copy the dirty pages of a slot into another
 * VM of the same layout or into a buffer: one round of a live migration.
 */
import { einval, KvmError } from "./errors.js";
import { KVM_USER_MEM_SLOTS, PAGE_SIZE, SLOT } from "./kvm_host.js";
import { guest_range_check, guest_read_into, guest_write } from "./guest/host_access.js";
import { bitmap_weight, hweight32 } from "./mem/dirty_bitmap.js";
import type { Vm } from "./vm.js";
import { vmKvm } from "./vm/internal.js";

export { bitmap_weight, hweight32 };

/** Calls fn(n) for every set bit n, in increasing order (for_each_set_bit). */
export function for_each_set_bit(bitmap: Uint32Array, fn: (bit: number) => void): void {
  for (let w = 0; w < bitmap.length; w++) {
    let x = bitmap[w];
    while (x !== 0) {
      const low = x & -x;
      fn(w * 32 + 31 - Math.clz32(low));
      x ^= low;
    }
  }
}

/** The set bits (slot-relative page numbers), in increasing order. */
export function dirtyPages(bitmap: Uint32Array): number[] {
  const out: number[] = [];
  for_each_set_bit(bitmap, (n) => out.push(n));
  return out;
}

/** Guest-physical base (bytes) and size (pages) of an existing slot. */
export function slotGeometry(vm: Vm, slot: number): { guestPhysAddr: number; pages: number } {
  if (!Number.isSafeInteger(slot) || slot < 0 || slot >= KVM_USER_MEM_SLOTS)
    throw einval("slot", `must be 0..${KVM_USER_MEM_SLOTS - 1}, got ${String(slot)}`);
  const s = vmKvm(vm).slots;
  if (s[SLOT.active(slot)] === 0) throw new KvmError("ENOENT", `slot: slot ${slot} does not exist`);
  return { guestPhysAddr: s[SLOT.base_gfn(slot)] * PAGE_SIZE, pages: s[SLOT.npages(slot)] };
}

function checkBitmap(bitmap: unknown, pages: number): asserts bitmap is Uint32Array {
  if (!(bitmap instanceof Uint32Array)) throw einval("bitmap", "must be a Uint32Array");
  const words = Math.ceil(pages / 32);
  if (bitmap.length < words)
    throw einval("bitmap", `needs ${words} words for ${pages} pages, got ${bitmap.length}`);
  const tail = pages % 32;
  if (tail !== 0 && bitmap[words - 1] >>> tail !== 0)
    throw einval("bitmap", `has bits beyond page ${pages - 1}`);
  for (let w = words; w < bitmap.length; w++)
    if (bitmap[w] !== 0) throw einval("bitmap", `has bits beyond page ${pages - 1}`);
}

/**
 * Copies the pages of `slot` set in `bitmap` from `src` into `dst` at the same guest-physical
 * addresses; `dst` is another Vm (its memory there must be in writable memslots; logged slots
 * there get the pages marked dirty) or a Uint8Array holding the whole slot (page n at n * 4096).
 * Returns the pages copied. Checks everything first (EINVAL, ENOENT, EFAULT) and copies nothing
 * on error. Each page is read under src's mm_lock, so it may run while src's vCPUs run (a page
 * they dirty meanwhile is in the next bitmap).
 */
export function copyDirtyPages(src: Vm, slot: number, bitmap: Uint32Array, dst: Vm | Uint8Array): number {
  const { guestPhysAddr, pages } = slotGeometry(src, slot);
  checkBitmap(bitmap, pages);
  const toBuf = dst instanceof Uint8Array;
  if (toBuf) {
    if (dst.length < pages * PAGE_SIZE)
      throw einval("dst", `needs ${pages * PAGE_SIZE} bytes for slot ${slot}, got ${dst.length}`);
  } else {
    if (dst === src) throw einval("dst", "must be another VM");
    guest_range_check(vmKvm(dst), guestPhysAddr, pages * PAGE_SIZE, true);
  }
  const from = vmKvm(src);
  const to = toBuf ? null : vmKvm(dst);
  const page = new Uint8Array(PAGE_SIZE);
  let n = 0;
  for_each_set_bit(bitmap, (p) => {
    const gpa = guestPhysAddr + p * PAGE_SIZE;
    if (toBuf) guest_read_into(from, gpa, dst.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
    else {
      guest_read_into(from, gpa, page);
      guest_write(to!, gpa, page);
    }
    n++;
  });
  return n;
}

/** Caller-owned room for harvested ring entries: entry k is slots[k], offsets[k] (same length). */
export interface DirtyGfnArrays {
  readonly slots: Int32Array;
  readonly offsets: Int32Array;
}

/** Room for `capacity` harvested entries (harvestDirtyRingsInto's scratch). */
export function dirtyGfnArrays(capacity: number): DirtyGfnArrays {
  return { slots: new Int32Array(capacity), offsets: new Int32Array(capacity) };
}

/**
 * harvestDirtyRingsInto's scratch when the caller gives none (made per call: a caller that
 * harvests often passes its own, as allocating typed arrays costs tens of microseconds).
 */
const DEFAULT_SCRATCH_ENTRIES = 1024;

/**
 * Harvests every vCPU's dirty ring (vm.harvestDirtyRingInto, through `scratch`, as often as it
 * comes back full) and sets, in `out`, the bit of each harvested page of `slot` (bit n = page n
 * of the slot); returns the entries harvested. No object per entry. The entries are marked
 * RESET but their pages stay writable: call vm.resetDirtyRings() before reading those pages.
 * A caller that harvests often passes its own scratch, sized as the ring (one call per vCPU).
 * `perVcpu`, when given, gains each vCPU's entries at its id (QEMU's cpu->dirty_pages).
 */
export function harvestDirtyRingsInto(
  vm: Vm,
  slot: number,
  out: Uint32Array,
  scratch: DirtyGfnArrays = dirtyGfnArrays(DEFAULT_SCRATCH_ENTRIES),
  perVcpu?: Float64Array,
): number {
  const { slots, offsets } = scratch;
  let n = 0;
  for (const id of vm.vcpuIds) {
    let got: number;
    do {
      got = vm.harvestDirtyRingInto(id, slots, offsets);
      n += got;
      if (perVcpu) perVcpu[id] += got;
      for (let k = 0; k < got; k++) {
        const off = offsets[k];
        if (slots[k] === slot) out[off >>> 5] |= 1 << (off & 31);
      }
    } while (got === slots.length && got > 0);
  }
  return n;
}

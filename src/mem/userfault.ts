/**
 * userfaultfd in MISSING mode on one memslot: how a post-copy destination runs a guest whose
 * pages have not all arrived. A missing page keeps its host frame (the contents are not valid
 * yet); a bit in the missing bitmap (kvm.uffd, layouts UFFD*) says so.
 *
 * A vCPU's fault that reaches a missing page (where gfn_to_pfn would hit the registered hole)
 * stores the gfn in its row, bumps req_seq and notifies it (the readable uffd), then waits on the
 * bitmap word, outside guest mode and without mmu_lock, in bounded steps so that pause and stop
 * are still honoured. The owner (the migration's main thread) reads the blocked gfns, fetches
 * the pages, and places each one (UFFDIO_COPY): frame first, then the bit cleared (release),
 * then a notify on the word. Host-side accesses of a missing page are refused (EFAULT).
 */
import { CTL, Kvm, PAGE_WORDS, SLOT, UFFD, UFFD_BITMAP, UFFD_VCPU, VCPU } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { gfn_to_hva_page } from "./memslot.js";
import { hva_to_pfn } from "./host_memory.js";

/** Longest single Atomics.wait of a blocked vCPU before it re-checks its run control. */
const WAIT_STEP_MS = 20;

/** True when gfn of slot `slot` is registered and missing (lockless: an acquire load). */
export function uffd_missing(kvm: Kvm, slot: number, gfn: number): boolean {
  const u = kvm.uffd;
  if (u[UFFD.slot] !== slot + 1) return false;
  const rel = gfn - kvm.slots[SLOT.base_gfn(slot)];
  return (Atomics.load(u, UFFD_BITMAP.bits(rel >>> 5)) & (1 << (rel & 31))) !== 0;
}

/**
 * handle_userfault for vCPU `vcpuId`, before the fault looks up the host frame of gfn. Returns
 * true when the page is there (at once, or after a wait: its contents are then visible), false
 * when the vCPU must first honour its run control (pause, stop, a failed VM): the caller returns
 * "retry" and the access faults again later. Throws EFAULT once the page source has gone.
 */
export function handle_userfault(kvm: Kvm, vcpuId: number, slot: number, gfn: number): boolean {
  const u = kvm.uffd;
  if (u[UFFD.slot] !== slot + 1) return true;
  const rel = gfn - kvm.slots[SLOT.base_gfn(slot)];
  const wi = UFFD_BITMAP.bits(rel >>> 5);
  const bit = 1 << (rel & 31);
  let w = Atomics.load(u, wi);
  if ((w & bit) === 0) return true;
  const t0 = performance.now();
  Atomics.store(u, UFFD_VCPU.fault_gfn(vcpuId), gfn + 1);
  Atomics.add(u, UFFD_VCPU.faults(vcpuId), 1);
  Atomics.add(u, UFFD.req_seq, 1);
  Atomics.notify(u, UFFD.req_seq);
  try {
    for (;;) {
      w = Atomics.load(u, wi);
      if ((w & bit) === 0) return true;
      if (Atomics.load(u, UFFD.closed) !== 0)
        throw new KvmError(
          "EFAULT",
          `gpa 0x${(gfn * 4096).toString(16)}: missing page and its source is gone (post-copy failed)`,
        );
      if (Atomics.load(kvm.vcpu, VCPU.run(vcpuId)) !== 0 || Atomics.load(kvm.ctl, CTL.vm_state) !== 0)
        return false;
      Atomics.wait(u, wi, w, WAIT_STEP_MS);
    }
  } finally {
    Atomics.store(u, UFFD_VCPU.fault_gfn(vcpuId), 0);
    const us = Math.max(1, Math.round((performance.now() - t0) * 1000));
    Atomics.add(u, UFFD_VCPU.blocked_us(vcpuId), us);
    if (us > Atomics.load(u, UFFD_VCPU.blocked_max_us(vcpuId)))
      Atomics.store(u, UFFD_VCPU.blocked_max_us(vcpuId), us);
  }
}

/** Words the uffd buffer needs for a slot of `npages`. */
export function uffd_words(npages: number): number {
  return UFFD_BITMAP.row(Math.ceil(npages / 32));
}

/**
 * UFFDIO_COPY of one page (owner thread): writes the frame, then clears the missing bit with a
 * release, then wakes the waiters. False (nothing written) when the page was not missing.
 */
export function uffd_copy(kvm: Kvm, slot: number, gfn: number, words: Int32Array | null): boolean {
  const u = kvm.uffd;
  const rel = gfn - kvm.slots[SLOT.base_gfn(slot)];
  const wi = UFFD_BITMAP.bits(rel >>> 5);
  const bit = 1 << (rel & 31);
  if ((Atomics.load(u, wi) & bit) === 0) return false;
  kvm.mm_lock.lock();
  try {
    const pfn = hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn));
    if (words) kvm.mem.set(words, pfn * PAGE_WORDS);
    else kvm.mem.fill(0, pfn * PAGE_WORDS, (pfn + 1) * PAGE_WORDS);
  } finally {
    kvm.mm_lock.unlock();
  }
  Atomics.and(u, wi, ~bit);
  Atomics.sub(u, UFFD.missing, 1);
  Atomics.notify(u, wi);
  return true;
}

/**
 * The frames of userfaultfd's MADV_DONTNEED (owner thread, no vCPU running, the slot's mappings
 * already zapped): every page of the registered slot set in `bitmap` (bit n = page n) and not
 * yet missing is zeroed and marked missing. Returns the pages missing now.
 */
export function uffd_discard(kvm: Kvm, slot: number, bitmap: Uint32Array): number {
  const u = kvm.uffd;
  const npages = u[UFFD.npages];
  const hva = kvm.slots[SLOT.hva_page(slot)];
  const zero = new Int32Array(PAGE_WORDS);
  const base = kvm.slots[SLOT.base_gfn(slot)];
  for (let p = 0; p < npages; p++) {
    if ((bitmap[p >>> 5] & (1 << (p & 31))) === 0 || uffd_missing(kvm, slot, base + p)) continue;
    // Written first (the frame is unmapped), then marked: the zeroes are what a reader would see.
    kvm.mm_lock.lock();
    try {
      const pfn = hva_to_pfn(kvm, hva + p);
      if (pfn >= 0) kvm.mem.set(zero, pfn * PAGE_WORDS);
    } finally {
      kvm.mm_lock.unlock();
    }
    Atomics.or(u, UFFD_BITMAP.bits(p >>> 5), 1 << (p & 31));
    Atomics.add(u, UFFD.missing, 1);
  }
  return Atomics.load(u, UFFD.missing);
}

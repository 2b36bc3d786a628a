/**
 * Guest memory as KVM reaches it: the host frame behind a gfn (gfn_to_pfn), and KVM's own reads
 * and writes of guest memory (kvm_write_guest, cmpxchg_gpte). Lockless lookups read the host page
 * table (kvm.hpt, see host_memory.ts: written by the host thread under mm_lock);
 * a fault that maps what it found is protected by mmu_notifier_retry, not by a lock here.
 */
import { Kvm, KVM_MEM_READONLY, PAGE_WORDS, SLOT } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { acas, aload, astore } from "../sync/atomic.js";
import { gfn_to_hva_page, gfn_to_memslot, mark_page_dirty } from "./memslot.js";
import { HPT_WRITABLE, hpt_pfn, hva_to_pfn } from "./host_memory.js";

/** What gfn_to_pfn found (one per caller, reused: the fault paths allocate nothing). */
export class HostFrame {
  pfn = 0;
  /** The host page is writable and the slot is not KVM_MEM_READONLY (map_writable). */
  writable = false;
  /** The hva page (hva_is_huge(kvm, hvaPage): transparent_hugepage_adjust may map 2 MiB). */
  hvaPage = 0;
}

/**
 * __gfn_to_pfn_memslot of gfn in slot `slot`, lockless (as gfn_to_pfn_atomic). False when no host
 * frame backs it. The caller read mmu_notifier_seq before (the smp_rmb of the fault paths).
 */
export function gfn_to_pfn_memslot(kvm: Kvm, slot: number, gfn: number, hf: HostFrame): boolean {
  const hvaPage = (hf.hvaPage = gfn_to_hva_page(kvm, slot, gfn));
  const hv = aload(kvm.hpt, hvaPage);
  if (hv === 0) return false;
  hf.pfn = hpt_pfn(hv);
  hf.writable = (hv & HPT_WRITABLE) !== 0 && (kvm.slots[SLOT.flags(slot)] & KVM_MEM_READONLY) === 0;
  return true;
}

/** The frame backing gfn now, or -1 (no memslot / not mapped). Lockless, as gfn_to_pfn_atomic. */
export function guest_gfn_to_pfn(kvm: Kvm, gfn: number): number {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) return -1;
  return hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn));
}

/**
 * kvm_write_guest of `n` words (1 or 2) at word w of gfn, then mark_page_dirty. Under the host mm
 * lock: the frame cannot move or be reused while it is written.
 */
export function kvm_write_guest_words(
  kvm: Kvm,
  gfn: number,
  w: number,
  lo: number,
  hi: number,
  n: number,
): void {
  kvm.mm_lock.lock();
  try {
    const pfn = guest_gfn_to_pfn(kvm, gfn);
    if (pfn < 0)
      throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: emulated write outside guest memory`);
    const i = pfn * PAGE_WORDS + w;
    astore(kvm.mem, i, lo);
    if (n === 2) astore(kvm.mem, i + 1, hi);
  } finally {
    kvm.mm_lock.unlock();
  }
  mark_page_dirty(kvm, gfn);
}

/** cmpxchg_gpte on the low word of entry idx of table gfn, + mark_page_dirty. True if exchanged. */
export function cmpxchg_gpte(kvm: Kvm, gfn: number, idx: number, old: number, nw: number): boolean {
  let ok: boolean;
  kvm.mm_lock.lock();
  try {
    const pfn = guest_gfn_to_pfn(kvm, gfn);
    if (pfn < 0) return false;
    ok = acas(kvm.mem, pfn * PAGE_WORDS + idx * 2, old, nw) === old;
  } finally {
    kvm.mm_lock.unlock();
  }
  if (ok) mark_page_dirty(kvm, gfn);
  return ok;
}

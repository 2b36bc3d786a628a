/**
 * Host memory: a SharedArrayBuffer of 4 KiB frames (kvm.mem) behind a host page table
 * (kvm.hpt, hva page -> frame), so the host can move a page to another frame while the guest
 * runs (src/mmu/mmu_notifier.ts). Every frame, frame 0 included, can be handed out: a VM of
 * exactly 2^22 frames (16 GiB, the most one Int32Array holds) has no frame to spare.
 *
 * hpt entry: 0 = not mapped, else (pfn << 3) | HPT_DIRTY | HPT_PRESENT | writable (a present bit,
 * so that frame 0 read-only is not 0). Written under mm_lock, read locklessly by faults
 * (gfn_to_pfn), which validate with mmu_notifier_seq. HPT_DIRTY is the page's dirty flag
 * (PageDirty): set with an atomic or by KVM (kvm_set_pfn_dirty) when dirty state leaves an spte,
 * without mm_lock, so the writers of an entry under mm_lock keep it (they rewrite pfn and W only
 * while no spte maps the page, or with the flag carried over).
 * thp[hva >> 9] = 1 while the 2 MiB block is one huge mapping: 512 contiguous, 512-aligned
 * frames. Cleared (split) under mm_lock before any page of the block moves.
 */
import { CTL, Kvm, PAGE_WORDS } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { aand, aload, aor, aread, astore } from "../sync/atomic.js";

export const HPT_WRITABLE = 1;
export const HPT_PRESENT = 2;
/** PageDirty: the host must write the page back before it may drop it (swap, writeback). */
export const HPT_DIRTY = 4;
const HPT_PFN_SHIFT = 3;

/** The hpt entry that maps frame pfn. */
export function make_hpt(pfn: number, writable: number): number {
  return (pfn << HPT_PFN_SHIFT) | HPT_PRESENT | (writable & HPT_WRITABLE);
}

/** The frame of an hpt entry, -1 when it maps none. */
export function hpt_pfn(v: number): number {
  return v === 0 ? -1 : v >>> HPT_PFN_SHIFT;
}

/** Allocates a 4 KiB frame; mm_lock held. Returns -1 when none is left. */
export function alloc_frame(kvm: Kvm): number {
  const ctl = kvm.ctl;
  const top = ctl[CTL.frame_top];
  if (top > 0) {
    ctl[CTL.frame_top] = top - 1;
    return kvm.frameStack[top - 1];
  }
  const high = ctl[CTL.frame_high];
  if (high >= kvm.shared.config.hostFrames) return -1;
  ctl[CTL.frame_high] = high + 1;
  return high;
}

/** mm_lock held; no translation of the frame may remain in any TLB. */
export function free_frame(kvm: Kvm, pfn: number): void {
  kvm.frameStack[kvm.ctl[CTL.frame_top]] = pfn;
  kvm.ctl[CTL.frame_top]++;
}

export function free_frames(kvm: Kvm): number {
  return kvm.ctl[CTL.frame_top] + (kvm.shared.config.hostFrames - kvm.ctl[CTL.frame_high]);
}

/**
 * mmap of anonymous memory: reserves `pages` of host virtual space (2 MiB aligned when `thp` is
 * set and the mapping is at least 2 MiB, else right after the previous mapping) and backs it with
 * zeroed frames, with huge (THP) mappings where `thp` is set and 512 contiguous frames are
 * available. Returns the first hva page. Owner thread, vCPUs may run.
 */
export function host_mmap(kvm: Kvm, pages: number, thp: boolean): number {
  kvm.mm_lock.lock();
  try {
    if (pages > free_frames(kvm))
      throw new KvmError("ENOMEM", `bytes: ${pages} pages exceed the free host frames (${free_frames(kvm)})`);
    const ctl = kvm.ctl;
    // Only a mapping that can hold a huge page is 2 MiB aligned (as THP aligns large anonymous
    // mmaps); smaller ones are packed, so they do not each cost 2 MiB of address space.
    const next = Math.max(ctl[CTL.hva_next], 1);
    const hva = thp && pages >= 512 ? Math.ceil(next / 512) * 512 : next;
    if (hva + pages > kvm.hpt.length)
      throw new KvmError("ENOMEM", `bytes: host virtual address space exhausted`);
    ctl[CTL.hva_next] = hva + pages;
    let p = 0;
    while (p < pages) {
      const high = ctl[CTL.frame_high];
      const aligned = Math.ceil(high / 512) * 512;
      if (thp && pages - p >= 512 && aligned + 512 <= kvm.shared.config.hostFrames) {
        // Frames skipped for alignment go on the free stack.
        for (let f = high; f < aligned; f++) free_frame(kvm, f);
        ctl[CTL.frame_high] = aligned + 512;
        for (let i = 0; i < 512; i++) {
          kvm.mem.fill(0, (aligned + i) * PAGE_WORDS, (aligned + i + 1) * PAGE_WORDS);
          astore(kvm.hpt, hva + p + i, make_hpt(aligned + i, HPT_WRITABLE));
        }
        astore(kvm.thp, (hva + p) >>> 9, 1);
        p += 512;
        continue;
      }
      const f = alloc_frame(kvm);
      if (f < 0) throw new KvmError("ENOMEM", "bytes: out of host frames");
      kvm.mem.fill(0, f * PAGE_WORDS, (f + 1) * PAGE_WORDS);
      astore(kvm.hpt, hva + p, make_hpt(f, HPT_WRITABLE));
      p++;
    }
    return hva;
  } finally {
    kvm.mm_lock.unlock();
  }
}

/** hva page -> frame (-1: not mapped); lockless (get_user_pages_fast). */
export function hva_to_pfn(kvm: Kvm, hvaPage: number): number {
  return hpt_pfn(aload(kvm.hpt, hvaPage));
}

/**
 * set_page_dirty: the page holds data the host has not written back (KVM calls it when a dirty
 * spte of the page is zapped or cleaned). Lockless (atomic or); a no-op on an unmapped page.
 */
export function set_page_dirty(kvm: Kvm, hvaPage: number): void {
  // A plain pre-check (folio_mark_dirty's test): most calls find the page dirty already.
  if ((aread(kvm.hpt, hvaPage) & (HPT_PRESENT | HPT_DIRTY)) === HPT_PRESENT) aor(kvm.hpt, hvaPage, HPT_DIRTY);
}

/** PageDirty. */
export function page_dirty(kvm: Kvm, hvaPage: number): boolean {
  return (aload(kvm.hpt, hvaPage) & HPT_DIRTY) !== 0;
}

/**
 * clear_page_dirty_for_io: writeback (or swap-out) is about to save the page, so it is clean
 * from now on; a write the host is not told of afterwards (by set_page_dirty) is lost when the
 * page is dropped. Returns whether it was dirty. Host thread; takes mm_lock.
 */
export function clear_page_dirty_for_io(kvm: Kvm, hvaPage: number): boolean {
  kvm.mm_lock.lock();
  try {
    return (aand(kvm.hpt, hvaPage, ~HPT_DIRTY) & HPT_DIRTY) !== 0;
  } finally {
    kvm.mm_lock.unlock();
  }
}

/** True when the 2 MiB block holding hvaPage is a huge mapping (host_mapping_level == 2). */
export function hva_is_huge(kvm: Kvm, hvaPage: number): boolean {
  return aload(kvm.thp, hvaPage >>> 9) !== 0;
}

/**
 * Migrates the page at hvaPage to a new frame, as page migration or compaction does: the MMU
 * notifier drops KVM's mappings (and flushes), the contents are copied, the host page table is
 * switched, and range_end lets faults map the new frame. A page inside a huge mapping splits
 * the whole 2 MiB block first. Returns false when no frame is free. Host thread; takes mm_lock.
 */
export function host_migrate_page(kvm: Kvm, hvaPage: number, notifier: MmuNotifier): boolean {
  kvm.mm_lock.lock();
  try {
    const old = aload(kvm.hpt, hvaPage);
    if (old === 0) return false;
    const to = alloc_frame(kvm);
    if (to < 0) return false;
    const huge = hva_is_huge(kvm, hvaPage);
    const start = huge ? hvaPage - (hvaPage & 511) : hvaPage;
    notifier.invalidateRangeStart(start, start + (huge ? 512 : 1));
    if (huge) astore(kvm.thp, hvaPage >>> 9, 0); // split_huge_page
    const from = hpt_pfn(old);
    kvm.mem.copyWithin(to * PAGE_WORDS, from * PAGE_WORDS, (from + 1) * PAGE_WORDS);
    astore(kvm.hpt, hvaPage, make_hpt(to, old) | (aload(kvm.hpt, hvaPage) & HPT_DIRTY));
    notifier.invalidateRangeEnd();
    free_frame(kvm, from);
    return true;
  } finally {
    kvm.mm_lock.unlock();
  }
}

/** Unmaps KVM's view of [hva, hva+pages) without changing the host mapping (NUMA balancing, aging). */
export function host_invalidate_range(kvm: Kvm, hvaPage: number, pages: number, notifier: MmuNotifier): void {
  kvm.mm_lock.lock();
  try {
    notifier.invalidateRangeStart(hvaPage, hvaPage + pages);
    notifier.invalidateRangeEnd();
  } finally {
    kvm.mm_lock.unlock();
  }
}

/** What the host calls: KVM's notifier callbacks (src/mmu/mmu_notifier.ts). */
export interface MmuNotifier {
  invalidateRangeStart(hvaStart: number, hvaEnd: number): void;
  invalidateRangeEnd(): void;
}

/** Host-side read of 8 bytes of guest memory at an hva (in bytes), consistent with migration. */
export function host_read_u64(kvm: Kvm, hvaByte: number): [number, number] {
  kvm.mm_lock.lock();
  try {
    const pfn = hva_to_pfn(kvm, Math.floor(hvaByte / 4096));
    if (pfn < 0) throw new KvmError("EFAULT", `hva 0x${hvaByte.toString(16)}: not mapped`);
    const w = pfn * PAGE_WORDS + ((hvaByte % 4096) >>> 2);
    return [kvm.mem[w], kvm.mem[w + 1]];
  } finally {
    kvm.mm_lock.unlock();
  }
}

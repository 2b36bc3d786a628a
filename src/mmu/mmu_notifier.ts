/**
 * MMU notifier: the host tells KVM that host mappings in [hvaStart, hvaEnd) are about to change
 * (invalidate_range_start) and have changed (invalidate_range_end). Between the two,
 * mmu_notifier_count > 0 makes every fault retry; range_end bumps mmu_notifier_seq so a fault
 * that read a pfn before the change cannot install it.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import { CTL, Kvm, KVM_USER_MEM_SLOTS, SLOT } from "../kvm_host.js";
import { lockdep_assert_held_write } from "../kvm/lockdep.js";
import { aadd, aload } from "../sync/atomic.js";
import { gfn_to_index, gfn_to_rmap } from "../mem/memslot.js";
import { kvm_unmap_rmapp } from "./mmu_page.js";
import { KVM_NR_PAGE_SIZES } from "./spte.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import type { MmuNotifier } from "../mem/host_memory.js";

/**
 * A handler of kvm_handle_hva_range: the gfns [gfnStart, gfnEnd) of memslot `slot`; gets the
 * flush owed so far and returns the flush owed after it.
 */
export type HvaRangeHandler = (
  kvm: Kvm,
  slot: number,
  gfnStart: number,
  gfnEnd: number,
  flush: boolean,
) => boolean;

/**
 * kvm_handle_hva_range (kvm_main.c): calls `handler` for the gfns of host pages
 * [hvaStart, hvaEnd) in each active memslot that maps some of them, threading the flush
 * through. Returns true if a flush is owed.
 */
export function kvm_handle_hva_range(
  kvm: Kvm,
  hvaStart: number,
  hvaEnd: number,
  handler: HvaRangeHandler,
): boolean {
  let flush = false;
  const s = kvm.slots;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (aload(s, SLOT.active(id)) === 0) continue;
    const slotHva = s[SLOT.hva_page(id)];
    const npages = s[SLOT.npages(id)];
    const start = Math.max(hvaStart, slotHva);
    const end = Math.min(hvaEnd, slotHva + npages);
    if (start >= end) continue;
    const base = s[SLOT.base_gfn(id)];
    flush = handler(kvm, id, base + (start - slotHva), base + (end - slotHva), flush);
  }
  return flush;
}

/** kvm_unmap_rmapp over every level's rmaps of [gfnStart, gfnEnd) in `slot`. */
function kvm_unmap_gfn_range_rmap(
  kvm: Kvm,
  slot: number,
  gfnStart: number,
  gfnEnd: number,
  flush: boolean,
): boolean {
  const base = kvm.slots[SLOT.base_gfn(slot)];
  for (let level = 1; level <= KVM_NR_PAGE_SIZES; level++) {
    const first = gfn_to_index(gfnStart, base, level);
    const last = gfn_to_index(gfnEnd - 1, base, level);
    const h0 = gfn_to_rmap(kvm, slot, base, level);
    for (let i = first; i <= last; i++) if (kvm_unmap_rmapp(kvm, h0 + i)) flush = true;
  }
  return flush;
}

/**
 * kvm_unmap_hva_range, the rmap MMU's zap_gfn_range op: mmu_lock held for write. Returns true if
 * a flush is needed.
 */
export function kvm_unmap_hva_range(kvm: Kvm, hvaStart: number, hvaEnd: number): boolean {
  lockdep_assert_held_write(kvm);
  return kvm_handle_hva_range(kvm, hvaStart, hvaEnd, kvm_unmap_gfn_range_rmap);
}

/**
 * invalidate_range_start: counts the invalidation and zaps the range with the design's
 * zap_gfn_range, under mmu_lock in the mode that op declares.
 */
export function kvm_mmu_notifier_invalidate_range_start(kvm: Kvm, hvaStart: number, hvaEnd: number): void {
  const kfd = kfunc_enter(KF.kvm_mmu_notifier_invalidate_range_start);
  try {
    const read = kvm.ops.lock.zap_gfn_range === "read";
    if (read) kvm.mmu_lock.read_lock();
    else kvm.mmu_lock.write_lock();
    try {
      aadd(kvm.ctl, CTL.notifier_count, 1);
      if (kvm.ops.zap_gfn_range(kvm, hvaStart, hvaEnd)) kvm_flush_remote_tlbs(kvm);
    } finally {
      if (read) kvm.mmu_lock.read_unlock();
      else kvm.mmu_lock.write_unlock();
    }
  } finally {
    kfunc_exit(kfd);
  }
}

/**
 * mmu_notifier_retry: a fault that read mmu_notifier_seq = mmuSeq before looking up its pfn must
 * not map it if an invalidation is running or ended since. Called under mmu_lock.
 */
export function mmu_notifier_retry(kvm: Kvm, mmuSeq: number): boolean {
  if (aload(kvm.ctl, CTL.notifier_count) !== 0) return true;
  return aload(kvm.ctl, CTL.notifier_seq) !== mmuSeq;
}

export function kvm_mmu_notifier_invalidate_range_end(kvm: Kvm): void {
  const kfd = kfunc_enter(KF.kvm_mmu_notifier_invalidate_range_end);
  try {
    kvm.mmu_lock.write_lock();
    aadd(kvm.ctl, CTL.notifier_seq, 1);
    aadd(kvm.ctl, CTL.notifier_count, -1);
    kvm.mmu_lock.write_unlock();
  } finally {
    kfunc_exit(kfd);
  }
}

/** KVM's callbacks as the host's MMU-notifier chain calls them (kvm_mmu_notifier_ops). */
export function kvm_mmu_notifier(kvm: Kvm): MmuNotifier {
  return {
    invalidateRangeStart: (s, e) => kvm_mmu_notifier_invalidate_range_start(kvm, s, e),
    invalidateRangeEnd: () => kvm_mmu_notifier_invalidate_range_end(kvm),
  };
}

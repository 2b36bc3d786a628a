/**
 * Memslots: the guest-physical ranges a VM has, each backed by a range of host virtual memory.
 * The table (`kvm.slots`) is written under slots_lock; FLAGS changes are also made under
 * mmu_lock so that a slow-path fault (which reads them under mmu_lock) sees one value for its
 * whole run. Slots are created and deleted only while no vCPU runs (KVM waits with SRCU;
 * we refuse with EBUSY), so readers need no lock for the geometry.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import {
  CTL,
  Kvm,
  KVM_HPAGE_GFN_SHIFT,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_USER_MEM_SLOTS,
  SLOT,
} from "../kvm_host.js";
import { kvm_dirty_ring_push, kvm_get_running_vcpu } from "./dirty_ring.js";
import { aadd, aload, aor } from "../sync/atomic.js";

/** Id of the memslot that holds gfn, or -1 (gfn_to_memslot). */
export function gfn_to_memslot(kvm: Kvm, gfn: number): number {
  const s = kvm.slots;
  let slot = kvm.lru_slot;
  if (
    s[SLOT.active(slot)] !== 0 &&
    gfn >= s[SLOT.base_gfn(slot)] &&
    gfn < s[SLOT.base_gfn(slot)] + s[SLOT.npages(slot)]
  )
    return slot;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    slot = id;
    if (s[SLOT.active(slot)] === 0) continue;
    const base = s[SLOT.base_gfn(slot)];
    if (gfn >= base && gfn < base + s[SLOT.npages(slot)]) return (kvm.lru_slot = slot);
  }
  return -1;
}

export function slot_dirty_logged(kvm: Kvm, slot: number): boolean {
  return (aload(kvm.slots, SLOT.flags(slot)) & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
}

/** gfn_to_index: the rmap/lpage_info index of gfn at `level` within the slot. */
export function gfn_to_index(gfn: number, baseGfn: number, level: number): number {
  const sh = 2 ** KVM_HPAGE_GFN_SHIFT(level);
  return Math.floor(gfn / sh) - Math.floor(baseGfn / sh);
}

/** Number of rmap heads a slot of npages needs at `level`. */
export function slot_level_pages(baseGfn: number, npages: number, level: number): number {
  return gfn_to_index(baseGfn + npages - 1, baseGfn, level) + 1;
}

/** Index in kvm.rmapPool of the rmap head of (gfn, level) in slot `slot` (__gfn_to_rmap). */
export function gfn_to_rmap(kvm: Kvm, slot: number, gfn: number, level: number): number {
  const s = kvm.slots;
  const base =
    level === 1 ? s[SLOT.rmap_base(slot)] : level === 2 ? s[SLOT.rmap_l2(slot)] : s[SLOT.rmap_l3(slot)];
  return base + gfn_to_index(gfn, s[SLOT.base_gfn(slot)], level);
}

/** Index in kvm.lpagePool of lpage_info[level](gfn).write_count. */
export function lpage_info_index(kvm: Kvm, slot: number, gfn: number, level: number): number {
  const s = kvm.slots;
  const base = level === 2 ? s[SLOT.lpage_l2(slot)] : s[SLOT.lpage_l3(slot)];
  return base + gfn_to_index(gfn, s[SLOT.base_gfn(slot)], level);
}

/** Host virtual page number of gfn in slot `slot` (__gfn_to_hva). */
export function gfn_to_hva_page(kvm: Kvm, slot: number, gfn: number): number {
  return kvm.slots[SLOT.hva_page(slot)] + (gfn - kvm.slots[SLOT.base_gfn(slot)]);
}

/**
 * mark_page_dirty_in_slot, only while the slot is dirty-logged: in ring mode on a vCPU thread a
 * push to that vCPU's ring; otherwise an atomic set_bit_le in the bitmap. In ring mode a write
 * without a running vCPU (the host's) goes to the bitmap only with ring-with-bitmap; else it is
 * counted in dirty_ring_dropped (KVM warns) and lost to the log.
 */
export function mark_page_dirty_in_slot(kvm: Kvm, slot: number, gfn: number): void {
  const kfd = kfunc_enter(KF.mark_page_dirty_in_slot);
  if (!slot_dirty_logged(kvm, slot)) return kfunc_exit(kfd);
  const rel = gfn - kvm.slots[SLOT.base_gfn(slot)];
  if (kvm.ctl[CTL.dirty_ring_size] !== 0) {
    const v = kvm_get_running_vcpu(kvm);
    if (v >= 0) {
      kvm_dirty_ring_push(kvm, v, slot, rel);
      return kfunc_exit(kfd);
    }
    if (kvm.ctl[CTL.dirty_ring_with_bitmap] === 0) {
      aadd(kvm.ctl, CTL.dirty_ring_dropped, 1);
      return kfunc_exit(kfd);
    }
  }
  aor(kvm.bitmapPool, kvm.slots[SLOT.bitmap_base(slot)] + (rel >>> 5), 1 << (rel & 31));
  kfunc_exit(kfd);
}

export function mark_page_dirty(kvm: Kvm, gfn: number): void {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot >= 0) mark_page_dirty_in_slot(kvm, slot, gfn);
}

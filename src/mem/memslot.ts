/**
 * Memslots: the guest-physical ranges a VM has, each backed by a range of host virtual memory.
 * The table (`kvm.slots`) is written under slots_lock; FLAGS changes are also made under
 * mmu_lock so that a slow-path fault (which reads them under mmu_lock) sees one value for its
 * whole run. Slots are created and deleted only while no vCPU runs (KVM waits with SRCU;
 * we refuse with EBUSY), so readers need no lock for the geometry.
 */
import {
  Kvm,
  KVM_USER_MEM_SLOTS,
  SLOT_ACTIVE,
  SLOT_BASE_GFN,
  SLOT_BITMAP_BASE,
  SLOT_FLAGS,
  SLOT_HVA_PAGE,
  SLOT_LPAGE_L2,
  SLOT_LPAGE_L3,
  SLOT_NPAGES,
  SLOT_RMAP_BASE,
  SLOT_RMAP_L2,
  SLOT_RMAP_L3,
  SLOT_STRIDE,
  KVM_MEM_LOG_DIRTY_PAGES,
  CTL_DIRTY_RING_SIZE,
  CTL_DIRTY_RING_WITH_BITMAP,
  CTL_DIRTY_RING_DROPPED,
} from "../kvm_host.js";
import { kvm_dirty_ring_push, kvm_get_running_vcpu } from "../mmu/dirty_ring.js";
import { KVM_HPAGE_GFN_SHIFT } from "../mmu/spte.js";
import { aadd, aload, aor } from "../sync/atomic.js";

/** This thread's last hit (memslots->lru_slot). */
let lruSlot = 0;

/** Row offset of the slot that holds gfn, or -1 (gfn_to_memslot). */
export function gfn_to_memslot(kvm: Kvm, gfn: number): number {
  const s = kvm.slots;
  let r = lruSlot;
  if (
    s[r + SLOT_ACTIVE] !== 0 &&
    gfn >= s[r + SLOT_BASE_GFN] &&
    gfn < s[r + SLOT_BASE_GFN] + s[r + SLOT_NPAGES]
  )
    return r;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    r = id * SLOT_STRIDE;
    if (s[r + SLOT_ACTIVE] === 0) continue;
    const base = s[r + SLOT_BASE_GFN];
    if (gfn >= base && gfn < base + s[r + SLOT_NPAGES]) return (lruSlot = r);
  }
  return -1;
}

export function slot_dirty_logged(kvm: Kvm, r: number): boolean {
  return (aload(kvm.slots, r + SLOT_FLAGS) & KVM_MEM_LOG_DIRTY_PAGES) !== 0;
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

/** Index in kvm.rmapPool of the rmap head of (gfn, level) in slot row r (__gfn_to_rmap). */
export function gfn_to_rmap(kvm: Kvm, r: number, gfn: number, level: number): number {
  const s = kvm.slots;
  const base = level === 1 ? s[r + SLOT_RMAP_BASE] : level === 2 ? s[r + SLOT_RMAP_L2] : s[r + SLOT_RMAP_L3];
  return base + gfn_to_index(gfn, s[r + SLOT_BASE_GFN], level);
}

/** Index in kvm.lpagePool of lpage_info[level](gfn).write_count. */
export function lpage_info_index(kvm: Kvm, r: number, gfn: number, level: number): number {
  const s = kvm.slots;
  const base = level === 2 ? s[r + SLOT_LPAGE_L2] : s[r + SLOT_LPAGE_L3];
  return base + gfn_to_index(gfn, s[r + SLOT_BASE_GFN], level);
}

/** Host virtual page number of gfn in slot row r (__gfn_to_hva). */
export function gfn_to_hva_page(kvm: Kvm, r: number, gfn: number): number {
  return kvm.slots[r + SLOT_HVA_PAGE] + (gfn - kvm.slots[r + SLOT_BASE_GFN]);
}

/**
 * mark_page_dirty_in_slot, only while the slot is dirty-logged: in ring mode on a vCPU thread a
 * push to that vCPU's ring; otherwise an atomic set_bit_le in the bitmap. In ring mode a write
 * without a running vCPU (the host's) goes to the bitmap only with ring-with-bitmap; else it is
 * counted in dirty_ring_dropped (KVM warns) and lost to the log.
 */
export function mark_page_dirty_in_slot(kvm: Kvm, r: number, gfn: number): void {
  if (!slot_dirty_logged(kvm, r)) return;
  const rel = gfn - kvm.slots[r + SLOT_BASE_GFN];
  if (kvm.ctl[CTL_DIRTY_RING_SIZE] !== 0) {
    const v = kvm_get_running_vcpu();
    if (v >= 0) {
      kvm_dirty_ring_push(kvm, v, r / SLOT_STRIDE, rel);
      return;
    }
    if (kvm.ctl[CTL_DIRTY_RING_WITH_BITMAP] === 0) {
      aadd(kvm.ctl, CTL_DIRTY_RING_DROPPED, 1);
      return;
    }
  }
  aor(kvm.bitmapPool, kvm.slots[r + SLOT_BITMAP_BASE] + (rel >>> 5), 1 << (rel & 31));
}

export function mark_page_dirty(kvm: Kvm, gfn: number): void {
  const r = gfn_to_memslot(kvm, gfn);
  if (r >= 0) mark_page_dirty_in_slot(kvm, r, gfn);
}

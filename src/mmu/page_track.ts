/**
 * Shadow mode: protection of the guest page tables that indirect shadow pages shadow. Creating
 * such an sp write-protects its gfn (W and MMU_W cleared, so fast_page_fault cannot undo it;
 * large sptes dropped) and accounts it in lpage_info, so no 2 MiB spte covers it; set_spte then
 * never makes an spte of that gfn writable (gfn_is_shadowed) and a guest write to it is emulated.
 * Everything here runs under mmu_lock.
 */
import { Kvm, ROLE_DIRECT, ROLE_INVALID, SCTL } from "../kvm_host.js";
import { aload } from "../sync/atomic.js";
import { gfn_to_memslot, gfn_to_rmap, lpage_info_index } from "../mem/memslot.js";
import { drop_spte } from "./mmu_page.js";
import { hash_first, hash_next, sp_gfn, sp_role } from "./mmu_page_hash.js";
import { pte_list_walk } from "./rmap.js";
import { mmu_spte_update } from "./spte_ops.js";
import {
  is_large_pte,
  is_shadow_present_pte,
  is_writable_pte,
  KVM_NR_PAGE_SIZES,
  PT_WRITABLE_MASK,
  spte_is_locklessly_modifiable,
  SPTE_MMU_WRITEABLE,
} from "./spte.js";

/** account_shadowed / unaccount_shadowed: lpage_info[2..3](gfn).write_count += delta. */
export function account_shadowed(kvm: Kvm, gfn: number, delta: number): void {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) return;
  for (let level = 2; level <= KVM_NR_PAGE_SIZES; level++)
    kvm.lpagePool[lpage_info_index(kvm, slot, gfn, level)] += delta;
}

/**
 * 3.11 spte_write_protect with pt_protect = true: clears W and MMU_W; a large spte is dropped.
 * Returns true when a remote flush is needed.
 */
function spte_write_protect_pt(kvm: Kvm, sptep: number): boolean {
  const s = aload(kvm.spt, sptep);
  if (!is_shadow_present_pte(s)) return false;
  if (!is_writable_pte(s) && !spte_is_locklessly_modifiable(s)) return false;
  if (is_large_pte(s)) {
    drop_spte(kvm, sptep);
    return true;
  }
  return mmu_spte_update(kvm, sptep, s & ~(PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE));
}

/** rmap_write_protect(kvm, gfn): every level's rmap of gfn, pt_protect. Returns "flush". */
export function rmap_write_protect_pt(kvm: Kvm, gfn: number): boolean {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) return false;
  let flush = false;
  const entries: number[] = [];
  for (let level = 1; level <= KVM_NR_PAGE_SIZES; level++) {
    const hi = gfn_to_rmap(kvm, slot, gfn, level);
    entries.length = 0;
    // A drop changes the list: work on a snapshot (under mmu_lock nothing else changes it).
    pte_list_walk(kvm, kvm.rmapPool, hi, (s) => entries.push(s));
    for (const s of entries) if (spte_write_protect_pt(kvm, s)) flush = true;
  }
  if (flush) kvm.sctl[SCTL.pt_protect]++;
  return flush;
}

/** mmu_need_write_protect without unsync: is gfn a shadowed guest page table (a valid indirect sp)? */
export function gfn_is_shadowed(kvm: Kvm, gfn: number): boolean {
  for (let sp = hash_first(kvm, gfn); sp >= 0; sp = hash_next(kvm, sp))
    if (sp_gfn(kvm, sp) === gfn && (sp_role(kvm, sp) & (ROLE_DIRECT | ROLE_INVALID)) === 0) return true;
  return false;
}

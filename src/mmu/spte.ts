/**
 * The shadow page table entry, 32 bits (an Int32Array cell, so every access can be an Atomics
 * call and a cmpxchg is one instruction).
 *
 *   bit 0   PT_PRESENT_MASK        present (EPT: readable)
 *   bit 1   PT_WRITABLE_MASK       writable
 *   bit 2   PT_USER_MASK           user (kept for shadow paging; EPT: executable)
 *   bit 3   ACCESSED               accessed   } defined, but as on the seed's Xeon X5690 (EPT
 *   bit 4   DIRTY                  dirty      } without A/D bits) the hardware never sets them
 *   bit 5   PT_PAGE_SIZE_MASK      large (2 MiB leaf at level 2)
 *   bit 6   SPTE_HOST_WRITEABLE    the host page is writable
 *   bit 7   SPTE_MMU_WRITEABLE     the guest MMU allows writes: fast_page_fault may set W
 *   bits 8-31                      pfn of a leaf, or the shadow page index of a link spte
 *
 * 24 bits of frame number address 64 GiB of 4 KiB host frames, more than this engine needs, and
 * keeping the whole entry in 32 bits makes the tables half the size of 64-bit ones.
 * Link sptes are PRESENT|WRITABLE|USER and never carry HOST_W/MMU_W, so
 * "writable leaf" can be decided from the value alone (patch 12).
 */
import { KVM_PAGES_PER_HPAGE } from "../kvm_host.js";

/**
 * The bits and levels that the lockless walk and its helpers test, as literals: tsc writes a const
 * enum member as a number, while an exported `const` is a module-cell load with a TDZ check that
 * V8 repeats after every seq-cst Atomics.load of the walk (measured: ~10 ns per TLB miss).
 */
export const enum Spte {
  PRESENT = 1,
  WRITABLE = 2,
  PAGE_SIZE = 32,
  PFN_SHIFT = 8,
  ENT_PER_PAGE = 512,
}

/** Table levels, literal for the same reason. */
export const enum SpteLevel {
  PAGE_TABLE = 1,
  ROOT = 4,
}

export const PT_PRESENT_MASK = Spte.PRESENT as number;
export const PT_WRITABLE_MASK = Spte.WRITABLE as number;
export const PT_USER_MASK = 1 << 2;
export const SPTE_ACCESSED = 1 << 3;
export const SPTE_DIRTY = 1 << 4;
export const PT_PAGE_SIZE_MASK = Spte.PAGE_SIZE as number;
export const SPTE_HOST_WRITEABLE = 1 << 6;
export const SPTE_MMU_WRITEABLE = 1 << 7;
export const SPTE_PFN_SHIFT = Spte.PFN_SHIFT as number;
export const SPTE_MAX_PFN = (1 << 24) - 1;

export const PT_PAGE_TABLE_LEVEL = SpteLevel.PAGE_TABLE as number;
export const PT_DIRECTORY_LEVEL = 2;
export const PT_PDPE_LEVEL = 3;
export const PT64_ROOT_LEVEL = SpteLevel.ROOT as number;
export const PT64_ENT_PER_PAGE = Spte.ENT_PER_PAGE as number;
export const KVM_NR_PAGE_SIZES = 3;

/** Index of the entry for `gfn` in a table at `level` (PT64_INDEX on a guest frame number). */
export function PT64_INDEX(gfn: number, level: number): number {
  // gfns stay below 2^32 (16 TiB of guest-physical space), so an unsigned shift is exact.
  return (gfn >>> ((level - 1) * 9)) & 511;
}

export function is_shadow_present_pte(s: number): boolean {
  return (s & Spte.PRESENT) !== 0;
}

export function is_writable_pte(s: number): boolean {
  return (s & Spte.WRITABLE) !== 0;
}

export function is_large_pte(s: number): boolean {
  return (s & Spte.PAGE_SIZE) !== 0;
}

/** A leaf is any present spte at level 1, or a present large spte. */
export function is_last_spte(s: number, level: number): boolean {
  return level === (SpteLevel.PAGE_TABLE as number) || is_large_pte(s);
}

/** spte_is_locklessly_modifiable: fast_page_fault may set W on it without mmu_lock. */
export function spte_is_locklessly_modifiable(s: number): boolean {
  return (s & (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE)) === (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE);
}

/** Patch 12: a writable leaf judged from the value only (link sptes never carry HOST_W). */
export function is_writable_leaf(s: number): boolean {
  return (
    (s & (PT_PRESENT_MASK | PT_WRITABLE_MASK | SPTE_HOST_WRITEABLE)) ===
    (PT_PRESENT_MASK | PT_WRITABLE_MASK | SPTE_HOST_WRITEABLE)
  );
}

/**
 * spte_has_volatile_bits: W may change outside mmu_lock. Without hardware A/D bits this is
 * exactly "locklessly modifiable" (MMU-writable sptes stay volatile).
 */
export function spte_has_volatile_bits(s: number): boolean {
  return spte_is_locklessly_modifiable(s);
}

export function spte_to_pfn(s: number): number {
  return s >>> Spte.PFN_SHIFT;
}

/** gfn & this mask: the offset of a 4 KiB page inside the page that a spte at `level` maps. */
export function KVM_PAGES_PER_HPAGE_MASK(level: number): number {
  return KVM_PAGES_PER_HPAGE(level) - 1;
}

/** The frame a leaf spte at `level` maps for `gfn` (a large spte maps KVM_PAGES_PER_HPAGE frames). */
export function spte_leaf_pfn(s: number, level: number, gfn: number): number {
  return spte_to_pfn(s) + (gfn & KVM_PAGES_PER_HPAGE_MASK(level));
}

/** A link spte pointing at shadow page `sp`. */
export function make_link_spte(sp: number): number {
  return (sp << SPTE_PFN_SHIFT) | PT_PRESENT_MASK | PT_WRITABLE_MASK | PT_USER_MASK;
}

export function spte_to_child_sp(s: number): number {
  return s >>> Spte.PFN_SHIFT;
}

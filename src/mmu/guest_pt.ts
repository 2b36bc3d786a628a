/**
 * Guest page tables: the format the guest builds in its own memory and that the MMU walks
 * (paging_tmpl.h's `pt_element_t` side). A 4-level x86-64 layout (PML4, PDPT, PD, PT; 512
 * entries of 8 bytes per 4 KiB table; index of level l = bits 12+9(l-1) .. 20+9(l-1) of the
 * guest virtual address). What is modelled of an entry (gpte):
 *
 *   low word  bit 0  P   present
 *             bit 1  W   writable
 *             bit 2  U   user
 *             bit 5  A   accessed  (set by the walker: the MMU when it walks, KVM's walk_addr)
 *             bit 6  D   dirty     (leaf only, set on the first write through the entry)
 *             bit 7  PS  2 MiB page (PD entries only; 1 GiB PDPT pages are not modelled)
 *             bits 12-31 bits 12-31 of the physical address
 *   high word bits 0-19  bits 32-51 of the physical address; bits 20-31 (NX and the
 *             available bits) are not modelled and must be 0
 *
 * A/D are updated with a 32-bit cmpxchg on the low word, which is where x86 keeps them.
 * Permissions: W is enforced for every access (CR0.WP=1: every access acts as if supervisor
 * writes honoured W); U is carried into the shadow role and sptes but no access is "user", so it
 * is never a reason to fault. Execute permission, PAT/PCD/PWT, global pages and PCID are not
 * modelled; a CR3 load flushes the whole (software) TLB as it does without PCID.
 *
 * Guest virtual page numbers (vpn = gva >> 12) are kept below 2^31 so a vpn fits the TLB tag;
 * the PML4 index is therefore 0..15.
 */
import { PT64_ROOT_LEVEL } from "./spte.js";
export const GPTE_P = 1 << 0;
export const GPTE_W = 1 << 1;
export const GPTE_U = 1 << 2;
export const GPTE_A = 1 << 5;
export const GPTE_D = 1 << 6;
export const GPTE_PS = 1 << 7;
export const GPTE_ADDR_HI_MASK = 0xfffff;

/** KVM's ACC_* masks (role.access, pte_access). */
export const ACC_EXEC_MASK = 1;
export const ACC_WRITE_MASK = GPTE_W;
export const ACC_USER_MASK = GPTE_U;
export const ACC_ALL = ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK;

/** Index of the entry for vpn in the guest table at `level` (1..4). */
export function gpt_index(vpn: number, level: number): number {
  return (vpn >>> ((level - 1) * 9)) & 511;
}

/** The frame number a gpte points to. */
export function gpte_gfn(lo: number, hi: number): number {
  return (lo >>> 12) + (hi & GPTE_ADDR_HI_MASK) * 2 ** 20;
}

/** The two words of a gpte that points at gfn with `flags` (low 12 bits). */
export function make_gpte_lo(gfn: number, flags: number): number {
  return ((gfn % 2 ** 20) << 12) | flags | 0;
}

export function make_gpte_hi(gfn: number): number {
  return Math.floor(gfn / 2 ** 20) & GPTE_ADDR_HI_MASK;
}

/** FNAME(gpte_access): the ACC_* bits a gpte grants (exec always). */
export function gpte_access(lo: number): number {
  return ACC_EXEC_MASK | (lo & (ACC_WRITE_MASK | ACC_USER_MASK));
}

/** is_last_gpte: a PT entry, or a PD entry with PS. */
export function is_last_gpte(lo: number, level: number): boolean {
  return level === 1 || (level === 2 && (lo & GPTE_PS) !== 0);
}

/** Guest page fault: the walk found a non-present entry or a write to a read-only mapping. */
export class GuestPageFault extends Error {
  constructor(
    readonly vpn: number,
    readonly write: boolean,
    readonly present: boolean,
  ) {
    super(
      `guest #PF at gva 0x${(vpn * 4096).toString(16)} (${write ? "write" : "read"}, ${present ? "protection" : "not present"})`,
    );
  }
}

/** The result of FNAME(walk_addr) (struct guest_walker). Arrays are indexed by level. */
export class GuestWalker {
  /** Level of the leaf gpte: 1, or 2 for a 2 MiB page. */
  level = 1;
  readonly tableGfn = new Int32Array(PT64_ROOT_LEVEL + 1);
  readonly lo = new Int32Array(PT64_ROOT_LEVEL + 1);
  readonly hi = new Int32Array(PT64_ROOT_LEVEL + 1);
  /** Access granted down to (and including) the gpte at each level. */
  readonly ptAccess = new Int32Array(PT64_ROOT_LEVEL + 2);
  pteAccess = 0;
  /** The 4 KiB gfn the address translates to. */
  gfn = 0;
}

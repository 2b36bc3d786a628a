/**
 * The shadow-mode part of the MMU audit (KVM's mmu_audit.c: audit_sptes_have_rmaps,
 * audit_write_protection, plus the consistency of the shadow with the guest's own tables), for a
 * quiesced VM. src/verify/audit.ts calls it in shadow mode; it returns broken invariants.
 *
 *  - bookkeeping: every page on active_mmu_pages is in the hash bucket of its gfn and the other way
 *    round; pages are valid unless they are roots still in use; indirect_shadow_pages counts the
 *    valid indirect pages; every parent_ptes entry is a link spte that points at the page; a root
 *    in use is a valid level-4 page or an invalid page with no present spte;
 *  - write protection: a gfn shadowed by a valid indirect page has no spte with W
 *    or MMU_W, is covered by no large spte, and its lpage_info write_count is at least the number
 *    of pages shadowing it;
 *  - the shadow matches guest memory: in a valid indirect page for guest table T at level L, a
 *    present spte at index i stands for T[i]: T[i] is present; a link leads to the page that
 *    shadows the table T[i] points at (or, for a 2 MiB guest page, to the direct page of that
 *    page); a leaf maps the gfn T[i] maps (sp->gfns[i] too); a writable leaf needs T[i].W and
 *    T[i].D and an access role with W; a large spte needs T[i].PS.
 */
import {
  CTL,
  Kvm,
  KVM_NUM_MMU_PAGES,
  PAGE_WORDS,
  ROLE_DIRECT,
  ROLE_INVALID,
  ROLE_LEVEL_MASK,
  SCTL,
  SP,
  SPX,
  VCPU,
} from "../kvm_host.js";
import { gfn_to_memslot, gfn_to_rmap, lpage_info_index } from "../mem/memslot.js";
import { pte_list_walk } from "../mmu/rmap.js";
import { page_header } from "../mmu/mmu_page.js";
import { active_mmu_pages, role_access } from "../mmu/mmu_page_hash.js";
import { guest_gfn_to_pfn } from "../mem/guest_memory.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  spte_to_child_sp,
  SPTE_MMU_WRITEABLE,
} from "../mmu/spte.js";
import { ACC_WRITE_MASK, GPTE_D, GPTE_P, GPTE_PS, GPTE_W, gpte_gfn } from "../mmu/guest_pt.js";

type Say = (m: string) => void;

export function auditShadow(kvm: Kvm, say: Say): void {
  const active = active_mmu_pages(kvm);
  auditHash(kvm, active, say);
  const shadowed = auditActivePages(kvm, active, say);
  audit_write_protection(kvm, shadowed, say);
  for (const sp of active) auditShadowOfGuestTable(kvm, sp, say);
  auditDirectPages(kvm, active, say);
}

/** Hash <-> active list: each page in the bucket of its gfn, once, and on both. */
function auditHash(kvm: Kvm, active: number[], say: Say): void {
  const h = kvm.spHdr;
  const gfnOf = (sp: number): number => h[SP.gfn(sp)];
  const onList = new Set(active);
  const hashed = new Set<number>();
  for (let b = 0; b < KVM_NUM_MMU_PAGES; b++) {
    let sp = kvm.spHash[b] - 1;
    for (let guard = 0; sp >= 0 && guard <= kvm.shared.config.maxSp; guard++) {
      if ((gfnOf(sp) & (KVM_NUM_MMU_PAGES - 1)) !== b) say(`sp ${sp}: in hash bucket ${b}, gfn ${gfnOf(sp)}`);
      if (hashed.has(sp)) say(`sp ${sp}: twice in the hash`);
      hashed.add(sp);
      sp = kvm.spExt[SPX.hash_next(sp)] - 1;
    }
  }
  for (const sp of active) if (!hashed.has(sp)) say(`sp ${sp}: on the active list but not in the hash`);
  for (const sp of hashed) if (!onList.has(sp)) say(`sp ${sp}: in the hash but not on the active list`);
}

/**
 * Each active page: roots, validity, parent_ptes; then the roots in use and
 * indirect_shadow_pages. Returns gfn -> the valid indirect pages that shadow it.
 */
function auditActivePages(kvm: Kvm, active: number[], say: Say): Map<number, number> {
  const h = kvm.spHdr;
  const role = (sp: number): number => h[SP.role(sp)];
  const gfnOf = (sp: number): number => h[SP.gfn(sp)];
  const roots = new Set<number>();
  const nr = kvm.ctl[CTL.nr_vcpus];
  for (let i = 0; i < nr; i++) {
    const root = kvm.vcpu[VCPU.root(i)];
    if (root !== 0) roots.add(root);
  }
  let indirect = 0;
  const shadowed = new Map<number, number>(); // gfn -> valid indirect pages
  for (const sp of active) {
    const r = role(sp);
    const rootCount = h[SP.root_count(sp)];
    if ((r & ROLE_INVALID) !== 0) {
      if (rootCount === 0) say(`sp ${sp}: invalid, not a root, still on the active list`);
      for (let i = 0; i < PT64_ENT_PER_PAGE; i++)
        if (kvm.spt[sp * PT64_ENT_PER_PAGE + i] !== 0) say(`sp ${sp}: invalid root with a present spte`);
      continue;
    }
    if (rootCount > 0 && (r & ROLE_LEVEL_MASK) !== PT64_ROOT_LEVEL)
      say(`sp ${sp}: root_count ${rootCount} at level ${r & ROLE_LEVEL_MASK}`);
    if ((r & ROLE_DIRECT) === 0) {
      indirect++;
      shadowed.set(gfnOf(sp), (shadowed.get(gfnOf(sp)) ?? 0) + 1);
    }
    pte_list_walk(kvm, h, SP.parent_ptes(sp), (p) => {
      const s = kvm.spt[p];
      if (
        !is_shadow_present_pte(s) ||
        is_last_spte(s, role(page_header(p)) & ROLE_LEVEL_MASK) ||
        spte_to_child_sp(s) !== sp
      )
        say(`sp ${sp}: parent_ptes entry ${p} is not a link to it`);
    });
  }
  const onList = new Set(active);
  for (const root of roots) if (!onList.has(root)) say(`root sp ${root}: not on the active list`);
  if (indirect !== kvm.sctl[SCTL.indirect_shadow_pages])
    say(`indirect_shadow_pages ${kvm.sctl[SCTL.indirect_shadow_pages]} != ${indirect} valid indirect pages`);
  return shadowed;
}

/** audit_write_protection: a shadowed gfn is write-tracked and mapped by no writable or large spte. */
function audit_write_protection(kvm: Kvm, shadowed: Map<number, number>, say: Say): void {
  for (const [gfn, n] of shadowed) {
    const slot = gfn_to_memslot(kvm, gfn);
    if (slot < 0) {
      say(`guest table gfn ${gfn}: in no memslot`);
      continue;
    }
    if (kvm.lpagePool[lpage_info_index(kvm, slot, gfn, 2)] < n)
      say(`guest table gfn ${gfn}: lpage_info write_count below the ${n} pages that shadow it`);
    for (let level = 1; level <= 3; level++) {
      pte_list_walk(kvm, kvm.rmapPool, gfn_to_rmap(kvm, slot, gfn, level), (e) => {
        const s = kvm.spt[e];
        if (level > 1 && is_large_pte(s)) say(`guest table gfn ${gfn}: covered by large spte ${e}`);
        else if ((s & (PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE)) !== 0)
          say(`guest table gfn ${gfn}: spte ${e} has W or MMU_W`);
      });
    }
  }
}

/** A valid indirect page against the guest table it shadows (skips any other page). */
function auditShadowOfGuestTable(kvm: Kvm, sp: number, say: Say): void {
  const h = kvm.spHdr;
  const r = h[SP.role(sp)];
  if ((r & (ROLE_INVALID | ROLE_DIRECT)) !== 0) return;
  const level = r & ROLE_LEVEL_MASK;
  const gfn = h[SP.gfn(sp)];
  const pfn = guest_gfn_to_pfn(kvm, gfn);
  if (pfn < 0) {
    say(`sp ${sp}: guest table gfn ${gfn} is not backed`);
    return;
  }
  for (let i = 0; i < PT64_ENT_PER_PAGE; i++) {
    const sptep = sp * PT64_ENT_PER_PAGE + i;
    const s = kvm.spt[sptep];
    if (!is_shadow_present_pte(s)) continue;
    const lo = kvm.mem[pfn * PAGE_WORDS + 2 * i];
    const hi = kvm.mem[pfn * PAGE_WORDS + 2 * i + 1];
    const where = `sp ${sp} (level ${level}, table gfn ${gfn}) index ${i}`;
    if ((lo & GPTE_P) === 0) {
      say(`${where}: present spte for a non-present gpte`);
      continue;
    }
    if (!is_last_spte(s, level)) auditLinkSpte(kvm, s, level, lo, hi, where, say);
    else auditLeafSpte(kvm, sptep, s, r, lo, hi, where, say);
  }
}

/** A link spte in a shadow page: it leads to the page that shadows what gpte (lo, hi) points at. */
function auditLinkSpte(
  kvm: Kvm,
  s: number,
  level: number,
  lo: number,
  hi: number,
  where: string,
  say: Say,
): void {
  const h = kvm.spHdr;
  const g = gpte_gfn(lo, hi);
  const child = spte_to_child_sp(s);
  const cr = h[SP.role(child)];
  const childGfn = h[SP.gfn(child)];
  if (level === 2 && (lo & GPTE_PS) !== 0) {
    if ((cr & ROLE_DIRECT) === 0 || childGfn !== g - (g & 511))
      say(`${where}: link for a 2 MiB gpte to sp ${child} (gfn ${childGfn})`);
  } else if ((cr & ROLE_DIRECT) !== 0 || childGfn !== g || (cr & ROLE_LEVEL_MASK) !== level - 1) {
    say(`${where}: link to sp ${child} (gfn ${childGfn}), gpte points at table ${g}`);
  }
  if ((cr & ROLE_INVALID) !== 0) say(`${where}: link to invalid sp ${child}`);
}

/** A leaf spte in a shadow page of role r: it maps what gpte (lo, hi) maps, writable only as that allows. */
function auditLeafSpte(
  kvm: Kvm,
  sptep: number,
  s: number,
  r: number,
  lo: number,
  hi: number,
  where: string,
  say: Say,
): void {
  const g = gpte_gfn(lo, hi);
  if (is_large_pte(s) && (lo & GPTE_PS) === 0) say(`${where}: large spte for a 4 KiB gpte`);
  const want = is_large_pte(s) ? g - (g & 511) : g;
  if (kvm.spGfns[sptep] !== want) say(`${where}: sp->gfns says ${kvm.spGfns[sptep]}, gpte maps ${want}`);
  if ((s & PT_WRITABLE_MASK) !== 0) {
    if ((lo & GPTE_W) === 0 || (lo & GPTE_D) === 0) say(`${where}: writable spte for a gpte without W or D`);
    if ((role_access(r) & ACC_WRITE_MASK) === 0) say(`${where}: writable spte under a read-only path`);
  }
}

/** A direct page maps consecutive gfns: writable only with W in its access role. */
function auditDirectPages(kvm: Kvm, active: number[], say: Say): void {
  for (const sp of active) {
    const r = kvm.spHdr[SP.role(sp)];
    if ((r & (ROLE_INVALID | ROLE_DIRECT)) === 0 || (r & ROLE_INVALID) !== 0) continue;
    if ((role_access(r) & ACC_WRITE_MASK) === 0)
      for (let i = 0; i < PT64_ENT_PER_PAGE; i++)
        if (
          (kvm.spt[sp * PT64_ENT_PER_PAGE + i] & PT_WRITABLE_MASK) !== 0 &&
          is_last_spte(kvm.spt[sp * PT64_ENT_PER_PAGE + i], r & ROLE_LEVEL_MASK)
        )
          say(`direct sp ${sp}: writable spte under a read-only access role`);
  }
}

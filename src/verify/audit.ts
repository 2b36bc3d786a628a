/**
 * The MMU audit (KVM's mmu_audit.c), for a quiesced VM: vCPUs paused, the host thread paused,
 * no ioctl in flight. Returns the broken invariants, empty when all hold.
 *
 *  - every present leaf spte is in exactly the rmap of its (gfn, level), and maps the frame that
 *    backs that gfn now (no stale pfn after a migration);
 *  - every rmap entry is a present leaf whose (gfn, level) names that rmap; chains end in their
 *    own head's nulls; no descriptor is empty; every descriptor but the first is full;
 *  - every link spte names a live page whose parent_ptes hold it, and carries no HOST_W/MMU_W;
 *  - W implies HOST_W and MMU_W;
 *  - in a dirty-logged slot: no writable large spte, and no writable spte for a gfn whose dirty
 *    bit is clear.
 * TLB contents are private to the vCPU workers and are not audited here.
 * Shadow mode: every page on active_mmu_pages is checked (orphans too, not only what a root
 * reaches), leaf gfns come from sp->gfns, and src/verify/shadow_audit.ts adds the shadow-MMU
 * invariants (hash, roots, guest-table write protection, shadow vs guest tables).
 */
import {
  CTL,
  Kvm,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_USER_MEM_SLOTS,
  MmuMode,
  PARENT_HEAD_ID_BASE,
  ROLE_INVALID,
  SLOT,
  SP,
} from "../kvm_host.js";
import { gfn_to_hva_page, gfn_to_memslot, gfn_to_rmap, slot_level_pages } from "../mem/memslot.js";
import { hva_to_pfn } from "../mem/host_memory.js";
import { pte_list_audit, pte_list_walk } from "../mmu/rmap.js";
import { kvm_mmu_page_get_gfn, page_header, sp_level } from "../mmu/mmu_page.js";
import { active_mmu_pages } from "../mmu/mmu_page_hash.js";
import { auditShadow } from "./shadow_audit.js";
import { auditTdpMmu } from "./tdp_mmu_audit.js";
import { TDP_MMU } from "../mmu/tdp_mmu/tdp_mmu_design.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  is_writable_pte,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  spte_to_child_sp,
  spte_to_pfn,
  SPTE_HOST_WRITEABLE,
  SPTE_MMU_WRITEABLE,
  KVM_NR_PAGE_SIZES,
} from "../mmu/spte.js";
import { ARR_RMAP, ARR_SPT, locationName } from "./trace_names.js";

/** A spte by what it maps: "spte gfn 0x64 level 1 (sp 4 index 100)" (trace_names.ts). */
const spteName = (kvm: Kvm, sptep: number): string => locationName(kvm, ARR_SPT, sptep);

export interface AuditOptions {
  /**
   * Only the structural invariants (rmap <-> spte, chains, links, frames): they hold whenever
   * mmu_lock is free, even while a lockless harvest or fast fault is in flight.
   */
  structural?: boolean;
}

/** What one audit carries through the walk. */
interface AuditCtx {
  kvm: Kvm;
  say: (m: string) => void;
  /** Shadow mode: each active page is walked on its own, links are not followed. */
  shadow: boolean;
  structural: boolean;
  /** Every present leaf spte reached. */
  leaves: Set<number>;
}

export function audit(kvm: Kvm, limit = 20, opts: AuditOptions = {}): string[] {
  const bad: string[] = [];
  const say = (m: string): void => {
    if (bad.length < limit) bad.push(m);
  };
  // The TDP MMU has no rmaps: its own audit.
  if (kvm.ops.name === TDP_MMU) {
    auditTdpMmu(kvm, say, opts.structural === true);
    return bad;
  }
  const c: AuditCtx = {
    kvm,
    say,
    shadow: kvm.mode === MmuMode.Shadow,
    structural: opts.structural === true,
    leaves: new Set<number>(),
  };
  const root = kvm.ctl[CTL.root];
  if (c.shadow) {
    for (const sp of active_mmu_pages(kvm))
      if ((kvm.spHdr[SP.role(sp)] & ROLE_INVALID) === 0) auditPage(c, sp, sp_level(kvm, sp));
    auditShadow(kvm, say);
  } else if (root !== 0) auditPage(c, root, PT64_ROOT_LEVEL);

  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (kvm.slots[SLOT.active(id)] === 0) continue;
    const base = kvm.slots[SLOT.base_gfn(id)];
    const npages = kvm.slots[SLOT.npages(id)];
    for (let level = 1; level <= KVM_NR_PAGE_SIZES; level++) {
      const h0 = gfn_to_rmap(kvm, id, base, level);
      const n = slot_level_pages(base, npages, level);
      for (let i = 0; i < n; i++) auditHead(kvm, kvm.rmapPool, h0 + i, h0 + i, c.leaves, level, say);
    }
  }
  return bad;
}

/** Shadow page sp, reached at `level`: each present spte; TDP: the tables below, recursively. */
function auditPage(c: AuditCtx, sp: number, level: number): void {
  const { kvm, say } = c;
  if ((kvm.spHdr[SP.role(sp)] & ROLE_INVALID) !== 0) say(`sp ${sp}: reachable but invalid`);
  if (sp_level(kvm, sp) !== level) say(`sp ${sp}: level ${sp_level(kvm, sp)} reached at level ${level}`);
  for (let i = 0; i < PT64_ENT_PER_PAGE; i++) {
    const sptep = sp * PT64_ENT_PER_PAGE + i;
    const s = kvm.spt[sptep];
    if (!is_shadow_present_pte(s)) continue;
    if (
      is_writable_pte(s) &&
      is_last_spte(s, level) &&
      (s & (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE)) !== (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE)
    )
      say(`${spteName(kvm, sptep)}: W without HOST_W|MMU_W`);
    if (!is_last_spte(s, level)) auditLink(c, sptep, s, level);
    else auditLeaf(c, sptep, s, level);
  }
}

/** A link spte: no HOST_W/MMU_W, once in its child's parent_ptes, a child one level down. */
function auditLink(c: AuditCtx, sptep: number, s: number, level: number): void {
  const { kvm, say } = c;
  if ((s & (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE)) !== 0)
    say(`link ${spteName(kvm, sptep)}: carries HOST_W/MMU_W`);
  const child = spte_to_child_sp(s);
  let found = 0;
  pte_list_walk(kvm, kvm.spHdr, SP.parent_ptes(child), (p) => {
    if (p === sptep) found++;
  });
  if (found !== 1) say(`link ${spteName(kvm, sptep)}: in parent_ptes of sp ${child} ${found} times`);
  if (!c.shadow) auditPage(c, child, level - 1);
  else if (sp_level(kvm, child) !== level - 1)
    say(`link ${spteName(kvm, sptep)}: to sp ${child} of level ${sp_level(kvm, child)}`);
}

/**
 * A leaf spte: once in its rmap, mapping the frame that backs its gfn now; in a dirty-logged
 * slot (unless structural), not large if writable, and writable only with its dirty bit set.
 */
function auditLeaf(c: AuditCtx, sptep: number, s: number, level: number): void {
  const { kvm, say } = c;
  c.leaves.add(sptep);
  const gfn = kvm_mmu_page_get_gfn(kvm, sptep);
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) {
    say(`${spteName(kvm, sptep)}: gfn ${gfn} in no memslot`);
    return;
  }
  const hi = gfn_to_rmap(kvm, slot, gfn, level);
  let n = 0;
  pte_list_walk(kvm, kvm.rmapPool, hi, (e) => {
    if (e === sptep) n++;
  });
  if (n !== 1) say(`${spteName(kvm, sptep)}: in its rmap ${n} times`);
  const pfn = hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn));
  if (pfn !== spte_to_pfn(s))
    say(`${spteName(kvm, sptep)}: maps frame ${spte_to_pfn(s)}, backing is frame ${pfn}`);
  if (level > 1) {
    for (let k = 1; k < 512; k += 73) {
      const pk = hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn + k));
      if (pk !== spte_to_pfn(s) + k) say(`large ${spteName(kvm, sptep)}: page ${k} backed by frame ${pk}`);
    }
  }
  if (!c.structural && (kvm.slots[SLOT.flags(slot)] & KVM_MEM_LOG_DIRTY_PAGES) !== 0 && is_writable_pte(s)) {
    if (level > 1) say(`large ${spteName(kvm, sptep)}: writable in a dirty-logged slot`);
    const rel = gfn - kvm.slots[SLOT.base_gfn(slot)];
    const word = kvm.bitmapPool[kvm.slots[SLOT.bitmap_base(slot)] + (rel >>> 5)];
    if ((word & (1 << (rel & 31))) === 0) say(`${spteName(kvm, sptep)}: writable, dirty bit clear`);
  }
}

function auditHead(
  kvm: Kvm,
  heads: Int32Array,
  hi: number,
  headId: number,
  leaves: Set<number>,
  level: number,
  say: (m: string) => void,
): void {
  const check = (sptep: number): void => {
    if (!leaves.has(sptep)) {
      say(
        `${locationName(kvm, ARR_RMAP, hi)}: entry ${spteName(kvm, sptep)} is not a present leaf reachable from the root`,
      );
      return;
    }
    const gfn = kvm_mmu_page_get_gfn(kvm, sptep);
    const slot = gfn_to_memslot(kvm, gfn);
    if (
      slot < 0 ||
      gfn_to_rmap(kvm, slot, gfn, sp_level(kvm, page_header(sptep))) !== hi ||
      sp_level(kvm, page_header(sptep)) !== level
    )
      say(`${locationName(kvm, ARR_RMAP, hi)}: entry ${spteName(kvm, sptep)} belongs to another rmap`);
  };
  pte_list_audit(kvm, heads, hi, headId, check, say);
}

export { PARENT_HEAD_ID_BASE, is_large_pte, page_header };

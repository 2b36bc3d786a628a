/**
 * The TDP MMU audit, for a quiesced VM (vCPUs paused: their PML buffers flushed; no ioctl in
 * flight). The TDP MMU keeps no rmaps and no parent lists, so the audit is a walk of the tables
 * from the root:
 *  - every present leaf maps the frame that backs its gfn in its slot now (a huge leaf: its
 *    frames follow that page's);
 *  - no frozen spte is reachable (a freeze ends before its owner drops mmu_lock), and no table of
 *    the pending or free lists, or marked invalid, is reachable (no spte of a freed table);
 *  - every link names a table one level down that covers the link's gfns, and is exactly the
 *    spte tdp_mmu_link_sp made (no bit of it cleared as if it were a leaf);
 *  - W implies HOST_W and MMU_W;
 *  - in a dirty-logged slot (bitmap mode): a writable huge leaf has every page's bit set in the
 *    bitmap (INITIALLY_SET before the first CLEAR of it; otherwise none is writable); a writable
 *    4 KiB leaf with D set (PML) or any writable one (write protection) has its bit set;
 *  - no table leaked: the tables in use (CTL.sp_used) are those reachable from the root (a root
 *    torn down with a table still linked never frees it, 3a0f64de479c).
 */
import { CTL, Kvm, KVM_MEM_LOG_DIRTY_PAGES, ROLE_INVALID, SP, SLOT } from "../kvm_host.js";
import { gfn_to_hva_page, gfn_to_memslot } from "../mem/memslot.js";
import { hva_to_pfn } from "../mem/host_memory.js";
import { sp_level } from "../mmu/mmu_page.js";
import {
  is_last_spte,
  is_shadow_present_pte,
  is_writable_pte,
  make_link_spte,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  SPTE_DIRTY,
  SPTE_HOST_WRITEABLE,
  SPTE_MMU_WRITEABLE,
  spte_to_child_sp,
  spte_to_pfn,
} from "../mmu/spte.js";
import { is_frozen_spte } from "../mmu/tdp_mmu/tdp_mmu_spte.js";
import { kvm_tdp_mmu_pml } from "../mmu/tdp_mmu/tdp_mmu_design.js";

/** Shadow pages on a free list (sp + 1 linked through SP.next). */
function listed(kvm: Kvm, head: number, into: Set<number>): void {
  for (let sp = head - 1, n = 0; sp >= 0 && n < kvm.shared.config.maxSp; n++) {
    into.add(sp);
    sp = kvm.spHdr[SP.next(sp)] - 1;
  }
}

export function auditTdpMmu(kvm: Kvm, say: (m: string) => void, structural: boolean): void {
  const freed = new Set<number>();
  listed(kvm, kvm.ctl[CTL.sp_pending], freed);
  listed(kvm, kvm.ctl[CTL.sp_free], freed);
  const pml = kvm_tdp_mmu_pml(kvm);
  const ringOnly = kvm.ctl[CTL.dirty_ring_size] !== 0;
  let reachable = 0;
  const walk = (sp: number, level: number, gfn0: number): void => {
    reachable++;
    if (freed.has(sp)) say(`sp ${sp}: reachable but on a free or pending list`);
    if ((kvm.spHdr[SP.role(sp)] & ROLE_INVALID) !== 0) say(`sp ${sp}: reachable but invalid`);
    if (sp_level(kvm, sp) !== level) say(`sp ${sp}: level ${sp_level(kvm, sp)} reached at level ${level}`);
    if (kvm.spHdr[SP.gfn(sp)] !== gfn0)
      say(`sp ${sp}: covers gfn ${kvm.spHdr[SP.gfn(sp)]}, linked for ${gfn0}`);
    const per = 2 ** ((level - 1) * 9);
    for (let i = 0; i < PT64_ENT_PER_PAGE; i++) {
      const sptep = sp * PT64_ENT_PER_PAGE + i;
      const s = kvm.spt[sptep];
      const gfn = gfn0 + i * per;
      if (is_frozen_spte(s)) say(`spte ${sptep} (gfn ${gfn}): frozen in a quiesced VM`);
      if (!is_shadow_present_pte(s)) continue;
      if (!is_last_spte(s, level)) {
        if ((s & (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE)) !== 0)
          say(`link spte ${sptep}: carries HOST_W/MMU_W`);
        // Dirty state is cleared on present leaves only (3354ef5a592d): a link is as linked.
        else if (s !== make_link_spte(spte_to_child_sp(s)))
          say(
            `link spte ${sptep} (gfn ${gfn}): 0x${s.toString(16)}, linked as 0x${make_link_spte(spte_to_child_sp(s)).toString(16)}`,
          );
        walk(spte_to_child_sp(s), level - 1, gfn);
        continue;
      }
      const w = is_writable_pte(s);
      if (
        w &&
        (s & (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE)) !== (SPTE_HOST_WRITEABLE | SPTE_MMU_WRITEABLE)
      )
        say(`spte ${sptep}: W without HOST_W|MMU_W`);
      const slot = gfn_to_memslot(kvm, gfn);
      if (slot < 0) {
        say(`spte ${sptep}: gfn ${gfn} in no memslot`);
        continue;
      }
      const pfn = hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn));
      if (pfn !== spte_to_pfn(s))
        say(`spte ${sptep} (gfn ${gfn}): maps frame ${spte_to_pfn(s)}, backing is frame ${pfn}`);
      for (let k = 73; level > 1 && k < per; k += 73) {
        const pk = hva_to_pfn(kvm, gfn_to_hva_page(kvm, slot, gfn + k));
        if (pk !== spte_to_pfn(s) + k)
          say(`huge spte ${sptep} (gfn ${gfn}): page ${k} backed by frame ${pk}`);
      }
      if (structural || ringOnly || (kvm.slots[SLOT.flags(slot)] & KVM_MEM_LOG_DIRTY_PAGES) === 0 || !w)
        continue;
      if (level > 1) {
        // INITIALLY_SET: a huge page stays writable until a CLEAR of one of its pages.
        for (let k = 0; k < per; k++)
          if (!dirtyBitSet(kvm, slot, gfn + k)) {
            say(`huge spte ${sptep} (gfn ${gfn}): writable in a dirty-logged slot, gfn ${gfn + k} not dirty`);
            break;
          }
        continue;
      }
      if (pml && (s & SPTE_DIRTY) === 0) continue; // its next write is logged by PML
      if (!dirtyBitSet(kvm, slot, gfn))
        say(`spte ${sptep} (gfn ${gfn}): writable${pml ? " and dirty (D)" : ""}, dirty bit clear`);
    }
  };
  const root = kvm.ctl[CTL.root];
  if (root !== 0) walk(root, PT64_ROOT_LEVEL, 0);
  if (kvm.ctl[CTL.sp_used] !== reachable)
    say(`${kvm.ctl[CTL.sp_used]} tables in use but ${reachable} reachable from the root: tables leaked`);
}

/** The dirty bitmap's bit of gfn in slot. */
function dirtyBitSet(kvm: Kvm, slot: number, gfn: number): boolean {
  const rel = gfn - kvm.slots[SLOT.base_gfn(slot)];
  return (kvm.bitmapPool[kvm.slots[SLOT.bitmap_base(slot)] + (rel >>> 5)] & (1 << (rel & 31))) !== 0;
}

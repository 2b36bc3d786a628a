/**
 * Shadow mode: emulated guest writes to shadowed guest page tables (kvm_mmu_pte_write). The write
 * goes to guest memory, then every valid indirect sp shadowing that gfn drops the spte of the
 * written gpte and, at level 1, re-creates it from the new gpte (update_pte). Write flooding (3
 * emulated writes to an sp without a fault walking through it) zaps the sp at every level (3.11
 * skips level 1, which would go unsync instead). Takes mmu_lock.
 */
import {
  CTL,
  Kvm,
  PAGE_WORDS,
  ROLE_DIRECT,
  ROLE_INVALID,
  ROLE_LEVEL_MASK,
  SCTL,
  SPX,
  VCPU,
} from "../kvm_host.js";
import { aadd, aload } from "../sync/atomic.js";
import { gfn_to_memslot } from "../mem/memslot.js";
import { gfn_to_pfn_memslot, guest_gfn_to_pfn, kvm_write_guest_words } from "../mem/guest_memory.js";
import { kvm_mmu_commit_zap_page } from "./mmu_page.js";
import { for_each_gfn_sp, role_access, sp_gfn, sp_role } from "./mmu_page_hash.js";
import { mmu_page_zap_pte, shadow_prepare_zap_page } from "./shadow_page.js";
import { KvmPageFault, mmu_set_spte } from "./mmu.js";
import { mmu_topup_memory_caches } from "./mmu_cache.js";
import {
  is_shadow_present_pte,
  PT_PAGE_TABLE_LEVEL,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  spte_to_pfn,
} from "./spte.js";
import {
  ACC_WRITE_MASK,
  gpte_access,
  gpte_gfn,
  GPTE_A,
  GPTE_ADDR_HI_MASK,
  GPTE_D,
  GPTE_P,
} from "./guest_pt.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";

/** detect_write_flooding threshold. */
const WRITE_FLOODING = 3;

/**
 * FNAME(update_pte) / prefetch_gpte for a level-1 page: re-creates the spte from the gpte the
 * guest just wrote, speculatively (as if prefetched: the guest did not access it yet). Skipped
 * for a gpte that is not present, not accessed or has reserved bits (prefetch_invalid_gpte), and
 * while an MMU-notifier invalidation is in progress (the host page table may be changing; under
 * mmu_lock with none in progress it is stable). mmu_lock held.
 */
function update_pte(kvm: Kvm, f: KvmPageFault, sp: number, sptep: number): boolean {
  const role = sp_role(kvm, sp);
  const tpfn = guest_gfn_to_pfn(kvm, sp_gfn(kvm, sp));
  if (tpfn < 0) return false;
  const i = tpfn * PAGE_WORDS + (sptep - sp * PT64_ENT_PER_PAGE) * 2;
  const lo = aload(kvm.mem, i);
  const hi = aload(kvm.mem, i + 1);
  if ((lo & (GPTE_P | GPTE_A)) !== (GPTE_P | GPTE_A) || (hi & ~GPTE_ADDR_HI_MASK) !== 0) return false;
  if (aload(kvm.ctl, CTL.notifier_count) !== 0) return false;
  // Speculative: only while the vCPU's cache has a descriptor for the rmap (the fault's bound).
  if (kvm.mmu_cache_vcpu >= 0 && kvm.vcpu[VCPU.desc_cache_n(kvm.mmu_cache_vcpu)] === 0) return false;
  const gfn = gpte_gfn(lo, hi);
  let access = role_access(role) & gpte_access(lo);
  if ((lo & GPTE_D) === 0) access &= ~ACC_WRITE_MASK; // protect_clean_gpte
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0 || !gfn_to_pfn_memslot(kvm, slot, gfn, f.hf)) return false;
  // The vCPU's fault record, as a prefetch (no fault in progress while it emulates).
  f.slot = slot;
  f.write = false;
  f.map_writable = f.hf.writable;
  f.goal_level = PT_PAGE_TABLE_LEVEL;
  mmu_set_spte(kvm, f, sptep, access, gfn, f.hf.pfn);
  return true;
}

/** need_remote_flush: the old spte could be cached and the new one maps elsewhere or allows less. */
function need_remote_flush(old: number, nw: number): boolean {
  if (!is_shadow_present_pte(old)) return false;
  if (!is_shadow_present_pte(nw)) return true;
  if (spte_to_pfn(old) !== spte_to_pfn(nw)) return true;
  return (old & ~nw & (PT_WRITABLE_MASK | PT_USER_MASK)) !== 0;
}

/**
 * kvm_mmu_pte_write: the guest wrote `bytes` at byte `offset` of gfn (already in memory). In every
 * valid indirect sp shadowing gfn the spte of the written gpte is zapped and, in a level-1 page,
 * re-created from the new gpte (update_pte); the whole page is zapped when the write is
 * misaligned or the page is being flooded with writes. Flushes remote TLBs when an spte that
 * could be cached now maps elsewhere or allows less. Takes mmu_lock. Returns true when the
 * writing vCPU should flush its own TLB (local_flush: an spte it may cache was touched).
 */
function kvm_mmu_pte_write(kvm: Kvm, f: KvmPageFault, gfn: number, offset: number, bytes: number): boolean {
  const vcpuId = f.vcpuId;
  if (aload(kvm.sctl, SCTL.indirect_shadow_pages) === 0) return false;
  // detect_write_misaligned (8-byte gptes): a write that spans two gptes, or is narrower than 4.
  const misaligned = ((offset ^ (offset + bytes - 1)) & ~7) !== 0 || bytes < 4;
  kvm.mmu_lock.write_lock();
  kvm.mmu_cache_vcpu = vcpuId;
  try {
    kvm.sctl[SCTL.pte_writes]++;
    const sps: number[] = [];
    for_each_gfn_sp(kvm, gfn, (sp) => {
      if ((sp_role(kvm, sp) & (ROLE_DIRECT | ROLE_INVALID)) === 0) sps.push(sp);
    });
    const invalid: number[] = [];
    let remoteFlush = false;
    let localFlush = false;
    for (const sp of sps) {
      const role = sp_role(kvm, sp);
      if ((role & ROLE_INVALID) !== 0) continue;
      if (misaligned || ++kvm.spExt[SPX.flood(sp)] >= WRITE_FLOODING) {
        shadow_prepare_zap_page(kvm, sp, invalid);
        kvm.sctl[SCTL.flooded]++;
        continue;
      }
      localFlush = true;
      const sptep = sp * PT64_ENT_PER_PAGE + (offset >>> 3);
      const old = kvm.spt[sptep];
      const level = role & ROLE_LEVEL_MASK;
      if (mmu_page_zap_pte(kvm, sptep, level)) kvm.sctl[SCTL.pte_zapped]++;
      if (level === PT_PAGE_TABLE_LEVEL && update_pte(kvm, f, sp, sptep)) kvm.sctl[SCTL.pte_prefetch]++;
      if (need_remote_flush(old, kvm.spt[sptep])) remoteFlush = true;
    }
    // mmu_pte_write_flush_tlb, then the commit (which flushes by itself when it frees pages).
    if (invalid.length === 0 && remoteFlush) kvm_flush_remote_tlbs(kvm);
    kvm_mmu_commit_zap_page(kvm, invalid);
    return localFlush;
  } finally {
    kvm.mmu_cache_vcpu = -1;
    kvm.mmu_lock.write_unlock();
  }
}

/**
 * x86_emulate_instruction + emulator_write_phys for a guest store to a write-protected guest
 * page table: the write goes to guest memory (kvm_write_guest marks it dirty), then
 * kvm_mmu_pte_write brings the shadow up to date. The vCPU is outside guest mode. Returns true
 * when the vCPU should flush its own TLB. Throws KvmError(ENOMEM), before the write, when the
 * vCPU's caches cannot be topped up.
 */
export function emulate_guest_write(
  kvm: Kvm,
  fault: KvmPageFault,
  gfn: number,
  w: number,
  lo: number,
  hi: number,
  words: number,
): boolean {
  mmu_topup_memory_caches(kvm, fault.vcpuId);
  kvm_write_guest_words(kvm, gfn, w, lo, hi, words);
  aadd(kvm.sctl, SCTL.emulated, 1);
  return kvm_mmu_pte_write(kvm, fault, gfn, w * 4, words * 4);
}

/** Counters of the shadow MMU (sctl), for reports. */
export function shadowCounters(kvm: Kvm): Record<string, number> {
  const s = kvm.sctl;
  return {
    indirectShadowPages: s[SCTL.indirect_shadow_pages],
    spCreated: s[SCTL.sp_created],
    spHashHits: s[SCTL.sp_hash_hits],
    recycled: s[SCTL.recycled],
    pteWrites: s[SCTL.pte_writes],
    pteZapped: s[SCTL.pte_zapped],
    flooded: s[SCTL.flooded],
    emulated: s[SCTL.emulated],
    gpteChanged: s[SCTL.gpte_changed],
    rootReloads: s[SCTL.reloads],
    ptProtectFlushes: s[SCTL.pt_protect],
    ptePrefetched: s[SCTL.pte_prefetch],
    spUsed: kvm.ctl[CTL.sp_used],
  };
}

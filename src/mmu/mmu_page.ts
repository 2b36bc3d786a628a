/**
 * Shadow pages (struct kvm_mmu_page) and the operations that link sptes to them: drop_spte,
 * link_shadow_page, zap (rmap_add and rmap_remove live in rmap.ts). Everything here runs
 * under mmu_lock.
 *
 * Shadow pages live in two arenas: kvm.spt (512 sptes each, spte index = sp * 512 + i) and
 * kvm.spHdr (the header). Sp 0 is never used, so a link spte never names it.
 *
 * Freeing: kvm_mmu_prepare_zap_page clears every spte and unlinks the page; commit_zap flushes
 * remote TLBs (the grace period of vCPU walkers), then retires the pages with an RCU epoch
 * (the grace period of non-vCPU walkers). Retired pages become reusable once that epoch is over.
 */
import { KF, kfunc_enter, kfunc_ret } from "../sync/kfunc.js";
import {
  BUG,
  CTL,
  Kvm,
  PARENT_HEAD_ID_BASE,
  ROLE_DIRECT,
  ROLE_INVALID,
  ROLE_LEVEL_MASK,
  SP,
  VCPU,
} from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { astore } from "../sync/atomic.js";
import { pte_list_add, pte_list_remove, pte_list_walk, rmap_get_first, rmap_remove } from "./rmap.js";
import { mmu_spte_clear_no_track, mmu_spte_clear_track_bits, mmu_spte_set } from "./spte_ops.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  make_link_spte,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  spte_to_child_sp,
} from "./spte.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { trace_kvm_mmu_get_page, trace_kvm_mmu_prepare_zap_page } from "./mmutrace.js";

export function page_header(sptep: number): number {
  return Math.floor(sptep / PT64_ENT_PER_PAGE);
}

export function sp_level(kvm: Kvm, sp: number): number {
  return kvm.spHdr[SP.role(sp)] & ROLE_LEVEL_MASK;
}

/**
 * kvm_mmu_page_get_gfn: the gfn the spte at `sptep` maps. Direct sp: computed from its position;
 * indirect sp (shadow mode): sp->gfns[index], set by rmap_add.
 */
export function kvm_mmu_page_get_gfn(kvm: Kvm, sptep: number): number {
  const sp = page_header(sptep);
  const role = kvm.spHdr[SP.role(sp)];
  if ((role & ROLE_DIRECT) === 0) return kvm.spGfns[sptep];
  const level = role & ROLE_LEVEL_MASK;
  return kvm.spHdr[SP.gfn(sp)] + (sptep - sp * PT64_ENT_PER_PAGE) * 2 ** ((level - 1) * 9);
}

/** Reuses retired pages whose RCU grace period is over. */
function reclaim_retired(kvm: Kvm): void {
  const h = kvm.spHdr;
  let prev = -1;
  let sp = kvm.ctl[CTL.sp_pending] - 1;
  while (sp >= 0) {
    const next = h[SP.next(sp)] - 1;
    if (kvm.rcu.gracePeriodOver(h[SP.retire_epoch(sp)])) {
      if (prev < 0) kvm.ctl[CTL.sp_pending] = next + 1;
      else h[SP.next(prev)] = next + 1;
      h[SP.next(sp)] = kvm.ctl[CTL.sp_free]!;
      kvm.ctl[CTL.sp_free] = sp + 1;
    } else {
      prev = sp;
    }
    sp = next;
  }
}

/**
 * Takes a shadow page off the pool (free list, retired pages whose grace period is over, never
 * used ones); not counted as used. -1 when none is left. mmu_lock held.
 */
export function sp_pool_pop(kvm: Kvm): number {
  const ctl = kvm.ctl;
  if (ctl[CTL.sp_free] === 0) reclaim_retired(kvm);
  const sp = ctl[CTL.sp_free] - 1;
  if (sp >= 0) {
    ctl[CTL.sp_free] = kvm.spHdr[SP.next(sp)];
    return sp;
  }
  const high = Math.max(ctl[CTL.sp_high], 1);
  if (high >= kvm.shared.config.maxSp) return -1;
  ctl[CTL.sp_high] = high + 1;
  return high;
}

/** Puts a page that was never reachable (a cached one) back on the free list. mmu_lock held. */
export function sp_pool_push(kvm: Kvm, sp: number): void {
  kvm.spHdr[SP.next(sp)] = kvm.ctl[CTL.sp_free];
  kvm.ctl[CTL.sp_free] = sp + 1;
}

/** Shadow pages neither used nor cached (some may still wait for their grace period). */
export function sp_pool_avail(kvm: Kvm): number {
  return kvm.shared.config.maxSp - 1 - kvm.ctl[CTL.sp_used] - kvm.ctl[CTL.sp_cached];
}

/** Puts sp on the vCPU's shadow-page cache (mmu_page_cache). mmu_lock held. */
export function sp_cache_push(kvm: Kvm, vcpuId: number, sp: number): void {
  const id = vcpuId;
  kvm.spHdr[SP.next(sp)] = kvm.vcpu[VCPU.sp_cache(id)];
  kvm.vcpu[VCPU.sp_cache(id)] = sp + 1;
  kvm.vcpu[VCPU.sp_cache_n(id)]++;
  kvm.ctl[CTL.sp_cached]++;
}

/** Takes a shadow page off the vCPU's cache: -1 when it is empty. mmu_lock held. */
export function sp_cache_pop(kvm: Kvm, vcpuId: number): number {
  const id = vcpuId;
  const head = kvm.vcpu[VCPU.sp_cache(id)];
  if (head === 0) return -1;
  kvm.vcpu[VCPU.sp_cache(id)] = kvm.spHdr[SP.next(head - 1)];
  kvm.vcpu[VCPU.sp_cache_n(id)]--;
  kvm.ctl[CTL.sp_cached]--;
  return head - 1;
}

/**
 * kvm_mmu_alloc_page + kvm_mmu_get_page for a direct page (TDP needs no hash lookup: a missing
 * link spte means no page exists for that range). The page comes from the cache of the vCPU that
 * holds mmu_lock (topped up for the worst case of one fault before the lock was taken), or from
 * the pool for callers without one. mmu_lock held.
 */
export function kvm_mmu_get_page(kvm: Kvm, gfn: number, level: number): number {
  const kfd = kfunc_enter(KF.kvm_mmu_get_page);
  let sp = kvm.mmu_cache_vcpu >= 0 ? sp_cache_pop(kvm, kvm.mmu_cache_vcpu) : -1;
  if (sp < 0) sp = sp_pool_pop(kvm);
  if (sp < 0) throw new KvmError("ENOMEM", "shadow page pool exhausted (maxSp)");
  kvm.ctl[CTL.sp_used]++;
  sp_init(kvm, sp, gfn, level);
  if (kvm.trace.on) trace_kvm_mmu_get_page(kvm, sp, true);
  return kfunc_ret(kfd, sp);
}

/**
 * The header of a direct shadow page just taken off a cache or the pool (both MMUs:
 * kvm_mmu_get_page, tdp_mmu_alloc_sp): its gfn and level, no parent, no root reference, off
 * every list. The caller owns sp (nobody else can reach it until it is linked) and counts it.
 */
export function sp_init(kvm: Kvm, sp: number, gfn: number, level: number): void {
  const h = kvm.spHdr;
  h[SP.gfn(sp)] = gfn;
  h[SP.role(sp)] = level | ROLE_DIRECT;
  h[SP.parent_ptes(sp)] = 0;
  h[SP.root_count(sp)] = 0;
  h[SP.next(sp)] = 0;
}

/** mmu_alloc_direct_roots: the TDP root, created on the first fault. */
export function mmu_alloc_roots(kvm: Kvm): number {
  let root = kvm.ctl[CTL.root];
  if (root !== 0) return root;
  root = kvm_mmu_get_page(kvm, 0, PT64_ROOT_LEVEL);
  kvm.spHdr[SP.root_count(root)] = 1;
  astore(kvm.ctl, CTL.root, root);
  return root;
}

function parentHead(sp: number): number {
  return SP.parent_ptes(sp);
}

/** link_shadow_page + mmu_page_add_parent_pte. */
export function link_shadow_page(kvm: Kvm, parentSptep: number, sp: number): void {
  pte_list_add(kvm, kvm.spHdr, parentHead(sp), PARENT_HEAD_ID_BASE + sp, parentSptep + 1);
  mmu_spte_set(kvm, parentSptep, make_link_spte(sp));
}

/** drop_parent_pte: unlink the link spte `parentSptep` that points at sp. */
export function drop_parent_pte(kvm: Kvm, sp: number, parentSptep: number): void {
  pte_list_remove(kvm, kvm.spHdr, parentHead(sp), parentSptep + 1);
  mmu_spte_clear_no_track(kvm, parentSptep);
}

/** drop_spte: clear a leaf and take it out of its rmap. The caller flushes. */
export function drop_spte(kvm: Kvm, sptep: number): void {
  const old = mmu_spte_clear_track_bits(kvm, sptep);
  if (!is_shadow_present_pte(old)) return;
  if (is_large_pte(old)) kvm.ctl[CTL.lpages]--;
  rmap_remove(kvm, sptep, kvm_mmu_page_get_gfn(kvm, sptep), sp_level(kvm, page_header(sptep)));
}

/**
 * drop_large_spte (404381c5): while descending to map a smaller page, a present large spte on
 * the way (e.g. made read-only by dirty logging) is dropped and remote TLBs are flushed.
 * Returns true if it dropped one.
 */
export function drop_large_spte(kvm: Kvm, sptep: number): boolean {
  const s = kvm.spt[sptep];
  if (!is_shadow_present_pte(s) || !is_large_pte(s)) return false;
  drop_spte(kvm, sptep);
  kvm_flush_remote_tlbs(kvm);
  return true;
}

/** kvm_unmap_rmapp: drop every spte of one rmap head. Returns true if any was dropped. */
export function kvm_unmap_rmapp(kvm: Kvm, hi: number): boolean {
  let any = false;
  for (let s = rmap_get_first(kvm, kvm.rmapPool, hi); s >= 0; s = rmap_get_first(kvm, kvm.rmapPool, hi)) {
    drop_spte(kvm, s);
    any = true;
  }
  return any;
}

/**
 * kvm_mmu_prepare_zap_page: clear all sptes of sp (zapping child tables too: without the
 * shadow-page hash a TDP child that lost its parent could never be found again), unlink it
 * from its parents and queue it on `invalid`.
 */
export function kvm_mmu_prepare_zap_page(kvm: Kvm, sp: number, invalid: number[]): void {
  if (kvm.trace.on) trace_kvm_mmu_prepare_zap_page(kvm, sp);
  const h = kvm.spHdr;
  const level = h[SP.role(sp)] & ROLE_LEVEL_MASK;
  const base = sp * PT64_ENT_PER_PAGE;
  for (let i = 0; i < PT64_ENT_PER_PAGE; i++) {
    const s = kvm.spt[base + i];
    if (!is_shadow_present_pte(s)) continue;
    if (is_last_spte(s, level)) {
      drop_spte(kvm, base + i);
    } else {
      const child = spte_to_child_sp(s);
      drop_parent_pte(kvm, child, base + i);
      kvm_mmu_prepare_zap_page(kvm, child, invalid);
    }
  }
  const parents: number[] = [];
  pte_list_walk(kvm, h, SP.parent_ptes(sp), (p) => parents.push(p));
  for (const p of parents) drop_parent_pte(kvm, sp, p);
  h[SP.role(sp)] |= ROLE_INVALID;
  if (kvm.bug(BUG["early-free"])) {
    // Bug: the page is reusable before vCPU walkers and RCU readers are done with it.
    free_sp(kvm, sp);
    return;
  }
  invalid.push(sp);
}

/** Puts sp on the free list now: only the early-free bug does this before a grace period. */
export function free_sp(kvm: Kvm, sp: number): void {
  kvm.spHdr[SP.next(sp)] = kvm.ctl[CTL.sp_free]!;
  kvm.ctl[CTL.sp_free] = sp + 1;
  kvm.ctl[CTL.sp_used]--;
}

/** kvm_mmu_commit_zap_page: flush (waits for vCPU walkers), then retire for RCU readers. */
export function kvm_mmu_commit_zap_page(kvm: Kvm, invalid: number[]): void {
  if (invalid.length === 0) return;
  kvm_flush_remote_tlbs(kvm);
  const epoch = kvm.rcu.retireEpoch();
  for (const sp of invalid) {
    kvm.spHdr[SP.retire_epoch(sp)] = epoch;
    kvm.spHdr[SP.next(sp)] = kvm.ctl[CTL.sp_pending]!;
    kvm.ctl[CTL.sp_pending] = sp + 1;
    kvm.ctl[CTL.sp_used]--;
  }
  invalid.length = 0;
}

/** src/mmu/shadow.ts still imports rmap_add from here; it moves to rmap.ts with the split. */
export { rmap_add } from "./rmap.js";

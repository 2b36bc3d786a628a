/**
 * Shadow mode: shadow pages (kvm_mmu_get_page with a role, zap, make_mmu_pages_available) and the
 * vCPU roots. An indirect sp shadows one guest page table (sp.gfn = the table's gfn; role.level =
 * its level; role.access = the access the guest grants on the path to it); a direct sp maps a
 * guest 2 MiB page with 4 KiB sptes, or (guest paging off) gva = gpa. Every vCPU has a root
 * (VCPU.root): the level-4 sp of its CR3, shared by vCPUs that load the same CR3.
 *
 * Zap is not recursive (a child may have other parents and stays findable in the hash); pages are
 * unhashed and taken off the active list under mmu_lock when they go on the invalid list, then
 * freed as TDP pages are (kvm_mmu_commit_zap_page). A root still used by a vCPU (root_count > 0)
 * stays, invalid, until the vCPU drops it. Everything here runs under mmu_lock.
 */
import {
  BUG,
  CTL,
  Kvm,
  ROLE_DIRECT,
  ROLE_INVALID,
  ROLE_LEVEL_MASK,
  SCTL,
  SP,
  SPX,
  VCPU,
} from "../kvm_host.js";
import { astore } from "../sync/atomic.js";
import {
  drop_parent_pte,
  drop_spte,
  free_sp,
  kvm_mmu_commit_zap_page,
  kvm_mmu_get_page,
} from "./mmu_page.js";
import { active_add_head, active_del, hash_add, hash_del, hash_find, make_role } from "./mmu_page_hash.js";
import { account_shadowed, rmap_write_protect_pt } from "./page_track.js";
import { pte_list_walk } from "./rmap.js";
import {
  is_last_spte,
  is_shadow_present_pte,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  spte_to_child_sp,
} from "./spte.js";
import { ACC_ALL } from "./guest_pt.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { trace_kvm_mmu_get_page } from "./mmutrace.js";

/** KVM_MIN_FREE_MMU_PAGES / KVM_REFILL_PAGES. */
const KVM_MIN_FREE_MMU_PAGES = 5;
const KVM_REFILL_PAGES = 25;
/** Pages kept back from n_max for pages that wait for their RCU grace period. */
const RETIRE_SLACK = 64;

/**
 * kvm_mmu_get_page (shadow mode): the valid sp of (gfn, role), or a new one. A new indirect sp
 * write-protects its guest table (and flushes) before it is used.
 */
export function kvm_mmu_get_shadow_page(
  kvm: Kvm,
  gfn: number,
  level: number,
  direct: boolean,
  access: number,
): number {
  const role = make_role(level, direct, access);
  let sp = hash_find(kvm, gfn, role);
  if (sp >= 0) {
    kvm.sctl[SCTL.sp_hash_hits]++;
    if (kvm.trace.on) trace_kvm_mmu_get_page(kvm, sp, false);
    return sp;
  }
  sp = kvm_mmu_get_page(kvm, gfn, level);
  kvm.spHdr[SP.role(sp)] = role;
  kvm.spExt[SPX.flood(sp)] = 0;
  kvm.spExt[SPX.on_list(sp)] = 1;
  hash_add(kvm, sp, gfn);
  active_add_head(kvm, sp);
  kvm.sctl[SCTL.sp_created]++;
  if (!direct) {
    if (rmap_write_protect_pt(kvm, gfn)) kvm_flush_remote_tlbs(kvm);
    account_shadowed(kvm, gfn, 1);
    kvm.sctl[SCTL.indirect_shadow_pages]++;
  }
  return sp;
}

/** mmu_page_zap_pte: drop one spte of a page being changed. Returns true if it was present. */
export function mmu_page_zap_pte(kvm: Kvm, sptep: number, level: number): boolean {
  const s = kvm.spt[sptep];
  if (!is_shadow_present_pte(s)) return false;
  if (is_last_spte(s, level)) drop_spte(kvm, sptep);
  else drop_parent_pte(kvm, spte_to_child_sp(s), sptep);
  return true;
}

/**
 * kvm_mmu_prepare_zap_page (shadow mode): clear every spte (children keep living, unlinked), drop
 * the links of every parent, unaccount. A page no vCPU uses as root goes on `invalid` after it is
 * unhashed and taken off the active list; a root in use stays until its last user drops it.
 * Returns true if the page went on `invalid`.
 */
export function shadow_prepare_zap_page(kvm: Kvm, sp: number, invalid: number[]): boolean {
  const h = kvm.spHdr;
  const role = h[SP.role(sp)];
  const level = role & ROLE_LEVEL_MASK;
  const base = sp * PT64_ENT_PER_PAGE;
  for (let i = 0; i < PT64_ENT_PER_PAGE; i++) mmu_page_zap_pte(kvm, base + i, level);
  const parents: number[] = [];
  pte_list_walk(kvm, h, SP.parent_ptes(sp), (p) => parents.push(p));
  for (const p of parents) drop_parent_pte(kvm, sp, p);
  if ((role & (ROLE_INVALID | ROLE_DIRECT)) === 0) {
    account_shadowed(kvm, h[SP.gfn(sp)], -1);
    kvm.sctl[SCTL.indirect_shadow_pages]--;
  }
  h[SP.role(sp)] = role | ROLE_INVALID;
  if (h[SP.root_count(sp)] === 0) {
    if (kvm.spExt[SPX.on_list(sp)] === 1) {
      kvm.spExt[SPX.on_list(sp)] = 0;
      hash_del(kvm, sp);
      active_del(kvm, sp);
      // Bug early-free: reusable before vCPU walkers and RCU readers are done with it.
      if (kvm.bug(BUG["early-free"])) free_sp(kvm, sp);
      else invalid.push(sp);
      return true;
    }
    return false;
  }
  // A root in use: to the head of the active list; its vCPUs reload it at their next fault.
  if (kvm.spExt[SPX.on_list(sp)] === 1) {
    active_del(kvm, sp);
    active_add_head(kvm, sp);
  }
  return false;
}

/**
 * Zaps pages from the tail of active_mmu_pages (the oldest) until `enough` says so or every page
 * has been seen once; a root in use is zapped in place and moved to the head (its vCPUs reload
 * it at their next fault), so meeting the first page kept at the tail again ends the scan.
 * `enough` is given the pages already queued for freeing. Returns the pages zapped.
 */
export function kvm_mmu_zap_oldest(kvm: Kvm, enough: (queued: number) => boolean): number {
  const s = kvm.sctl;
  const invalid: number[] = [];
  let n = 0;
  let firstKept = -1;
  while (!enough(invalid.length)) {
    const tail = s[SCTL.active_tail] - 1;
    if (tail < 0 || tail === firstKept) break;
    if ((kvm.spHdr[SP.role(tail)] & ROLE_INVALID) === 0) {
      shadow_prepare_zap_page(kvm, tail, invalid);
      s[SCTL.recycled]++;
      n++;
    } else {
      // A zapped root still in use: it stays until its vCPUs drop it.
      active_del(kvm, tail);
      active_add_head(kvm, tail);
    }
    if (kvm.spExt[SPX.on_list(tail)] === 1 && firstKept < 0) firstKept = tail;
  }
  kvm_mmu_commit_zap_page(kvm, invalid);
  return n;
}

/**
 * make_mmu_pages_available: when fewer than KVM_MIN_FREE_MMU_PAGES are left under n_max, zap the
 * oldest pages until KVM_REFILL_PAGES are. As in KVM, n_max counts pages in use (not the vCPU
 * caches); the top-up reclaims when the pool itself runs short.
 */
export function make_mmu_pages_available(kvm: Kvm): void {
  const s = kvm.sctl;
  let nMax = s[SCTL.n_max];
  if (nMax === 0) nMax = s[SCTL.n_max] = Math.max(16, kvm.shared.config.maxSp - 1 - RETIRE_SLACK);
  const avail = (queued: number): number => nMax - kvm.ctl[CTL.sp_used] + queued;
  if (avail(0) >= KVM_MIN_FREE_MMU_PAGES) return;
  kvm_mmu_zap_oldest(kvm, (queued) => avail(queued) >= KVM_REFILL_PAGES);
}

/** mmu_alloc_shadow_roots / mmu_alloc_direct_roots for one vCPU. */
export function mmu_alloc_shadow_root(kvm: Kvm, vcpuId: number, cr3: number): number {
  const root =
    cr3 === 0
      ? kvm_mmu_get_shadow_page(kvm, 0, PT64_ROOT_LEVEL, true, ACC_ALL)
      : kvm_mmu_get_shadow_page(kvm, cr3, PT64_ROOT_LEVEL, false, ACC_ALL);
  kvm.spHdr[SP.root_count(root)]++;
  astore(kvm.vcpu, VCPU.root(vcpuId), root);
  return root;
}

/** mmu_free_roots for one vCPU: an invalid root whose count drops to 0 is freed. */
export function mmu_free_shadow_root(kvm: Kvm, vcpuId: number): void {
  const root = kvm.vcpu[VCPU.root(vcpuId)];
  if (root === 0) return;
  astore(kvm.vcpu, VCPU.root(vcpuId), 0);
  if (--kvm.spHdr[SP.root_count(root)] === 0 && (kvm.spHdr[SP.role(root)] & ROLE_INVALID) !== 0) {
    const invalid: number[] = [];
    shadow_prepare_zap_page(kvm, root, invalid);
    kvm_mmu_commit_zap_page(kvm, invalid);
  }
}

/**
 * kvm_mmu_new_cr3 + reload: takes mmu_lock. The vCPU is outside guest mode and has topped up its
 * caches (mmu_topup_memory_caches) for the root it may allocate.
 */
export function kvm_mmu_load_cr3(kvm: Kvm, vcpuId: number, cr3: number): number {
  kvm.mmu_lock.write_lock();
  kvm.mmu_cache_vcpu = vcpuId;
  try {
    mmu_free_shadow_root(kvm, vcpuId);
    make_mmu_pages_available(kvm);
    return mmu_alloc_shadow_root(kvm, vcpuId, cr3);
  } finally {
    kvm.mmu_cache_vcpu = -1;
    kvm.mmu_lock.write_unlock();
  }
}

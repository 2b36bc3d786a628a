/**
 * Per-vCPU memory caches (mmu_topup_memory_caches, mmu_free_memory_caches) and reclaim.
 *
 * A fault must not run out of shadow pages or pte_list descriptors half-way through, with sptes
 * changed under mmu_lock. So, as KVM does, each vCPU fills its own caches to the worst case of one
 * fault *before* it takes mmu_lock for the fault, and every allocation under the lock comes from
 * those caches. The caches live in shared memory (VCPU.sp_cache, VCPU.desc_cache: lists linked
 * through the pools' own free links) so that the owner can give them back when the worker is gone.
 *
 * The pools' free lists stay under mmu_lock: the top-up takes mmu_lock briefly, and only when a
 * cache is below its minimum; it then fills to more than the minimum while the pool is plentiful,
 * so most faults take the lock once. When the pools are short the top-up reclaims, still under
 * that brief hold: shadow mode zaps the oldest pages of active_mmu_pages; TDP zaps the whole root
 * (vCPUs build a new one at their next fault). If that is not enough the vCPU waits a little
 * outside the lock (pages zapped while a lockless harvest reads them wait for its grace period),
 * then gives up with ENOMEM, from its fault entry, where it holds nothing and has changed nothing.
 */
import { CTL, Kvm, MmuMode, VCPU } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { astore, schedHookInstalled } from "../sync/atomic.js";
import {
  desc_cache_pop,
  desc_cache_push,
  desc_pool_avail,
  desc_pool_pop,
  desc_pool_push,
} from "../alloc/slab.js";
import {
  kvm_mmu_commit_zap_page,
  kvm_mmu_prepare_zap_page,
  sp_cache_pop,
  sp_cache_push,
  sp_pool_avail,
  sp_pool_pop,
  sp_pool_push,
} from "./mmu_page.js";
import { kvm_mmu_zap_oldest } from "./shadow_page.js";

/**
 * The worst case of one fault. Shadow pages: the root (a TDP root on the first fault, a shadow
 * root reloaded after a zap) and one table per level below it (3, 2, 1). Descriptors: each
 * link_shadow_page may add to the parent_ptes of an existing (hashed) page, at 3 levels, and the
 * leaf's rmap_add adds one: pte_list_add takes at most one descriptor per call. An emulated guest
 * page-table write prefetches sptes only while the cache has a descriptor to spare.
 */
export const MMU_CACHE_MIN_SP = 4;
export const MMU_CACHE_MIN_DESC = 4;
/** How far a top-up fills while the pool is plentiful. */
const MMU_CACHE_MAX_SP = 8;
const MMU_CACHE_MAX_DESC = 16;
/** How long a vCPU waits, outside mmu_lock, for memory before it fails with ENOMEM. */
export const MMU_TOPUP_WAIT_MS = 200;

function sp_n(kvm: Kvm, vcpuId: number): number {
  return kvm.vcpu[VCPU.sp_cache_n(vcpuId)];
}

function desc_n(kvm: Kvm, vcpuId: number): number {
  return kvm.vcpu[VCPU.desc_cache_n(vcpuId)];
}

/**
 * Gives shadow pages and descriptors back to the pools by zapping shadow pages until `needSp`
 * pages and `needDesc` descriptors are free, or nothing more can go. mmu_lock held. Returns true
 * if it zapped anything.
 */
export function kvm_mmu_reclaim(kvm: Kvm, needSp: number, needDesc: number): boolean {
  if (kvm.mode === MmuMode.Shadow) {
    const n = kvm_mmu_zap_oldest(
      kvm,
      (queued) => sp_pool_avail(kvm) + queued >= needSp && desc_pool_avail(kvm) >= needDesc,
    );
    return n > 0;
  }
  if (kvm.ops.zap_all !== undefined) return kvm.ops.zap_all(kvm);
  // TDP keeps no list of pages by age: drop the whole root. Lockless walkers load CTL.root, so it
  // is cleared first; the commit's flush waits for vCPUs that may still stand on the old tables.
  const root = kvm.ctl[CTL.root];
  if (root === 0) return false;
  astore(kvm.ctl, CTL.root, 0);
  const invalid: number[] = [];
  kvm_mmu_prepare_zap_page(kvm, root, invalid);
  kvm_mmu_commit_zap_page(kvm, invalid);
  return true;
}

/**
 * Moves up to `want` objects from a pool onto a cache in one batch, keeping the pool's order: the
 * object the pool would have handed out first (the most recently freed) is used first, as from a
 * slab.
 */
function fill(
  kvm: Kvm,
  vcpuId: number,
  want: number,
  pop: (kvm: Kvm) => number,
  push: (kvm: Kvm, vcpuId: number, x: number) => void,
): void {
  const got: number[] = [];
  while (got.length < want) {
    const x = pop(kvm);
    if (x < 0) break;
    got.push(x);
  }
  for (let i = got.length - 1; i >= 0; i--) push(kvm, vcpuId, got[i]);
}

/**
 * Fills the caches of vcpuId: to their maximum while the pool has room for every vCPU's full
 * caches twice over (so that caches never starve a small pool), else to their minimum,
 * reclaiming once if needed. mmu_lock held. Returns false if the minimum cannot be reached.
 */
function topup_locked(kvm: Kvm, vcpuId: number): boolean {
  const vcpus = Math.max(1, kvm.ctl[CTL.nr_vcpus]);
  for (let round = 0; ; round++) {
    const spMax = sp_pool_avail(kvm) > 2 * vcpus * MMU_CACHE_MAX_SP ? MMU_CACHE_MAX_SP : MMU_CACHE_MIN_SP;
    const descMax =
      desc_pool_avail(kvm) > 2 * vcpus * MMU_CACHE_MAX_DESC ? MMU_CACHE_MAX_DESC : MMU_CACHE_MIN_DESC;
    fill(kvm, vcpuId, spMax - sp_n(kvm, vcpuId), sp_pool_pop, sp_cache_push);
    fill(kvm, vcpuId, descMax - desc_n(kvm, vcpuId), desc_pool_pop, desc_cache_push);
    if (sp_n(kvm, vcpuId) >= MMU_CACHE_MIN_SP && desc_n(kvm, vcpuId) >= MMU_CACHE_MIN_DESC) return true;
    if (round > 0) return false;
    kvm.ctl[CTL.reclaims]++;
    const needSp = MMU_CACHE_MIN_SP - sp_n(kvm, vcpuId);
    if (!kvm_mmu_reclaim(kvm, needSp, MMU_CACHE_MIN_DESC - desc_n(kvm, vcpuId))) return false;
  }
}

/**
 * mmu_topup_memory_caches: called by a vCPU before it takes mmu_lock for a fault (or an emulated
 * page-table write). Nothing to do while the caches hold the worst case of one fault; else takes
 * mmu_lock briefly to refill (reclaiming when the pools are short). Throws KvmError(ENOMEM) naming
 * the pool when it cannot, after at most MMU_TOPUP_WAIT_MS without the lock.
 */
export function mmu_topup_memory_caches(kvm: Kvm, vcpuId: number): void {
  if (sp_n(kvm, vcpuId) >= MMU_CACHE_MIN_SP && desc_n(kvm, vcpuId) >= MMU_CACHE_MIN_DESC) return;
  const deadline = Date.now() + MMU_TOPUP_WAIT_MS;
  for (;;) {
    kvm.mmu_lock.write_lock();
    let ok: boolean;
    try {
      ok = topup_locked(kvm, vcpuId);
    } finally {
      kvm.mmu_lock.write_unlock();
    }
    if (ok) return;
    // A controlled scheduler runs every thread on this one: waiting here would stall them all.
    if (schedHookInstalled() || Date.now() >= deadline) break;
    Atomics.wait(kvm.vcpu, VCPU.sp_cache_n(vcpuId), sp_n(kvm, vcpuId), 2);
  }
  const cfg = kvm.shared.config;
  if (sp_n(kvm, vcpuId) < MMU_CACHE_MIN_SP)
    throw new KvmError(
      "ENOMEM",
      `shadow page pool exhausted (maxSp ${cfg.maxSp}): ` +
        `${kvm.ctl[CTL.sp_used]} in use, ${kvm.ctl[CTL.sp_cached]} in vCPU caches`,
    );
  throw new KvmError(
    "ENOMEM",
    `pte_list_desc pool exhausted (maxDesc ${cfg.maxDesc}): ` +
      `${kvm.ctl[CTL.desc_used]} in use, ${kvm.ctl[CTL.desc_cached]} in vCPU caches`,
  );
}

/**
 * mmu_free_memory_caches: gives a vCPU's cached pages and descriptors back to the pools. The owner
 * calls it once the vCPU's worker is gone. Takes mmu_lock.
 */
export function mmu_free_memory_caches(kvm: Kvm, vcpuId: number): void {
  kvm.mmu_lock.write_lock();
  try {
    // A cached page was never reachable: no grace period to wait for.
    for (let sp = sp_cache_pop(kvm, vcpuId); sp >= 0; sp = sp_cache_pop(kvm, vcpuId)) sp_pool_push(kvm, sp);
    for (let d = desc_cache_pop(kvm, vcpuId); d >= 0; d = desc_cache_pop(kvm, vcpuId)) desc_pool_push(kvm, d);
  } finally {
    kvm.mmu_lock.write_unlock();
  }
}

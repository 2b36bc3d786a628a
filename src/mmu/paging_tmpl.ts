/**
 * Shadow mode, the guest side of a fault (paging_tmpl.h): FNAME(walk_addr) over the guest page
 * tables, FNAME(fetch) building the shadow path, and the shadow page fault (FNAME(page_fault), or
 * nonpaging_page_fault with guest paging off). There is no unsync: every guest write to a
 * shadowed table traps and is emulated (pte_write.ts). fast_page_fault runs only with guest paging
 * off (an indirect sp's spte index does not name its gfn); with guest paging, the fault always
 * takes mmu_lock, as in 3.11. Everything but the walk of guest memory runs under mmu_lock.
 */
import { BUG, CTL, Kvm, PAGE_WORDS, ROLE_INVALID, SCTL, SPX, VCPU } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { aload, spinPoint } from "../sync/atomic.js";
import { gfn_to_memslot, lpage_info_index, slot_dirty_logged } from "../mem/memslot.js";
import { cmpxchg_gpte, gfn_to_pfn_memslot, guest_gfn_to_pfn } from "../mem/guest_memory.js";
import { hva_is_huge } from "../mem/host_memory.js";
import { handle_userfault } from "../mem/userfault.js";
import { drop_large_spte, drop_parent_pte, link_shadow_page } from "./mmu_page.js";
import { role_access, sp_role } from "./mmu_page_hash.js";
import {
  kvm_mmu_get_shadow_page,
  make_mmu_pages_available,
  mmu_alloc_shadow_root,
  mmu_free_shadow_root,
} from "./shadow_page.js";
import { mmu_notifier_retry } from "./mmu_notifier.js";
import { mmu_topup_memory_caches } from "./mmu_cache.js";
import { KvmPageFault, mmu_set_spte, shadow_walk_init, shadow_walk_next, shadow_walk_okay } from "./mmu.js";
import { RET_PF_EMULATE, RET_PF_RETRY } from "./kvm_mmu.js";
import {
  is_large_pte,
  is_shadow_present_pte,
  KVM_PAGES_PER_HPAGE_MASK,
  PT_DIRECTORY_LEVEL,
  PT_PAGE_TABLE_LEVEL,
  PT64_ROOT_LEVEL,
  spte_to_child_sp,
} from "./spte.js";
import {
  ACC_ALL,
  ACC_WRITE_MASK,
  gpt_index,
  gpte_access,
  gpte_gfn,
  GPTE_A,
  GPTE_D,
  GPTE_P,
  GuestPageFault,
  GuestWalker,
  is_last_gpte,
} from "./guest_pt.js";
export { GuestWalker } from "./guest_pt.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";

/**
 * FNAME(walk_addr): translates vpn through the guest tables at cr3, setting A on every level and
 * D on the leaf of a write (cmpxchg; restarts if a gpte changed under it). Throws GuestPageFault
 * for a non-present entry or a write to a read-only mapping. A read of a clean leaf yields
 * pte_access without W (protect_clean_gpte), so the first write faults and sets D.
 */
export function walk_addr(kvm: Kvm, w: GuestWalker, cr3: number, vpn: number, write: boolean): void {
  const mem = kvm.mem;
  retry: for (let attempt = 0; ; attempt++) {
    if (attempt > 1000)
      throw new KvmError("EIO", `walk_addr: gptes of gva 0x${(vpn * 4096).toString(16)} keep changing`);
    let table = cr3;
    let access = ACC_ALL;
    w.ptAccess[PT64_ROOT_LEVEL + 1] = ACC_ALL;
    for (let level = PT64_ROOT_LEVEL; level >= 1; level--) {
      const pfn = guest_gfn_to_pfn(kvm, table);
      if (pfn < 0)
        throw new KvmError(
          "EFAULT",
          `gpa 0x${(table * 4096).toString(16)}: guest page table outside guest memory`,
        );
      const idx = gpt_index(vpn, level);
      const lo = aload(mem, pfn * PAGE_WORDS + idx * 2);
      const hi = aload(mem, pfn * PAGE_WORDS + idx * 2 + 1);
      w.tableGfn[level] = table;
      w.lo[level] = lo;
      w.hi[level] = hi;
      if ((lo & GPTE_P) === 0) throw new GuestPageFault(vpn, write, false);
      access &= gpte_access(lo);
      w.ptAccess[level] = access;
      if (is_last_gpte(lo, level)) {
        w.level = level;
        const g = gpte_gfn(lo, hi);
        w.gfn = level === 2 ? g - (g & 511) + (vpn & 511) : g;
        break;
      }
      table = gpte_gfn(lo, hi);
    }
    if (write && (access & ACC_WRITE_MASK) === 0) throw new GuestPageFault(vpn, write, true);
    // FNAME(update_accessed_dirty_bits).
    for (let level = PT64_ROOT_LEVEL; level >= w.level; level--) {
      const lo = w.lo[level];
      const need = GPTE_A | (level === w.level && write ? GPTE_D : 0);
      if ((lo & need) === need) continue;
      if (!cmpxchg_gpte(kvm, w.tableGfn[level], gpt_index(vpn, level), lo, lo | need)) continue retry;
      w.lo[level] = lo | need;
    }
    w.pteAccess = access;
    if (!write && (w.lo[w.level] & GPTE_D) === 0) w.pteAccess &= ~ACC_WRITE_MASK;
    return;
  }
}

/** FNAME(gpte_changed): the gpte walked at `level` is no longer what guest memory holds. */
function gpte_changed(kvm: Kvm, w: GuestWalker, vpn: number, level: number): boolean {
  const pfn = guest_gfn_to_pfn(kvm, w.tableGfn[level]);
  if (pfn < 0) return true;
  const i = pfn * PAGE_WORDS + gpt_index(vpn, level) * 2;
  return aload(kvm.mem, i) !== w.lo[level] || aload(kvm.mem, i + 1) !== w.hi[level];
}

/** What a vCPU passes to the shadow fault path. */
const SHADOW_RETRY = RET_PF_RETRY;
export const SHADOW_EMULATE = RET_PF_EMULATE;
/** fetch: a gpte changed under the walk; walk again. */
const SHADOW_GPTE_CHANGED = -1;

function clear_sp_write_flooding_count(kvm: Kvm, sp: number): void {
  kvm.spExt[SPX.flood(sp)] = 0;
}

/** The vCPU's root, reloaded if it was zapped (KVM_REQ_MMU_RELOAD). mmu_lock held. */
function vcpu_root(kvm: Kvm, v: KvmPageFault): number {
  let root = kvm.vcpu[VCPU.root(v.vcpuId)];
  if (root === 0 || (sp_role(kvm, root) & ROLE_INVALID) !== 0) {
    if (root !== 0) kvm.sctl[SCTL.reloads]++;
    mmu_free_shadow_root(kvm, v.vcpuId);
    root = mmu_alloc_shadow_root(kvm, v.vcpuId, v.cr3);
  }
  return root;
}

/** validate_direct_spte: drop a link to a direct child whose access is not `directAccess`. */
function validate_direct_spte(kvm: Kvm, sptep: number, directAccess: number): void {
  const s = kvm.spt[sptep];
  if (!is_shadow_present_pte(s) || is_large_pte(s)) return;
  const child = spte_to_child_sp(s);
  if (role_access(sp_role(kvm, child)) !== directAccess) {
    drop_parent_pte(kvm, child, sptep);
    kvm_flush_remote_tlbs(kvm);
  }
}

/**
 * FNAME(fetch): builds the shadow path for the walked translation and installs the leaf. Returns
 * SHADOW_EMULATE, SHADOW_RETRY or SHADOW_GPTE_CHANGED.
 */
function fetch(kvm: Kvm, v: KvmPageFault): number {
  const w = v.walker;
  const it = v.it;
  const vpn = v.addr;
  const hlevel = v.goal_level;
  shadow_walk_init(it, vcpu_root(kvm, v), vpn);
  if (gpte_changed(kvm, w, vpn, PT64_ROOT_LEVEL)) return SHADOW_GPTE_CHANGED;
  // Indirect levels: one sp per guest table down to the table that holds the leaf gpte.
  for (; shadow_walk_okay(it) && it.level > w.level; shadow_walk_next(kvm, it)) {
    clear_sp_write_flooding_count(kvm, it.sp);
    drop_large_spte(kvm, it.sptep);
    const level = it.level;
    if (!is_shadow_present_pte(kvm.spt[it.sptep])) {
      const child = kvm_mmu_get_shadow_page(kvm, w.tableGfn[level - 1], level - 1, false, w.ptAccess[level]);
      if (gpte_changed(kvm, w, vpn, level - 1)) return SHADOW_GPTE_CHANGED;
      link_shadow_page(kvm, it.sptep, child);
    } else if (gpte_changed(kvm, w, vpn, level - 1)) {
      return SHADOW_GPTE_CHANGED;
    }
  }
  // Direct levels: a guest 2 MiB page mapped with 4 KiB sptes.
  const directAccess = w.pteAccess;
  for (; shadow_walk_okay(it) && it.level > hlevel; shadow_walk_next(kvm, it)) {
    clear_sp_write_flooding_count(kvm, it.sp);
    drop_large_spte(kvm, it.sptep);
    validate_direct_spte(kvm, it.sptep, directAccess);
    if (!is_shadow_present_pte(kvm.spt[it.sptep])) {
      const base = w.gfn - (w.gfn & KVM_PAGES_PER_HPAGE_MASK(it.level));
      link_shadow_page(kvm, it.sptep, kvm_mmu_get_shadow_page(kvm, base, it.level - 1, true, directAccess));
    }
  }
  clear_sp_write_flooding_count(kvm, it.sp);
  const off = w.gfn & KVM_PAGES_PER_HPAGE_MASK(hlevel);
  return mmu_set_spte(kvm, v, it.sptep, w.pteAccess, w.gfn - off, v.pfn - off)
    ? SHADOW_EMULATE
    : SHADOW_RETRY;
}

/** nonpaging_map's __direct_map on the vCPU's direct root (guest paging off: gva = gpa). */
function nonpaging_map(kvm: Kvm, v: KvmPageFault): number {
  const it = v.it;
  const gfn = v.gfn;
  for (shadow_walk_init(it, vcpu_root(kvm, v), gfn); shadow_walk_okay(it); shadow_walk_next(kvm, it)) {
    if (it.level === PT_PAGE_TABLE_LEVEL)
      return mmu_set_spte(kvm, v, it.sptep, ACC_ALL, gfn, v.pfn) ? SHADOW_EMULATE : SHADOW_RETRY;
    if (!is_shadow_present_pte(kvm.spt[it.sptep])) {
      const base = gfn - (gfn & KVM_PAGES_PER_HPAGE_MASK(it.level));
      link_shadow_page(kvm, it.sptep, kvm_mmu_get_shadow_page(kvm, base, it.level - 1, true, ACC_ALL));
    }
  }
  throw new KvmError("EIO", `nonpaging_map: no path to gfn ${gfn}`);
}

/**
 * The shadow MMU's page fault (kvm_mmu->page_fault: FNAME(page_fault), or nonpaging_page_fault
 * with CR3 = 0) for guest virtual page v.addr. The vCPU is outside guest mode. Returns
 * SHADOW_RETRY (the vCPU retries the access) or SHADOW_EMULATE (a write to a shadowed guest page
 * table: the caller emulates it at v.walker.gfn). Throws GuestPageFault (deliver to the guest) or
 * KvmError.
 */
export function shadow_page_fault(kvm: Kvm, v: KvmPageFault): number {
  const w = v.walker;
  const vpn = v.addr;
  const write = v.write;
  for (let attempt = 0; ; attempt++) {
    if (attempt > 10000)
      throw new KvmError("EIO", `shadow fault at gva 0x${(vpn * 4096).toString(16)}: no progress`);
    v.mmu_seq = aload(kvm.ctl, CTL.notifier_seq);
    if (v.cr3 === 0) {
      w.level = 1;
      w.gfn = vpn;
      w.pteAccess = ACC_ALL;
      if (write && v.present && kvm.ops.fast_page_fault(kvm, v)) return SHADOW_RETRY;
    } else {
      walk_addr(kvm, w, v.cr3, vpn, write);
    }
    const gfn = w.gfn;
    v.gfn = gfn;
    v.max_level = w.level;
    const slot = gfn_to_memslot(kvm, gfn);
    if (slot < 0) throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: no memslot`);
    v.slot = slot;
    // A page post-copy has not brought yet: wait for it here, before mmu_lock (false: retry later).
    if (!handle_userfault(kvm, v.vcpuId, slot, gfn)) return SHADOW_RETRY;
    const hf = v.hf;
    if (!gfn_to_pfn_memslot(kvm, slot, gfn, hf))
      throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: host memory not mapped`);
    v.pfn = hf.pfn;
    v.map_writable = hf.writable;
    if (write && !v.map_writable)
      throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: write to read-only memory`);
    v.host_huge = hva_is_huge(kvm, hf.hvaPage);
    // Before mmu_lock: fetch then cannot run out of pages or descriptors half-way.
    mmu_topup_memory_caches(kvm, v.vcpuId);
    kvm.mmu_lock.write_lock();
    kvm.mmu_cache_vcpu = v.vcpuId;
    let ret: number;
    try {
      v.stats.slow++;
      if (mmu_notifier_retry(kvm, v.mmu_seq) && !kvm.bug(BUG["no-notifier-retry"])) {
        v.stats.retries++;
        spinPoint(kvm.ctl, CTL.notifier_count); // the vCPU retries until the invalidation ends
        return SHADOW_RETRY;
      }
      make_mmu_pages_available(kvm);
      v.goal_level = PT_PAGE_TABLE_LEVEL;
      if (v.cr3 === 0) {
        ret = nonpaging_map(kvm, v);
      } else {
        // mapping_level: 2 MiB only for a guest 2 MiB page on a huge host page, in a slot that is
        // not logged, with no shadowed guest table in the range (has_wrprotected_page).
        if (
          v.max_level === PT_DIRECTORY_LEVEL &&
          v.host_huge &&
          !slot_dirty_logged(kvm, slot) &&
          kvm.lpagePool[lpage_info_index(kvm, slot, gfn, PT_DIRECTORY_LEVEL)] === 0
        )
          v.goal_level = PT_DIRECTORY_LEVEL;
        ret = fetch(kvm, v);
        if (ret === SHADOW_GPTE_CHANGED) {
          kvm.sctl[SCTL.gpte_changed]++;
          continue;
        }
      }
    } finally {
      kvm.mmu_cache_vcpu = -1;
      kvm.mmu_lock.write_unlock();
    }
    return ret;
  }
}

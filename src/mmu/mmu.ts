/**
 * The fault core shared by TDP and shadow paging: the shadow-table walks
 * (for_each_shadow_entry, walk_shadow_page_lockless), set_spte + mmu_set_spte, and
 * fast_page_fault. Used by the TDP fault (tdp_fault.ts), the shadow fault (paging_tmpl.ts), the
 * vCPU's TLB-miss walks (vcpu/) and the TLB audit.
 *
 * The order on every path that makes an spte writable is the seed's patch 5:
 *   F1 spte writable -> F2 spte in the rmap -> F4 dirty bit set (seq-cst atomics order them),
 * so a lockless get-dirty-log that sees the bit also finds the writable spte to protect. It is
 * written once, in mmu_set_spte.
 */
import { KF, kfunc_enter, kfunc_exit, kfunc_ret } from "../sync/kfunc.js";
import {
  BUG,
  CTL,
  Kvm,
  MmuMode,
  OUTSIDE_GUEST_MODE,
  READING_SHADOW_PAGE_TABLES,
  ROLE_DIRECT,
  ROLE_LEVEL_MASK,
  SP,
  VCPU,
} from "../kvm_host.js";
import { lockdep_assert_held } from "../kvm/lockdep.js";
import { acas, aload, aread, astore } from "../sync/atomic.js";
import { mark_page_dirty, mark_page_dirty_in_slot } from "../mem/memslot.js";
import {
  drop_parent_pte,
  drop_spte,
  kvm_mmu_commit_zap_page,
  kvm_mmu_page_get_gfn,
  kvm_mmu_prepare_zap_page,
  page_header,
  rmap_add,
} from "./mmu_page.js";
import { gfn_is_shadowed } from "./page_track.js";
import { mmu_spte_set, mmu_spte_update } from "./spte_ops.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  is_writable_pte,
  PT_PAGE_SIZE_MASK,
  PT_PAGE_TABLE_LEVEL,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  PT64_INDEX,
  PT64_ROOT_LEVEL,
  spte_is_locklessly_modifiable,
  spte_to_child_sp,
  spte_to_pfn,
  SPTE_HOST_WRITEABLE,
  SPTE_MMU_WRITEABLE,
  SPTE_PFN_SHIFT,
  Spte,
  SpteLevel,
} from "./spte.js";
import { ACC_USER_MASK, ACC_WRITE_MASK, GuestWalker } from "./guest_pt.js";
import { HostFrame } from "../mem/guest_memory.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { trace_kvm_mmu_set_spte } from "./mmutrace.js";

/** Per-vCPU fault counters (this thread's; published by Vcpu.publishStats). */
export class FaultStats {
  fast = 0;
  slow = 0;
  retries = 0;
}

/**
 * struct kvm_page_fault: one fault as it travels through the MMU. One record per vCPU, filled
 * by kvm_mmu_page_fault (kvm_mmu.ts) and reused for every fault (no allocation on the hot path).
 * Written only by its vCPU's thread.
 */
export class KvmPageFault {
  /** The faulting vCPU. */
  vcpuId: number;
  /** The faulting address in pages: a gfn (TDP) or a guest virtual page (shadow). */
  addr = 0;
  /** PFERR_* bits; `present` and `write` are its bits, decoded. */
  error_code = 0;
  present = false;
  write = false;
  /** The gfn the address translates to (shadow: after the guest walk). */
  gfn = 0;
  /** The largest level the mapping may use (the guest's leaf level in shadow mode). */
  max_level = 2;
  /** The memslot of gfn, -1 before it is looked up. */
  slot = -1;
  /** The host frame of gfn and whether the host maps it writable (gfn_to_pfn's answer). */
  pfn = 0;
  map_writable = false;
  /** The host maps the 2 MiB range of gfn with a huge page (transparent_hugepage_adjust). */
  host_huge = false;
  /** The level the fault maps at (after the dirty-logging and huge-page checks). */
  goal_level = 1;
  /** mmu_notifier_seq as read before the pfn lookup; re-checked under mmu_lock. */
  mmu_seq = 0;
  /** Shadow mode: the guest's CR3 (0: paging off) and its walk. */
  cr3 = 0;
  readonly walker = new GuestWalker();
  /** Scratch of the fault path: the host frame lookup, the shadow-table walk. */
  readonly hf = new HostFrame();
  readonly it = new ShadowWalkIterator();
  /** The vCPU's fault counters. */
  readonly stats: FaultStats;

  constructor(vcpuId: number, stats: FaultStats = new FaultStats()) {
    this.vcpuId = vcpuId;
    this.stats = stats;
  }
}

/** root_hpa of a vCPU: the VM's TDP root, or in shadow mode the vCPU's own root. */
function vcpu_root_hpa(kvm: Kvm, vcpuId: number): number {
  return kvm.mode === MmuMode.Shadow ? aload(kvm.vcpu, VCPU.root(vcpuId)) : aload(kvm.ctl, CTL.root);
}

/**
 * struct kvm_shadow_walk_iterator: `addr` is a gfn (TDP, shadow nonpaging) or a guest virtual page
 * (shadow with guest paging); both index the tables the same way.
 */
export class ShadowWalkIterator {
  addr = 0;
  /** The shadow page being walked (shadow_addr). */
  sp = 0;
  sptep = -1;
  level = 0;
  /** The spte the last lockless walk read (fast_page_fault's old_spte, for its tracepoint). */
  spte = 0;
}

export function shadow_walk_init(it: ShadowWalkIterator, root: number, addr: number): void {
  it.addr = addr;
  it.sp = root;
  it.level = root === 0 ? 0 : PT64_ROOT_LEVEL;
}

export function shadow_walk_okay(it: ShadowWalkIterator): boolean {
  if (it.level < PT_PAGE_TABLE_LEVEL) return false;
  it.sptep = it.sp * PT64_ENT_PER_PAGE + PT64_INDEX(it.addr, it.level);
  return true;
}

function __shadow_walk_next(it: ShadowWalkIterator, spte: number): void {
  if (is_last_spte(spte, it.level)) {
    it.level = 0;
    return;
  }
  it.sp = spte_to_child_sp(spte);
  it.level--;
}

/** shadow_walk_next under mmu_lock: the spte just visited is a link (the caller made it one). */
export function shadow_walk_next(kvm: Kvm, it: ShadowWalkIterator): void {
  __shadow_walk_next(it, kvm.spt[it.sptep]);
}

/**
 * for_each_shadow_entry_lockless down to the last spte on addr's path: returns that spte (0 if
 * root is 0) with it.sptep and it.level set. The spte is either not present or a present leaf.
 * The caller keeps the tables alive: guest mode, or READING_SHADOW_PAGE_TABLES. The iterator
 * lives in locals while walking (this is every TLB miss); only sptep and level are stored.
 *
 * Each spte is read with READ_ONCE (`aread`), as mmu_spte_get_lockless does, not Atomics.load
 * (a builtin call in this V8: the four were about a tenth of a PML write's samples). What a stale
 * value can do: a leaf used for a write is validated by the cmpxchg that sets D (PML) or W
 * (fast_page_fault); a read-only fill or a fill through a D-set leaf races a change only as the
 * hardware walk does, and a change that must not be missed (D or W cleared, a zap) is followed
 * by a remote TLB flush, whose acknowledgement (seq-cst, at the safe point every miss starts
 * with) orders the change before any later walk (docs/locking.md §3.8). Each level's index
 * comes from the spte read above it (an address dependency, as for the hardware).
 */
export function walk_shadow_page_lockless(
  kvm: Kvm,
  root: number,
  addr: number,
  it: ShadowWalkIterator,
): number {
  const spt = kvm.spt;
  let sp = root;
  let level: number = SpteLevel.ROOT;
  let sptep = -1;
  let spte = 0;
  for (; root !== 0 && level >= (SpteLevel.PAGE_TABLE as number); level--) {
    sptep = sp * Spte.ENT_PER_PAGE + PT64_INDEX(addr, level);
    spte = aread(spt, sptep); // mmu_spte_get_lockless: READ_ONCE
    if (!is_shadow_present_pte(spte) || is_last_spte(spte, level)) break;
    sp = spte_to_child_sp(spte);
  }
  it.sptep = sptep;
  it.level = level;
  return spte;
}

/**
 * mmu_set_spte + set_spte: installs the leaf for (gfn -> pfn) at sptep with pte_access (ACC_ALL
 * for TDP), at level fault.goal_level, in memslot fault.slot, writable only if
 * fault.map_writable; fault.write says whether the access was a write. Returns true when the
 * access must be emulated: a write fault on a shadowed guest page table (the spte stays
 * read-only). mmu_lock held.
 */
export function mmu_set_spte(
  kvm: Kvm,
  fault: KvmPageFault,
  sptep: number,
  pteAccess: number,
  gfn: number,
  pfn: number,
): boolean {
  const kfd = kfunc_enter(KF.mmu_set_spte);
  lockdep_assert_held(kvm);
  const slot = fault.slot;
  const level = fault.goal_level;
  const old = kvm.spt[sptep];
  let wasRmapped = false;
  if (is_shadow_present_pte(old)) {
    if (level > PT_PAGE_TABLE_LEVEL && !is_large_pte(old)) {
      // A table is replaced by a large leaf.
      const child = spte_to_child_sp(old);
      drop_parent_pte(kvm, child, sptep);
      if (kvm.mode !== MmuMode.Shadow) {
        // Without the shadow-page hash a TDP child that lost its parent is unreachable: zap it.
        const invalid: number[] = [];
        kvm_mmu_prepare_zap_page(kvm, child, invalid);
        kvm_mmu_commit_zap_page(kvm, invalid);
      }
      kvm_flush_remote_tlbs(kvm);
    } else if (spte_to_pfn(old) !== pfn || kvm_mmu_page_get_gfn(kvm, sptep) !== gfn) {
      drop_spte(kvm, sptep);
      kvm_flush_remote_tlbs(kvm);
    } else {
      wasRmapped = true;
    }
  }
  // set_spte
  let s = PT_PRESENT_MASK | (pfn << SPTE_PFN_SHIFT);
  if ((pteAccess & ACC_USER_MASK) !== 0) s |= PT_USER_MASK;
  if (level > PT_PAGE_TABLE_LEVEL) s |= PT_PAGE_SIZE_MASK;
  let access = pteAccess;
  if (fault.map_writable) s |= SPTE_HOST_WRITEABLE;
  else access &= ~ACC_WRITE_MASK;
  let emulate = false;
  if ((access & ACC_WRITE_MASK) !== 0) {
    s |= PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE;
    // mmu_need_write_protect (no unsync): the gfn is a guest page table. TDP shadows none.
    if (kvm.mode === MmuMode.Shadow && gfn_is_shadowed(kvm, gfn)) {
      emulate = true;
      s &= ~(PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE);
    }
  }
  const writable = (s & PT_WRITABLE_MASK) !== 0;
  // Bug dirty-before-rmap: 3.11's order, dirty bit first.
  const dirtyFirst = kvm.bug(BUG["dirty-before-rmap"]);
  if (writable && dirtyFirst) mark_page_dirty_in_slot(kvm, slot, gfn);
  // F1
  if (is_shadow_present_pte(kvm.spt[sptep])) {
    if (mmu_spte_update(kvm, sptep, s)) kvm_flush_remote_tlbs(kvm);
  } else {
    mmu_spte_set(kvm, sptep, s);
  }
  // F2
  if (!wasRmapped) {
    const sp = page_header(sptep);
    // kvm_mmu_page_set_gfn: only an indirect sp records it (a direct sp's position names it).
    if ((kvm.spHdr[SP.role(sp)] & ROLE_DIRECT) === 0) kvm.spGfns[sptep] = gfn;
    if (level > PT_PAGE_TABLE_LEVEL) kvm.ctl[CTL.lpages]++;
    rmap_add(kvm, sptep, gfn, level);
  }
  // F4
  if (writable && !dirtyFirst) mark_page_dirty_in_slot(kvm, slot, gfn);
  if (kvm.trace.on) trace_kvm_mmu_set_spte(kvm, level, gfn, sptep);
  return kfunc_ret(kfd, emulate && fault.write);
}

/**
 * fast_page_fault: a write fault on a present, write-protected last-level spte of a direct sp
 * that the MMU and host allow writing is fixed with one cmpxchg and mark_page_dirty, without
 * mmu_lock. Runs in READING_SHADOW_PAGE_TABLES mode so that shadow pages it walks are not freed
 * under it. `addr` is a gfn: only a direct sp's spte index names its gfn, so in shadow mode this
 * serves guest paging off (nonpaging) only. Returns true when the vCPU should retry the access.
 */
export function fast_page_fault(kvm: Kvm, fault: KvmPageFault): boolean {
  const kfd = kfunc_enter(KF.fast_page_fault);
  const vcpuId = fault.vcpuId;
  astore(kvm.vcpu, VCPU.mode(vcpuId), READING_SHADOW_PAGE_TABLES);
  try {
    const it = fault.it;
    const s = walk_shadow_page_lockless(kvm, vcpu_root_hpa(kvm, vcpuId), fault.addr, it);
    it.spte = s;
    if (!is_shadow_present_pte(s)) return false;
    const role = kvm.spHdr[SP.role(page_header(it.sptep))];
    if ((role & ROLE_DIRECT) === 0) return false;
    // Patch 1: the level of the page that holds the spte, not the requested level.
    const spLevel = role & ROLE_LEVEL_MASK;
    if (!is_last_spte(s, spLevel)) return false;
    if (is_writable_pte(s)) return true; // a stale read-only TLB entry: the spte is writable already
    if (!spte_is_locklessly_modifiable(s)) return false;
    // "lazily drop large spte" v2: never make a large spte writable here.
    if (spLevel > PT_PAGE_TABLE_LEVEL && !kvm.bug(BUG["fast-pf-large"])) return false;
    // fast_pf_fix_direct_spte: the gfn of a direct sp is stable (no ABA).
    if (acas(kvm.spt, it.sptep, s, s | PT_WRITABLE_MASK) === s) {
      mark_page_dirty(kvm, kvm_mmu_page_get_gfn(kvm, it.sptep));
      fault.stats.fast++;
    }
    return true;
  } finally {
    astore(kvm.vcpu, VCPU.mode(vcpuId), OUTSIDE_GUEST_MODE);
    kfunc_exit(kfd);
  }
}

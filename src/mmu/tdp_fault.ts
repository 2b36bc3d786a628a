/**
 * TDP page faults: fast_page_fault (lockless, cmpxchg) and tdp_page_fault's slow path under
 * mmu_lock (__direct_map, mmu_set_spte, set_spte). Reference §6.
 *
 * The order on every path that makes an spte writable is the seed's patch 5:
 *   F1 spte writable -> F2 spte in the rmap -> F4 dirty bit set (seq-cst atomics order them),
 * so a lockless get-dirty-log that sees the bit also finds the writable spte to protect.
 */
import {
  BUG,
  CTL_LPAGES,
  CTL_NOTIFIER_COUNT,
  CTL_NOTIFIER_SEQ,
  Kvm,
  KVM_MEM_READONLY,
  OUTSIDE_GUEST_MODE,
  READING_SHADOW_PAGE_TABLES,
  SLOT_FLAGS,
  VCPU_MODE,
} from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { aload, astore, acas, spinPoint } from "../sync/atomic.js";
import {
  gfn_to_hva_page,
  gfn_to_memslot,
  lpage_info_index,
  mark_page_dirty,
  mark_page_dirty_in_slot,
  slot_dirty_logged,
} from "../mem/memslot.js";
import { hva_is_huge } from "../mem/host_memory.js";
import {
  drop_large_spte,
  drop_parent_pte,
  drop_spte,
  kvm_mmu_commit_zap_page,
  kvm_mmu_get_page,
  kvm_mmu_page_get_gfn,
  kvm_mmu_prepare_zap_page,
  link_shadow_page,
  mmu_alloc_roots,
  page_header,
  rmap_add,
  sp_level,
} from "./mmu_page.js";
import { mmu_spte_set, mmu_spte_update } from "./spte_ops.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  is_writable_pte,
  PT_PAGE_SIZE_MASK,
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
} from "./spte.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { CTL_ROOT } from "../kvm_host.js";

/** Per-vCPU fault counters (this thread's). */
export class FaultStats {
  fast = 0;
  slow = 0;
  retries = 0;
  spurious = 0;
}

/**
 * fast_page_fault: a write fault on a present, write-protected last-level spte that the MMU and
 * host allow writing is fixed with one cmpxchg and mark_page_dirty, without mmu_lock. Runs in
 * READING_SHADOW_PAGE_TABLES mode so that shadow pages it walks are not freed under it.
 * Returns true when the vCPU should retry the access.
 */
export function fast_page_fault(kvm: Kvm, vcpuRow: number, gfn: number, st: FaultStats): boolean {
  astore(kvm.vcpu, vcpuRow + VCPU_MODE, READING_SHADOW_PAGE_TABLES);
  let ret = false;
  try {
    let sp = aload(kvm.ctl, CTL_ROOT);
    if (sp === 0) return false;
    let sptep = -1;
    let s = 0;
    let level = PT64_ROOT_LEVEL;
    for (; level >= 1; level--) {
      sptep = sp * PT64_ENT_PER_PAGE + PT64_INDEX(gfn, level);
      s = aload(kvm.spt, sptep);
      if (!is_shadow_present_pte(s) || is_last_spte(s, level)) break;
      sp = spte_to_child_sp(s);
    }
    if (!is_shadow_present_pte(s)) return (ret = true); // the mapping changed: retry
    // Patch 1: the level of the page that holds the spte, not the requested level.
    const spLevel = sp_level(kvm, page_header(sptep));
    if (!is_last_spte(s, spLevel)) return false;
    if (is_writable_pte(s)) {
      st.spurious++;
      return (ret = true); // a stale read-only TLB entry: the spte is writable already
    }
    if (!spte_is_locklessly_modifiable(s)) return false;
    // "lazily drop large spte" v2: never make a large spte writable here (B2).
    if (spLevel > 1 && !kvm.bug(BUG["fast-pf-large"])) return false;
    // fast_pf_fix_direct_spte: the gfn of a direct sp is stable (no ABA, B4).
    if (acas(kvm.spt, sptep, s, s | PT_WRITABLE_MASK) === s) {
      mark_page_dirty(kvm, kvm_mmu_page_get_gfn(kvm, sptep));
      st.fast++;
    }
    return (ret = true);
  } finally {
    astore(kvm.vcpu, vcpuRow + VCPU_MODE, OUTSIDE_GUEST_MODE);
    void ret;
  }
}

/** mmu_notifier_retry. */
function mmu_notifier_retry(kvm: Kvm, mmuSeq: number): boolean {
  if (aload(kvm.ctl, CTL_NOTIFIER_COUNT) !== 0) return true;
  return aload(kvm.ctl, CTL_NOTIFIER_SEQ) !== mmuSeq;
}

/**
 * tdp_page_fault: returns when the vCPU should retry the access. The vCPU is outside guest mode
 * (mode OUTSIDE) for the whole call. Throws KvmError(EFAULT) for a gfn outside every memslot.
 */
export function tdp_page_fault(
  kvm: Kvm,
  vcpuRow: number,
  gfn: number,
  write: boolean,
  present: boolean,
  st: FaultStats,
): void {
  const r = gfn_to_memslot(kvm, gfn);
  if (r < 0) throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: no memslot`);
  if (write && present && fast_page_fault(kvm, vcpuRow, gfn, st)) return;

  const mmuSeq = aload(kvm.ctl, CTL_NOTIFIER_SEQ);
  // gfn_to_pfn, after reading mmu_notifier_seq (the smp_rmb pairs with invalidate_range_end).
  const hvaPage = gfn_to_hva_page(kvm, r, gfn);
  const hv = aload(kvm.hpt, hvaPage);
  const pfn = hv >>> 1;
  if (pfn === 0) throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: host memory not mapped`);
  const mapWritable = (hv & 1) !== 0 && (kvm.slots[r + SLOT_FLAGS] & KVM_MEM_READONLY) === 0;
  const hostHuge = hva_is_huge(kvm, hvaPage);
  // KVM exits to userspace (KVM_EXIT_MMIO) for a write to read-only memory; we stop the vCPU.
  if (write && !mapWritable)
    throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: write to read-only memory`);

  kvm.mmu_lock.lock();
  try {
    st.slow++;
    if (mmu_notifier_retry(kvm, mmuSeq) && !kvm.bug(BUG["no-notifier-retry"])) {
      st.retries++;
      // The vCPU will retry until the invalidation ends: a wait loop for the scheduler.
      spinPoint(kvm.ctl, CTL_NOTIFIER_COUNT);
      return;
    }
    // force_pt_level while the slot is dirty-logged (flags change under mmu_lock).
    let level = 1;
    if (!slot_dirty_logged(kvm, r) && hostHuge && kvm.lpagePool[lpage_info_index(kvm, r, gfn, 2)] === 0)
      level = 2;
    // transparent_hugepage_adjust.
    const mapGfn = level === 2 ? gfn - (gfn & 511) : gfn;
    const mapPfn = level === 2 ? pfn - (gfn & 511) : pfn;
    __direct_map(kvm, r, mapGfn, mapPfn, level, write, mapWritable);
  } finally {
    kvm.mmu_lock.unlock();
  }
}

/** __direct_map: mmu_lock held. */
function __direct_map(
  kvm: Kvm,
  r: number,
  gfn: number,
  pfn: number,
  level: number,
  write: boolean,
  mapWritable: boolean,
): void {
  let sp = mmu_alloc_roots(kvm);
  for (let l = PT64_ROOT_LEVEL; l > level; l--) {
    const sptep = sp * PT64_ENT_PER_PAGE + PT64_INDEX(gfn, l);
    drop_large_spte(kvm, sptep);
    const s = kvm.spt[sptep];
    if (!is_shadow_present_pte(s)) {
      const span = 2 ** ((l - 1) * 9);
      const child = kvm_mmu_get_page(kvm, Math.floor(gfn / span) * span, l - 1);
      link_shadow_page(kvm, sptep, child);
      sp = child;
    } else {
      sp = spte_to_child_sp(s);
    }
  }
  mmu_set_spte(kvm, r, sp * PT64_ENT_PER_PAGE + PT64_INDEX(gfn, level), level, gfn, pfn, write, mapWritable);
}

/** mmu_set_spte + set_spte (pte_access = ACC_ALL, as __direct_map passes). mmu_lock held. */
function mmu_set_spte(
  kvm: Kvm,
  r: number,
  sptep: number,
  level: number,
  gfn: number,
  pfn: number,
  _writeFault: boolean,
  hostWritable: boolean,
): void {
  const old = kvm.spt[sptep];
  let wasRmapped = false;
  if (is_shadow_present_pte(old)) {
    if (level > 1 && !is_large_pte(old)) {
      // A table is replaced by a large leaf.
      const child = spte_to_child_sp(old);
      drop_parent_pte(kvm, child, sptep);
      const invalid: number[] = [];
      kvm_mmu_prepare_zap_page(kvm, child, invalid);
      kvm_mmu_commit_zap_page(kvm, invalid);
      kvm_flush_remote_tlbs(kvm);
    } else if (spte_to_pfn(old) !== pfn) {
      drop_spte(kvm, sptep);
      kvm_flush_remote_tlbs(kvm);
    } else {
      wasRmapped = true;
    }
  }
  let s = PT_PRESENT_MASK | PT_USER_MASK | (pfn << SPTE_PFN_SHIFT);
  if (level > 1) s |= PT_PAGE_SIZE_MASK;
  if (hostWritable) s |= SPTE_HOST_WRITEABLE | PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE;
  const writable = hostWritable;
  // Bug dirty-before-rmap: 3.11's order, dirty bit first (B8).
  const dirtyFirst = kvm.bug(BUG["dirty-before-rmap"]);
  if (writable && dirtyFirst) mark_page_dirty_in_slot(kvm, r, gfn);
  // F1
  if (is_shadow_present_pte(kvm.spt[sptep])) {
    if (mmu_spte_update(kvm, sptep, s)) kvm_flush_remote_tlbs(kvm);
  } else {
    mmu_spte_set(kvm, sptep, s);
  }
  // F2
  if (!wasRmapped) {
    if (level > 1) kvm.ctl[CTL_LPAGES]++;
    rmap_add(kvm, sptep, gfn, level);
  }
  // F4
  if (writable && !dirtyFirst) mark_page_dirty_in_slot(kvm, r, gfn);
}

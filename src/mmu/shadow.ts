/**
 * Shadow paging (EPT off): the shadow MMU of Linux 3.11's mmu.c and paging_tmpl.h, reduced to
 * what dirty logging and page-table churn exercise. Reference §4, §6.3, §8.
 *
 * Shadow pages are found by (gfn, role) in mmu_page_hash (1024 buckets, `gfn & 1023`). An
 * indirect sp shadows one guest page table (sp.gfn = the table's gfn; role.level = its level;
 * role.access = the access the guest grants on the path to it); its leaf sptes record their gfn in
 * sp->gfns (kvm.spGfns, one word per spte). Direct sps map a guest 2 MiB page with 4 KiB sptes
 * (gfn = the first gfn) and, with guest paging off, gva = gpa (nonpaging mode). Every vCPU has a
 * root (VCPU_ROOT) per address space: the indirect level-4 sp of its CR3, shared by vCPUs that
 * load the same CR3; a guest table referenced from several places has several parent_ptes.
 *
 * Creating an indirect sp write-protects its gfn (rmap_write_protect with pt_protect: W and
 * MMU_W cleared, large sptes dropped, remote flush) and accounts it in lpage_info, so no 2 MiB
 * spte covers it; set_spte never installs a writable spte for a shadowed gfn (mmu_need_write_
 * protect), and a write fault on one is emulated: the write is done by "KVM" and the dependent
 * shadow entries are zapped (kvm_mmu_pte_write). There is no unsync: every guest write to a
 * shadowed table traps (3.11 with can_unsync = false). Write flooding (3 emulated writes to an sp
 * without a fault walking through it) zaps the sp at every level (3.11 skips level 1, which would
 * go unsync instead).
 *
 * Zap is not recursive (a child may have other parents and stays findable in the hash); pages
 * are unhashed and taken off the active list under mmu_lock when they go on the invalid list
 * (B12), then freed exactly as TDP pages: kvm_mmu_commit_zap_page flushes remote TLBs (vCPU
 * walkers) and retires them with an RCU epoch (lockless harvesters). A root still used by a vCPU
 * (root_count > 0) stays, invalid, until the vCPU drops it (mmu_free_roots). When the arena runs
 * low the oldest pages are zapped (make_mmu_pages_available).
 *
 * fast_page_fault runs only for direct sps (B4: an indirect sp's spte index does not determine
 * its gfn): in nonpaging mode. With guest paging, FNAME(page_fault) always takes mmu_lock, as in
 * 3.11. Everything here except the walk of guest memory runs under mmu_lock.
 */
import {
  BUG,
  CTL_LPAGES,
  CTL_NOTIFIER_COUNT,
  CTL_NOTIFIER_SEQ,
  CTL_SP_USED,
  Kvm,
  KVM_MEM_READONLY,
  KVM_NUM_MMU_PAGES,
  OUTSIDE_GUEST_MODE,
  PAGE_WORDS,
  READING_SHADOW_PAGE_TABLES,
  ROLE_ACCESS_MASK,
  ROLE_ACCESS_SHIFT,
  ROLE_DIRECT,
  ROLE_INVALID,
  ROLE_LEVEL_MASK,
  SCTL_ACTIVE_HEAD,
  SCTL_ACTIVE_TAIL,
  SCTL_EMULATED,
  SCTL_FLOODED,
  SCTL_GPTE_CHANGED,
  SCTL_INDIRECT_SHADOW_PAGES,
  SCTL_N_MAX,
  SCTL_PT_PROTECT,
  SCTL_PTE_PREFETCH,
  SCTL_PTE_WRITES,
  SCTL_PTE_ZAPPED,
  SCTL_RECYCLED,
  SCTL_RELOADS,
  SCTL_SP_CREATED,
  SCTL_SP_HASH_HITS,
  SCTL_WORDS,
  SLOT_FLAGS,
  SP_GFN,
  SP_PARENT_PTES,
  SP_ROLE,
  SP_ROOT_COUNT,
  SP_STRIDE,
  SPX_FLOOD,
  SPX_HASH_NEXT,
  SPX_LRU_NEXT,
  SPX_LRU_PREV,
  SPX_ON_LIST,
  SPX_STRIDE,
  VCPU_MODE,
  VCPU_ROOT,
} from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { aadd, acas, aload, astore, spinPoint } from "../sync/atomic.js";
import {
  gfn_to_hva_page,
  gfn_to_memslot,
  gfn_to_rmap,
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
  link_shadow_page,
  page_header,
  rmap_add,
  free_sp,
} from "./mmu_page.js";
import { pte_list_walk } from "./rmap.js";
import { mmu_spte_set, mmu_spte_update } from "./spte_ops.js";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  is_writable_pte,
  KVM_NR_PAGE_SIZES,
  PT_PAGE_SIZE_MASK,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  spte_is_locklessly_modifiable,
  spte_to_child_sp,
  spte_to_pfn,
  SPTE_HOST_WRITEABLE,
  SPTE_MMU_WRITEABLE,
  SPTE_PFN_SHIFT,
} from "./spte.js";
import {
  ACC_ALL,
  ACC_USER_MASK,
  ACC_WRITE_MASK,
  gpt_index,
  gpte_access,
  gpte_gfn,
  GPTE_A,
  GPTE_ADDR_HI_MASK,
  GPTE_D,
  GPTE_P,
  GuestPageFault,
  is_last_gpte,
} from "./guest_pt.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";

/** KVM_MIN_FREE_MMU_PAGES / KVM_REFILL_PAGES. */
const KVM_MIN_FREE_MMU_PAGES = 5;
const KVM_REFILL_PAGES = 25;
/** Pages kept back from n_max for pages that wait for their RCU grace period. */
const RETIRE_SLACK = 64;
/** detect_write_flooding threshold. */
const WRITE_FLOODING = 3;

// ---------------------------------------------------------------------------------------------
// roles, hash, active list

export function make_role(level: number, direct: boolean, access: number): number {
  return level | (direct ? ROLE_DIRECT : 0) | ((access << ROLE_ACCESS_SHIFT) & ROLE_ACCESS_MASK);
}

export function sp_role(kvm: Kvm, sp: number): number {
  return kvm.spHdr[sp * SP_STRIDE + SP_ROLE];
}

export function sp_gfn(kvm: Kvm, sp: number): number {
  return kvm.spHdr[sp * SP_STRIDE + SP_GFN];
}

export function role_access(role: number): number {
  return (role & ROLE_ACCESS_MASK) >>> ROLE_ACCESS_SHIFT;
}

function kvm_page_table_hashfn(gfn: number): number {
  return gfn & (KVM_NUM_MMU_PAGES - 1);
}

function hash_add(kvm: Kvm, sp: number, gfn: number): void {
  const b = kvm_page_table_hashfn(gfn);
  kvm.spExt[sp * SPX_STRIDE + SPX_HASH_NEXT] = kvm.spHash[b]!;
  kvm.spHash[b] = sp + 1;
}

function hash_del(kvm: Kvm, sp: number): void {
  const b = kvm_page_table_hashfn(sp_gfn(kvm, sp));
  const x = kvm.spExt;
  let cur = kvm.spHash[b] - 1;
  let prev = -1;
  while (cur >= 0) {
    const next = x[cur * SPX_STRIDE + SPX_HASH_NEXT] - 1;
    if (cur === sp) {
      if (prev < 0) kvm.spHash[b] = next + 1;
      else x[prev * SPX_STRIDE + SPX_HASH_NEXT] = next + 1;
      x[sp * SPX_STRIDE + SPX_HASH_NEXT] = 0;
      return;
    }
    prev = cur;
    cur = next;
  }
  throw new KvmError("EIO", `mmu_page_hash: sp ${sp} is not in its bucket`);
}

/** Calls fn(sp) for every sp of gfn's bucket with sp.gfn == gfn (valid or not). */
export function for_each_gfn_sp(kvm: Kvm, gfn: number, fn: (sp: number) => void): void {
  let sp = kvm.spHash[kvm_page_table_hashfn(gfn)] - 1;
  while (sp >= 0) {
    const next = kvm.spExt[sp * SPX_STRIDE + SPX_HASH_NEXT] - 1;
    if (sp_gfn(kvm, sp) === gfn) fn(sp);
    sp = next;
  }
}

function active_add_head(kvm: Kvm, sp: number): void {
  const x = kvm.spExt;
  const s = kvm.sctl;
  const head = s[SCTL_ACTIVE_HEAD];
  x[sp * SPX_STRIDE + SPX_LRU_PREV] = 0;
  x[sp * SPX_STRIDE + SPX_LRU_NEXT] = head;
  if (head !== 0) x[(head - 1) * SPX_STRIDE + SPX_LRU_PREV] = sp + 1;
  else s[SCTL_ACTIVE_TAIL] = sp + 1;
  s[SCTL_ACTIVE_HEAD] = sp + 1;
}

function active_del(kvm: Kvm, sp: number): void {
  const x = kvm.spExt;
  const s = kvm.sctl;
  const prev = x[sp * SPX_STRIDE + SPX_LRU_PREV];
  const next = x[sp * SPX_STRIDE + SPX_LRU_NEXT];
  if (prev !== 0) x[(prev - 1) * SPX_STRIDE + SPX_LRU_NEXT] = next;
  else s[SCTL_ACTIVE_HEAD] = next;
  if (next !== 0) x[(next - 1) * SPX_STRIDE + SPX_LRU_PREV] = prev;
  else s[SCTL_ACTIVE_TAIL] = prev;
  x[sp * SPX_STRIDE + SPX_LRU_PREV] = 0;
  x[sp * SPX_STRIDE + SPX_LRU_NEXT] = 0;
}

/** Every sp on active_mmu_pages, newest first (mmu_lock held or quiesced). */
export function active_mmu_pages(kvm: Kvm): number[] {
  const out: number[] = [];
  let sp = kvm.sctl[SCTL_ACTIVE_HEAD] - 1;
  while (sp >= 0 && out.length <= kvm.shared.config.maxSp) {
    out.push(sp);
    sp = kvm.spExt[sp * SPX_STRIDE + SPX_LRU_NEXT] - 1;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// write protection of guest page tables

/** account_shadowed / unaccount_shadowed: lpage_info[2..3](gfn).write_count. */
function account_shadowed(kvm: Kvm, gfn: number, delta: number): void {
  const r = gfn_to_memslot(kvm, gfn);
  if (r < 0) return;
  for (let level = 2; level <= KVM_NR_PAGE_SIZES; level++)
    kvm.lpagePool[lpage_info_index(kvm, r, gfn, level)] += delta;
}

/**
 * 3.11 spte_write_protect with pt_protect = true: clears W and MMU_W (so fast_page_fault cannot
 * undo it); a large spte is dropped. Returns 0 (nothing), 1 (dropped) or 2 (flush needed).
 */
function spte_write_protect_pt(kvm: Kvm, sptep: number): number {
  const s = aload(kvm.spt, sptep);
  if (!is_shadow_present_pte(s)) return 0;
  if (!is_writable_pte(s) && !spte_is_locklessly_modifiable(s)) return 0;
  if (is_large_pte(s)) {
    drop_spte(kvm, sptep);
    return 1;
  }
  return mmu_spte_update(kvm, sptep, s & ~(PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE)) ? 2 : 0;
}

/** rmap_write_protect(kvm, gfn): every level's rmap of gfn, pt_protect. Returns "flush". */
export function rmap_write_protect_pt(kvm: Kvm, gfn: number): boolean {
  const r = gfn_to_memslot(kvm, gfn);
  if (r < 0) return false;
  let flush = false;
  const entries: number[] = [];
  for (let level = 1; level <= KVM_NR_PAGE_SIZES; level++) {
    const hi = gfn_to_rmap(kvm, r, gfn, level);
    if (kvm.rmapPool[hi] === 0) continue;
    entries.length = 0;
    // A drop changes the list: work on a snapshot (under mmu_lock nothing else changes it).
    pte_list_walk(kvm, kvm.rmapPool, hi, (s) => entries.push(s));
    for (const s of entries) if (spte_write_protect_pt(kvm, s) !== 0) flush = true;
  }
  if (flush) kvm.sctl[SCTL_PT_PROTECT]++;
  return flush;
}

/** mmu_need_write_protect without unsync: is gfn a shadowed guest page table? */
export function gfn_is_shadowed(kvm: Kvm, gfn: number): boolean {
  let sp = kvm.spHash[kvm_page_table_hashfn(gfn)] - 1;
  while (sp >= 0) {
    const role = sp_role(kvm, sp);
    if (sp_gfn(kvm, sp) === gfn && (role & (ROLE_DIRECT | ROLE_INVALID)) === 0) return true;
    sp = kvm.spExt[sp * SPX_STRIDE + SPX_HASH_NEXT] - 1;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// kvm_mmu_get_page, zap

/**
 * kvm_mmu_alloc_page: the TDP allocator (sptes are all 0). Pages zapped in bulk wait for the RCU
 * grace period of a lockless harvest; if the arena is full of them, wait for that harvest to leave
 * its read section (it takes no lock, so waiting under mmu_lock cannot deadlock).
 */
function alloc_shadow_page(kvm: Kvm, gfn: number, level: number): number {
  const t0 = Date.now();
  for (;;) {
    try {
      return kvm_mmu_get_page(kvm, gfn, level);
    } catch (e) {
      if (!(e instanceof KvmError) || e.code !== "ENOMEM" || Date.now() - t0 > 5000) throw e;
      Atomics.wait(kvm.sctl, SCTL_WORDS - 1, 0, 0.05);
    }
  }
}

/**
 * kvm_mmu_get_page (shadow mode): the valid sp of (gfn, role), or a new one. A new indirect sp
 * write-protects its guest table (and flushes) before it is used. mmu_lock held.
 */
export function kvm_mmu_get_shadow_page(
  kvm: Kvm,
  gfn: number,
  level: number,
  direct: boolean,
  access: number,
): number {
  const role = make_role(level, direct, access);
  let sp = kvm.spHash[kvm_page_table_hashfn(gfn)] - 1;
  while (sp >= 0) {
    if (sp_gfn(kvm, sp) === gfn && sp_role(kvm, sp) === role) {
      kvm.sctl[SCTL_SP_HASH_HITS]++;
      return sp;
    }
    sp = kvm.spExt[sp * SPX_STRIDE + SPX_HASH_NEXT] - 1;
  }
  sp = alloc_shadow_page(kvm, gfn, level);
  kvm.spHdr[sp * SP_STRIDE + SP_ROLE] = role;
  const xb = sp * SPX_STRIDE;
  kvm.spExt[xb + SPX_FLOOD] = 0;
  kvm.spExt[xb + SPX_ON_LIST] = 1;
  hash_add(kvm, sp, gfn);
  active_add_head(kvm, sp);
  kvm.sctl[SCTL_SP_CREATED]++;
  if (!direct) {
    if (rmap_write_protect_pt(kvm, gfn)) kvm_flush_remote_tlbs(kvm);
    account_shadowed(kvm, gfn, 1);
    kvm.sctl[SCTL_INDIRECT_SHADOW_PAGES]++;
  }
  return sp;
}

/** mmu_page_zap_pte: drop one spte of a page being changed. Returns true if it was present. */
function mmu_page_zap_pte(kvm: Kvm, sptep: number, level: number): boolean {
  const s = kvm.spt[sptep];
  if (!is_shadow_present_pte(s)) return false;
  if (is_last_spte(s, level)) drop_spte(kvm, sptep);
  else drop_parent_pte(kvm, spte_to_child_sp(s), sptep);
  return true;
}

/**
 * kvm_mmu_prepare_zap_page (shadow mode): clear every spte (children keep living, unlinked), drop
 * the links of every parent, unaccount. A page no vCPU uses as root goes on `invalid` after it is
 * unhashed and taken off the active list, under mmu_lock (B12); a root in use stays until its
 * last user drops it. Returns true if the page went on `invalid`.
 */
export function shadow_prepare_zap_page(kvm: Kvm, sp: number, invalid: number[]): boolean {
  const h = kvm.spHdr;
  const b = sp * SP_STRIDE;
  const role = h[b + SP_ROLE];
  const level = role & ROLE_LEVEL_MASK;
  const base = sp * PT64_ENT_PER_PAGE;
  for (let i = 0; i < PT64_ENT_PER_PAGE; i++) mmu_page_zap_pte(kvm, base + i, level);
  const parents: number[] = [];
  pte_list_walk(kvm, h, b + SP_PARENT_PTES, (p) => parents.push(p));
  for (const p of parents) drop_parent_pte(kvm, sp, p);
  if ((role & (ROLE_INVALID | ROLE_DIRECT)) === 0) {
    account_shadowed(kvm, h[b + SP_GFN], -1);
    kvm.sctl[SCTL_INDIRECT_SHADOW_PAGES]--;
  }
  h[b + SP_ROLE] = role | ROLE_INVALID;
  const xb = sp * SPX_STRIDE;
  if (h[b + SP_ROOT_COUNT] === 0) {
    if (kvm.spExt[xb + SPX_ON_LIST] === 1) {
      kvm.spExt[xb + SPX_ON_LIST] = 0;
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
  if (kvm.spExt[xb + SPX_ON_LIST] === 1) {
    active_del(kvm, sp);
    active_add_head(kvm, sp);
  }
  return false;
}

/** make_mmu_pages_available: zap the oldest pages when fewer than 5 are left. mmu_lock held. */
export function make_mmu_pages_available(kvm: Kvm): void {
  const s = kvm.sctl;
  let nMax = s[SCTL_N_MAX];
  if (nMax === 0) nMax = s[SCTL_N_MAX] = Math.max(16, kvm.shared.config.maxSp - 1 - RETIRE_SLACK);
  const invalid: number[] = [];
  const avail = (): number => nMax - kvm.ctl[CTL_SP_USED] + invalid.length;
  if (avail() >= KVM_MIN_FREE_MMU_PAGES) return;
  let guard = kvm.shared.config.maxSp;
  while (avail() < KVM_REFILL_PAGES && guard-- > 0) {
    const tail = s[SCTL_ACTIVE_TAIL] - 1;
    if (tail < 0) break;
    shadow_prepare_zap_page(kvm, tail, invalid);
    s[SCTL_RECYCLED]++;
  }
  kvm_mmu_commit_zap_page(kvm, invalid);
}

// ---------------------------------------------------------------------------------------------
// roots

/** mmu_alloc_shadow_roots / mmu_alloc_direct_roots for one vCPU (mmu_lock held). */
export function mmu_alloc_shadow_root(kvm: Kvm, vcpuRow: number, cr3: number): number {
  const root =
    cr3 === 0
      ? kvm_mmu_get_shadow_page(kvm, 0, PT64_ROOT_LEVEL, true, ACC_ALL)
      : kvm_mmu_get_shadow_page(kvm, cr3, PT64_ROOT_LEVEL, false, ACC_ALL);
  kvm.spHdr[root * SP_STRIDE + SP_ROOT_COUNT]++;
  astore(kvm.vcpu, vcpuRow + VCPU_ROOT, root);
  return root;
}

/** mmu_free_roots for one vCPU (mmu_lock held): an invalid root whose count drops to 0 is freed. */
export function mmu_free_shadow_root(kvm: Kvm, vcpuRow: number): void {
  const root = kvm.vcpu[vcpuRow + VCPU_ROOT];
  if (root === 0) return;
  astore(kvm.vcpu, vcpuRow + VCPU_ROOT, 0);
  const b = root * SP_STRIDE;
  if (--kvm.spHdr[b + SP_ROOT_COUNT] === 0 && (kvm.spHdr[b + SP_ROLE] & ROLE_INVALID) !== 0) {
    const invalid: number[] = [];
    shadow_prepare_zap_page(kvm, root, invalid);
    kvm_mmu_commit_zap_page(kvm, invalid);
  }
}

/** kvm_mmu_new_cr3 + reload: takes mmu_lock. The vCPU is outside guest mode. */
export function kvm_mmu_load_cr3(kvm: Kvm, vcpuRow: number, cr3: number): number {
  kvm.mmu_lock.lock();
  try {
    mmu_free_shadow_root(kvm, vcpuRow);
    make_mmu_pages_available(kvm);
    return mmu_alloc_shadow_root(kvm, vcpuRow, cr3);
  } finally {
    kvm.mmu_lock.unlock();
  }
}

// ---------------------------------------------------------------------------------------------
// guest memory as KVM reads it (kvm_read_guest / cmpxchg_gpte / kvm_write_guest)

/** The frame backing gfn now, or -1 (no memslot / not mapped). Lockless, as gfn_to_pfn_atomic. */
export function guest_gfn_to_pfn(kvm: Kvm, gfn: number): number {
  const r = gfn_to_memslot(kvm, gfn);
  if (r < 0) return -1;
  const pfn = aload(kvm.hpt, gfn_to_hva_page(kvm, r, gfn)) >>> 1;
  return pfn === 0 ? -1 : pfn;
}

/**
 * kvm_write_guest of `n` words (1 or 2) at word w of gfn, then mark_page_dirty. Under the host mm
 * lock: the frame cannot move or be reused while it is written.
 */
export function kvm_write_guest_words(
  kvm: Kvm,
  gfn: number,
  w: number,
  lo: number,
  hi: number,
  n: number,
): void {
  kvm.mm_lock.lock();
  try {
    const pfn = guest_gfn_to_pfn(kvm, gfn);
    if (pfn < 0)
      throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: emulated write outside guest memory`);
    const i = pfn * PAGE_WORDS + w;
    astore(kvm.mem, i, lo);
    if (n === 2) astore(kvm.mem, i + 1, hi);
  } finally {
    kvm.mm_lock.unlock();
  }
  mark_page_dirty(kvm, gfn);
}

/** cmpxchg_gpte on the low word + mark_page_dirty(table_gfn). True if it was exchanged. */
function cmpxchg_gpte(kvm: Kvm, gfn: number, idx: number, old: number, nw: number): boolean {
  let ok: boolean;
  kvm.mm_lock.lock();
  try {
    const pfn = guest_gfn_to_pfn(kvm, gfn);
    if (pfn < 0) return false;
    ok = acas(kvm.mem, pfn * PAGE_WORDS + idx * 2, old, nw) === old;
  } finally {
    kvm.mm_lock.unlock();
  }
  if (ok) mark_page_dirty(kvm, gfn);
  return ok;
}

/** The result of FNAME(walk_addr) (struct guest_walker). Arrays are indexed by level. */
export class GuestWalker {
  /** Level of the leaf gpte: 1, or 2 for a 2 MiB page. */
  level = 1;
  readonly tableGfn = new Int32Array(PT64_ROOT_LEVEL + 1);
  readonly lo = new Int32Array(PT64_ROOT_LEVEL + 1);
  readonly hi = new Int32Array(PT64_ROOT_LEVEL + 1);
  /** Access granted down to (and including) the gpte at each level. */
  readonly ptAccess = new Int32Array(PT64_ROOT_LEVEL + 2);
  pteAccess = 0;
  /** The 4 KiB gfn the address translates to. */
  gfn = 0;
  walks = 0;
}

/**
 * FNAME(walk_addr): translates vpn through the guest tables at cr3, setting A on every level and
 * D on the leaf of a write (cmpxchg; restarts if a gpte changed under it). Throws GuestPageFault
 * for a non-present entry or a write to a read-only mapping. A read of a clean leaf yields
 * pte_access without W (protect_clean_gpte), so the first write faults and sets D.
 */
export function walk_addr(kvm: Kvm, w: GuestWalker, cr3: number, vpn: number, write: boolean): void {
  const mem = kvm.mem;
  w.walks++;
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

// ---------------------------------------------------------------------------------------------
// faults

/** What a vCPU passes to the shadow fault path. */
export interface ShadowVcpuCtx {
  row: number;
  cr3: number;
  walker: GuestWalker;
  stats: ShadowFaultStats;
}

export class ShadowFaultStats {
  slow = 0;
  fast = 0;
  retries = 0;
  emulate = 0;
  gpteChanged = 0;
}

export const SHADOW_RETRY = 0;
export const SHADOW_EMULATE = 1;

/**
 * mmu_set_spte + set_spte for shadow mode. Returns true when the access must be emulated: a write
 * fault whose gfn is a shadowed guest page table (the spte stays read-only). mmu_lock held.
 * As in the TDP path, the spte is made writable (F1) and put in its rmap (F2) before the dirty
 * bit is set (F4).
 */
function mmu_set_spte_shadow(
  kvm: Kvm,
  r: number,
  sptep: number,
  pteAccess: number,
  level: number,
  gfn: number,
  pfn: number,
  writeFault: boolean,
  hostWritable: boolean,
): boolean {
  const old = kvm.spt[sptep];
  let wasRmapped = false;
  if (is_shadow_present_pte(old)) {
    if (level > 1 && !is_large_pte(old)) {
      drop_parent_pte(kvm, spte_to_child_sp(old), sptep);
      kvm_flush_remote_tlbs(kvm);
    } else if (spte_to_pfn(old) !== pfn || kvm_mmu_page_get_gfn(kvm, sptep) !== gfn) {
      drop_spte(kvm, sptep);
      kvm_flush_remote_tlbs(kvm);
    } else {
      wasRmapped = true;
    }
  }
  let s = PT_PRESENT_MASK | (pfn << SPTE_PFN_SHIFT);
  if ((pteAccess & ACC_USER_MASK) !== 0) s |= PT_USER_MASK;
  if (level > 1) s |= PT_PAGE_SIZE_MASK;
  let access = pteAccess;
  if (hostWritable) s |= SPTE_HOST_WRITEABLE;
  else access &= ~ACC_WRITE_MASK;
  let emulate = false;
  if ((access & ACC_WRITE_MASK) !== 0) {
    s |= PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE;
    if (gfn_is_shadowed(kvm, gfn)) {
      // mmu_need_write_protect (no unsync): the gfn is a guest page table.
      emulate = true;
      s &= ~(PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE);
    }
  }
  const writable = (s & PT_WRITABLE_MASK) !== 0;
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
    kvm.spGfns[sptep] = gfn; // kvm_mmu_page_set_gfn (read only for indirect sps)
    if (level > 1) kvm.ctl[CTL_LPAGES]++;
    rmap_add(kvm, sptep, gfn, level);
  }
  // F4
  if (writable && !dirtyFirst) mark_page_dirty_in_slot(kvm, r, gfn);
  return emulate && writeFault;
}

function mmu_notifier_retry(kvm: Kvm, mmuSeq: number): boolean {
  if (aload(kvm.ctl, CTL_NOTIFIER_COUNT) !== 0) return true;
  return aload(kvm.ctl, CTL_NOTIFIER_SEQ) !== mmuSeq;
}

function clear_sp_write_flooding_count(kvm: Kvm, sp: number): void {
  kvm.spExt[sp * SPX_STRIDE + SPX_FLOOD] = 0;
}

/** The vCPU's root, reloaded if it was zapped (KVM_REQ_MMU_RELOAD). mmu_lock held. */
function vcpu_root(kvm: Kvm, v: ShadowVcpuCtx): number {
  let root = kvm.vcpu[v.row + VCPU_ROOT];
  if (root === 0 || (sp_role(kvm, root) & ROLE_INVALID) !== 0) {
    if (root !== 0) kvm.sctl[SCTL_RELOADS]++;
    mmu_free_shadow_root(kvm, v.row);
    root = mmu_alloc_shadow_root(kvm, v.row, v.cr3);
  }
  return root;
}

/** The child a present link spte points at, dropping it first if it is not what `want` says. */
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
 * SHADOW_EMULATE, SHADOW_RETRY, or -1 when a gpte changed under the walk (the caller retries).
 */
function fetch(
  kvm: Kvm,
  v: ShadowVcpuCtx,
  r: number,
  vpn: number,
  hlevel: number,
  pfn: number,
  write: boolean,
  hostWritable: boolean,
): number {
  const w = v.walker;
  let sp = vcpu_root(kvm, v);
  if (gpte_changed(kvm, w, vpn, PT64_ROOT_LEVEL)) return -1;
  let level = PT64_ROOT_LEVEL;
  // Indirect levels: one sp per guest table down to the table that holds the leaf gpte.
  for (; level > w.level; level--) {
    const sptep = sp * PT64_ENT_PER_PAGE + gpt_index(vpn, level);
    clear_sp_write_flooding_count(kvm, sp);
    drop_large_spte(kvm, sptep);
    const s = kvm.spt[sptep];
    let child: number;
    if (!is_shadow_present_pte(s)) {
      child = kvm_mmu_get_shadow_page(kvm, w.tableGfn[level - 1], level - 1, false, w.ptAccess[level]);
      if (gpte_changed(kvm, w, vpn, level - 1)) return -1;
      link_shadow_page(kvm, sptep, child);
    } else {
      child = spte_to_child_sp(s);
      if (gpte_changed(kvm, w, vpn, level - 1)) return -1;
    }
    sp = child;
  }
  // Direct levels: a guest 2 MiB page mapped with 4 KiB sptes.
  const directAccess = w.pteAccess;
  for (; level > hlevel; level--) {
    const sptep = sp * PT64_ENT_PER_PAGE + gpt_index(vpn, level);
    clear_sp_write_flooding_count(kvm, sp);
    drop_large_spte(kvm, sptep);
    let s = kvm.spt[sptep];
    validate_direct_spte(kvm, sptep, directAccess);
    s = kvm.spt[sptep]!;
    let child: number;
    if (!is_shadow_present_pte(s)) {
      const span = 2 ** ((level - 1) * 9);
      child = kvm_mmu_get_shadow_page(kvm, w.gfn - (w.gfn % span), level - 1, true, directAccess);
      link_shadow_page(kvm, sptep, child);
    } else {
      child = spte_to_child_sp(s);
    }
    sp = child;
  }
  clear_sp_write_flooding_count(kvm, sp);
  const sptep = sp * PT64_ENT_PER_PAGE + gpt_index(vpn, hlevel);
  const gfn = hlevel === 2 ? w.gfn - (w.gfn & 511) : w.gfn;
  const mapPfn = hlevel === 2 ? pfn - (w.gfn & 511) : pfn;
  return mmu_set_spte_shadow(kvm, r, sptep, w.pteAccess, hlevel, gfn, mapPfn, write, hostWritable)
    ? SHADOW_EMULATE
    : SHADOW_RETRY;
}

/** nonpaging_map's __direct_map on the vCPU's direct root (guest paging off: gva = gpa). */
function direct_map(
  kvm: Kvm,
  v: ShadowVcpuCtx,
  r: number,
  gfn: number,
  pfn: number,
  write: boolean,
  hostWritable: boolean,
): number {
  let sp = vcpu_root(kvm, v);
  for (let level = PT64_ROOT_LEVEL; level > 1; level--) {
    const sptep = sp * PT64_ENT_PER_PAGE + gpt_index(gfn, level);
    const s = kvm.spt[sptep];
    if (!is_shadow_present_pte(s)) {
      const span = 2 ** ((level - 1) * 9);
      const child = kvm_mmu_get_shadow_page(kvm, gfn - (gfn % span), level - 1, true, ACC_ALL);
      link_shadow_page(kvm, sptep, child);
      sp = child;
    } else {
      sp = spte_to_child_sp(s);
    }
  }
  const sptep = sp * PT64_ENT_PER_PAGE + gpt_index(gfn, 1);
  return mmu_set_spte_shadow(kvm, r, sptep, ACC_ALL, 1, gfn, pfn, write, hostWritable)
    ? SHADOW_EMULATE
    : SHADOW_RETRY;
}

/**
 * fast_page_fault for a direct sp (nonpaging mode): a write to a present, write-protected
 * level-1 spte in a *direct* sp that host and MMU allow writing is fixed with one cmpxchg and
 * mark_page_dirty, without mmu_lock. Returns true when handled (retry the access).
 */
function shadow_fast_page_fault(kvm: Kvm, v: ShadowVcpuCtx, gfn: number): boolean {
  const root = aload(kvm.vcpu, v.row + VCPU_ROOT);
  if (root === 0) return false;
  astore(kvm.vcpu, v.row + VCPU_MODE, READING_SHADOW_PAGE_TABLES);
  try {
    let sp = root;
    let sptep = -1;
    let s = 0;
    let level = PT64_ROOT_LEVEL;
    for (; level >= 1; level--) {
      sptep = sp * PT64_ENT_PER_PAGE + gpt_index(gfn, level);
      s = aload(kvm.spt, sptep);
      if (!is_shadow_present_pte(s) || is_last_spte(s, level)) break;
      sp = spte_to_child_sp(s);
    }
    if (!is_shadow_present_pte(s)) return false;
    const role = sp_role(kvm, page_header(sptep));
    // B4: only a direct sp's spte index names its gfn; B2: never a large spte.
    if ((role & ROLE_DIRECT) === 0 || (role & ROLE_LEVEL_MASK) !== 1) return false;
    if (is_writable_pte(s)) return true;
    if (!spte_is_locklessly_modifiable(s)) return false;
    if (acas(kvm.spt, sptep, s, s | PT_WRITABLE_MASK) === s) {
      mark_page_dirty(kvm, kvm_mmu_page_get_gfn(kvm, sptep));
      v.stats.fast++;
    }
    return true;
  } finally {
    astore(kvm.vcpu, v.row + VCPU_MODE, OUTSIDE_GUEST_MODE);
  }
}

/**
 * The shadow MMU's page fault (FNAME(page_fault), or nonpaging_page_fault with CR3 = 0). The vCPU
 * is outside guest mode. Returns SHADOW_RETRY (the vCPU retries the access) or SHADOW_EMULATE
 * (a write to a shadowed guest page table: the caller emulates it at v.walker.gfn). Throws
 * GuestPageFault (deliver to the guest) or KvmError.
 */
export function shadow_page_fault(
  kvm: Kvm,
  v: ShadowVcpuCtx,
  vpn: number,
  write: boolean,
  present: boolean,
): number {
  const w = v.walker;
  for (let attempt = 0; ; attempt++) {
    if (attempt > 10000)
      throw new KvmError("EIO", `shadow fault at gva 0x${(vpn * 4096).toString(16)}: no progress`);
    const mmuSeq = aload(kvm.ctl, CTL_NOTIFIER_SEQ);
    if (v.cr3 === 0) {
      w.level = 1;
      w.gfn = vpn;
      w.pteAccess = ACC_ALL;
      if (write && present && shadow_fast_page_fault(kvm, v, vpn)) return SHADOW_RETRY;
    } else {
      walk_addr(kvm, w, v.cr3, vpn, write);
    }
    const gfn = w.gfn;
    const r = gfn_to_memslot(kvm, gfn);
    if (r < 0) throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: no memslot`);
    const hvaPage = gfn_to_hva_page(kvm, r, gfn);
    const hv = aload(kvm.hpt, hvaPage);
    const pfn = hv >>> 1;
    if (pfn === 0) throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: host memory not mapped`);
    const mapWritable = (hv & 1) !== 0 && (kvm.slots[r + SLOT_FLAGS] & KVM_MEM_READONLY) === 0;
    if (write && !mapWritable)
      throw new KvmError("EFAULT", `gpa 0x${(gfn * 4096).toString(16)}: write to read-only memory`);
    const hostHuge = hva_is_huge(kvm, hvaPage);
    kvm.mmu_lock.lock();
    let ret: number;
    try {
      v.stats.slow++;
      if (mmu_notifier_retry(kvm, mmuSeq) && !kvm.bug(BUG["no-notifier-retry"])) {
        v.stats.retries++;
        spinPoint(kvm.ctl, CTL_NOTIFIER_COUNT); // the vCPU retries until the invalidation ends
        return SHADOW_RETRY;
      }
      make_mmu_pages_available(kvm);
      if (v.cr3 === 0) {
        ret = direct_map(kvm, v, r, gfn, pfn, write, mapWritable);
      } else {
        // mapping_level: 2 MiB only for a guest 2 MiB page on a huge host page, in a slot that is
        // not logged, with no shadowed guest table in the range (has_wrprotected_page).
        let hlevel = 1;
        if (
          w.level === 2 &&
          hostHuge &&
          !slot_dirty_logged(kvm, r) &&
          kvm.lpagePool[lpage_info_index(kvm, r, gfn, 2)] === 0
        )
          hlevel = 2;
        ret = fetch(kvm, v, r, vpn, hlevel, pfn, write, mapWritable);
        if (ret < 0) {
          v.stats.gpteChanged++;
          kvm.sctl[SCTL_GPTE_CHANGED]++;
          continue;
        }
      }
    } finally {
      kvm.mmu_lock.unlock();
    }
    if (ret === SHADOW_EMULATE) v.stats.emulate++;
    return ret;
  }
}

/**
 * FNAME(update_pte) / prefetch_gpte for a level-1 page: re-creates the spte from the gpte the
 * guest just wrote, speculatively (as if prefetched: the guest did not access it yet). Skipped
 * for a gpte that is not present, not accessed or has reserved bits (prefetch_invalid_gpte), and
 * while an MMU-notifier invalidation is in progress (the host page table may be changing; under
 * mmu_lock with none in progress it is stable). mmu_lock held.
 */
function update_pte(kvm: Kvm, sp: number, sptep: number): boolean {
  const role = sp_role(kvm, sp);
  const tpfn = guest_gfn_to_pfn(kvm, sp_gfn(kvm, sp));
  if (tpfn < 0) return false;
  const i = tpfn * PAGE_WORDS + (sptep - sp * PT64_ENT_PER_PAGE) * 2;
  const lo = aload(kvm.mem, i);
  const hi = aload(kvm.mem, i + 1);
  if ((lo & (GPTE_P | GPTE_A)) !== (GPTE_P | GPTE_A) || (hi & ~GPTE_ADDR_HI_MASK) !== 0) return false;
  if (aload(kvm.ctl, CTL_NOTIFIER_COUNT) !== 0) return false;
  const gfn = gpte_gfn(lo, hi);
  let access = role_access(role) & gpte_access(lo);
  if ((lo & GPTE_D) === 0) access &= ~ACC_WRITE_MASK; // protect_clean_gpte
  const r = gfn_to_memslot(kvm, gfn);
  if (r < 0) return false;
  const hv = aload(kvm.hpt, gfn_to_hva_page(kvm, r, gfn));
  const pfn = hv >>> 1;
  if (pfn === 0) return false;
  const hostWritable = (hv & 1) !== 0 && (kvm.slots[r + SLOT_FLAGS] & KVM_MEM_READONLY) === 0;
  mmu_set_spte_shadow(kvm, r, sptep, access, 1, gfn, pfn, false, hostWritable);
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
export function kvm_mmu_pte_write(kvm: Kvm, gfn: number, offset: number, bytes: number): boolean {
  if (aload(kvm.sctl, SCTL_INDIRECT_SHADOW_PAGES) === 0) return false;
  // detect_write_misaligned (8-byte gptes): a write that spans two gptes, or is narrower than 4.
  const misaligned = ((offset ^ (offset + bytes - 1)) & ~7) !== 0 || bytes < 4;
  kvm.mmu_lock.lock();
  try {
    kvm.sctl[SCTL_PTE_WRITES]++;
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
      const xb = sp * SPX_STRIDE;
      if (misaligned || ++kvm.spExt[xb + SPX_FLOOD] >= WRITE_FLOODING) {
        shadow_prepare_zap_page(kvm, sp, invalid);
        kvm.sctl[SCTL_FLOODED]++;
        continue;
      }
      localFlush = true;
      const sptep = sp * PT64_ENT_PER_PAGE + (offset >>> 3);
      const old = kvm.spt[sptep];
      if (mmu_page_zap_pte(kvm, sptep, role & ROLE_LEVEL_MASK)) kvm.sctl[SCTL_PTE_ZAPPED]++;
      if ((role & ROLE_LEVEL_MASK) === 1 && update_pte(kvm, sp, sptep)) kvm.sctl[SCTL_PTE_PREFETCH]++;
      if (need_remote_flush(old, kvm.spt[sptep])) remoteFlush = true;
    }
    // mmu_pte_write_flush_tlb, then the commit (which flushes by itself when it frees pages).
    if (invalid.length === 0 && remoteFlush) kvm_flush_remote_tlbs(kvm);
    kvm_mmu_commit_zap_page(kvm, invalid);
    return localFlush;
  } finally {
    kvm.mmu_lock.unlock();
  }
}

/**
 * x86_emulate_instruction + emulator_write_phys for a guest store to a write-protected guest
 * page table: the write goes to guest memory (kvm_write_guest marks it dirty), then
 * kvm_mmu_pte_write brings the shadow up to date. The vCPU is outside guest mode. Returns true
 * when the vCPU should flush its own TLB.
 */
export function emulate_guest_write(
  kvm: Kvm,
  gfn: number,
  w: number,
  lo: number,
  hi: number,
  words: number,
): boolean {
  kvm_write_guest_words(kvm, gfn, w, lo, hi, words);
  aadd(kvm.sctl, SCTL_EMULATED, 1);
  return kvm_mmu_pte_write(kvm, gfn, w * 4, words * 4);
}

/** Counters of the shadow MMU (sctl), for reports. */
export function shadowCounters(kvm: Kvm): Record<string, number> {
  const s = kvm.sctl;
  return {
    indirectShadowPages: s[SCTL_INDIRECT_SHADOW_PAGES],
    spCreated: s[SCTL_SP_CREATED],
    spHashHits: s[SCTL_SP_HASH_HITS],
    recycled: s[SCTL_RECYCLED],
    pteWrites: s[SCTL_PTE_WRITES],
    pteZapped: s[SCTL_PTE_ZAPPED],
    flooded: s[SCTL_FLOODED],
    emulated: s[SCTL_EMULATED],
    gpteChanged: s[SCTL_GPTE_CHANGED],
    rootReloads: s[SCTL_RELOADS],
    ptProtectFlushes: s[SCTL_PT_PROTECT],
    ptePrefetched: s[SCTL_PTE_PREFETCH],
    spUsed: kvm.ctl[CTL_SP_USED],
  };
}

/**
 * `struct kvm` in shared memory: every thread (the VM owner, each vCPU worker, the MMU-notifier
 * thread) builds a `Kvm` over the same SharedArrayBuffers from a `KvmShared` descriptor.
 *
 * Which lock protects which word is stated where the word is defined; docs/locking.md has the
 * whole picture.
 */
import { Mutex, MUTEX_WORDS } from "./sync/mutex.js";
import { RwLock, RWLOCK_WORDS } from "./sync/rwlock.js";
import { Rcu, RCU_WORDS } from "./sync/rcu.js";
import { Tracer } from "./sync/trace_ring.js";
import { defineBlock, defineRows, KVM_MAX_VCPUS } from "./layout.js";

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_WORDS = PAGE_SIZE / 4;
export { KVM_MAX_VCPUS };
export const KVM_USER_MEM_SLOTS = 32;

/** A design's name ("locked", "lockless", ...): src/mmu/design.ts is the registry. */
export type DesignName = string;

/** Page sizes (KVM_HPAGE_*): a page at level l covers 512^(l-1) 4 KiB frames. */
export function KVM_HPAGE_GFN_SHIFT(level: number): number {
  return (level - 1) * 9;
}

export function KVM_PAGES_PER_HPAGE(level: number): number {
  return 1 << ((level - 1) * 9);
}

/** MMU mode, fixed at VM creation: two-dimensional paging (EPT/NPT) or shadow paging (EPT off). */
export const enum MmuMode {
  Tdp = 0,
  Shadow = 1,
}

/** Bugs of the catalog (docs/bugs.md): runtime switches that put one back. */
export const BUG = {
  "backward-move": 1 << 0,
  "no-nulls-check": 1 << 1,
  "dirty-before-rmap": 1 << 2,
  "skip-flush": 1 << 3,
  "fast-pf-large": 1 << 4,
  "plain-clear": 1 << 5,
  "early-free": 1 << 6,
  "no-notifier-retry": 1 << 7,
  "clear-protect-first": 1 << 8,
  "ring-flags-before-entry": 1 << 9,
  "reset-coalesce-backward": 1 << 10,
  "initially-set-zero": 1 << 11,
} as const;
export type BugName = keyof typeof BUG;

// ---- the control words: `struct kvm` fields that are not arrays (Int32Array `ctl`) ----
export const CTL = defineBlock("struct kvm (control words)", "kvm.ctl", {
  // mmu_lock alone on its cache line (a SharedArrayBuffer is only 16-byte aligned): waiters spin
  // on it while the holder writes the counters below; a shared line made each write a miss.
  mmu_lock_pad0: { words: 15, by: "nobody (padding)", doc: "keeps other data off mmu_lock's cache line" },
  mmu_lock: { words: RWLOCK_WORDS, by: "itself (queued rwlock)", doc: "kvm->mmu_lock" },
  mmu_lock_pad1: { words: 15, by: "nobody (padding)", doc: "as mmu_lock_pad0" },
  slots_lock: { words: MUTEX_WORDS, by: "itself (ticket mutex)", doc: "kvm->slots_lock" },
  mm_lock: {
    words: MUTEX_WORDS,
    by: "itself (ticket mutex)",
    doc: "the host mm: frame allocator and host page table",
  },
  rcu: {
    words: RCU_WORDS,
    by: "itself (epoch and reader slots)",
    doc: "RCU epochs for lockless rmap walkers",
  },
  notifier_seq: {
    by: "mmu_lock (writes); faults read it locklessly and re-check under mmu_lock",
    doc: "mmu_notifier_seq",
  },
  notifier_count: { by: "mmu_lock (writes); read as notifier_seq", doc: "mmu_notifier_count" },
  root: { by: "mmu_lock (writes); lockless walkers load it", doc: "the TDP root shadow page (0: none)" },
  sp_free: { by: "mmu_lock", doc: "shadow-page allocator: free list" },
  sp_pending: { by: "mmu_lock", doc: "zapped pages waiting for their flush and grace period" },
  sp_used: { by: "mmu_lock", doc: "shadow pages in use" },
  sp_high: { by: "mmu_lock", doc: "never-used shadow pages start here" },
  desc_free: { by: "mmu_lock", doc: "pte_list_desc slab: free list" },
  desc_high: { by: "mmu_lock", doc: "never-used descriptors start here" },
  desc_used: { by: "mmu_lock", doc: "descriptors in use" },
  desc_allocs: { by: "mmu_lock", doc: "descriptor allocations (statistic)" },
  frame_top: { by: "mm_lock", doc: "host frame allocator: free stack top" },
  hva_next: { by: "owner thread only", doc: "bump pointer of the host virtual address space (pages)" },
  nr_vcpus: { by: "owner thread (written before workers start)", doc: "vCPUs created" },
  vm_state: { by: "atomic store by any thread", doc: "0 running, 1 stopping, 2 failed (a worker threw)" },
  remote_flushes: { by: "atomic add", doc: "kvm_flush_remote_tlbs calls (statistic)" },
  lpages: { by: "mmu_lock", doc: "large sptes present (kvm->stat.lpages)" },
  rmap_pool_next: { by: "slots_lock", doc: "bump allocator of memslot rmaps" },
  bitmap_pool_next: { by: "slots_lock", doc: "bump allocator of dirty bitmaps" },
  frame_high: { by: "mm_lock", doc: "never-used host frames start here" },
  lpage_pool_next: { by: "slots_lock", doc: "bump allocator of lpage_info" },
  sp_cached: { by: "mmu_lock", doc: "shadow pages held in vCPU memory caches (taken from the pool)" },
  desc_cached: { by: "mmu_lock", doc: "descriptors held in vCPU memory caches (taken from the slab)" },
  reclaims: { by: "mmu_lock", doc: "statistic: top-ups that had to zap shadow pages to refill" },
  manual_dirty_log: {
    by: "slots_lock (the owner writes it; GET, CLEAR and bitmap creation read it under slots_lock)",
    doc: "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 flags (manual_dirty_log_protect)",
  },
  dirty_ring_size: {
    by: "owner, before any vCPU exists; read-only afterwards",
    doc: "entries per vCPU dirty ring (dirty_ring_size), 0 = bitmap mode",
  },
  dirty_ring_with_bitmap: {
    by: "owner, before any memslot exists; read-only afterwards",
    doc: "1: ring mode keeps the bitmap for writes without a vCPU (dirty_ring_with_bitmap)",
  },
  dirty_ring_full_exits: {
    by: "atomic add by the vCPUs (notified: the owner waits on it)",
    doc: "KVM_EXIT_DIRTY_RING_FULL exits, all vCPUs (statistic and event)",
  },
  dirty_ring_dropped: {
    by: "atomic add",
    doc: "ring-only mode: writes without a running vCPU, not logged (KVM's WARN_ON_ONCE)",
  },
  numa_scan_period_ms: {
    by: "the owner (atomic store); the vCPUs read it",
    doc: "NUMA balancing: ms between two scans (sysctl_numa_balancing_scan_period_min), 0 = off",
  },
  numa_scan_pages: {
    by: "as numa_scan_period_ms",
    doc: "NUMA balancing: pages unmapped per scan (sysctl_numa_balancing_scan_size)",
  },
  numa_next_scan: {
    by: "cmpxchg by the thread that claims a scan",
    doc: "mm->numa_next_scan: ms since KvmShared.epochMs",
  },
  numa_scan_offset: {
    by: "the thread whose cmpxchg of numa_next_scan won (one per period)",
    doc: "mm->numa_scan_offset: hva page where the next scan starts",
  },
  numa_scans: { by: "atomic add", doc: "NUMA balancing scans done (statistic)" },
  numa_pages_scanned: { by: "atomic add", doc: "pages those scans unmapped (statistic), low 32 bits" },
  numa_pages_scanned_hi: {
    by: "atomic add by the thread whose add carried out of numa_pages_scanned",
    doc: "pages those scans unmapped, high bits",
  },
});
/** manual_dirty_log flags (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2). */
export const KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0;
export const KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1;

// ---- memslots: `struct kvm_memory_slot`, one row per slot id (Int32Array `slots`) ----
const SLOT_BY = "slots_lock; created and deleted only while no vCPU runs, read by vCPUs without a lock";
export const SLOT = defineRows(
  "struct kvm_memory_slot",
  "kvm.slots",
  {
    active: { by: SLOT_BY, doc: "1 while the slot exists" },
    flags: {
      by: "slots_lock and mmu_lock (writes); slow-path faults read it under mmu_lock",
      doc: "KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY",
    },
    base_gfn: { by: SLOT_BY, doc: "first gfn" },
    npages: { by: SLOT_BY, doc: "pages in the slot" },
    hva_page: { by: SLOT_BY, doc: "userspace_addr >> PAGE_SHIFT" },
    rmap_base: { by: SLOT_BY, doc: "index in rmapPool of the level-1 rmap heads" },
    rmap_l2: { by: SLOT_BY, doc: "index in rmapPool of the level-2 rmap heads" },
    rmap_l3: { by: SLOT_BY, doc: "index in rmapPool of the level-3 rmap heads" },
    bitmap_base: { by: SLOT_BY, doc: "index in bitmapPool of dirty_bitmap; the snapshot half follows" },
    bitmap_words: { by: SLOT_BY, doc: "words of dirty_bitmap" },
    lpage_l2: { by: SLOT_BY, doc: "index in lpagePool of lpage_info (write_count), level 2" },
    lpage_l3: { by: SLOT_BY, doc: "index in lpagePool of lpage_info (write_count), level 3" },
  },
  { stride: 12 },
);
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;

// ---- shadow page headers: `struct kvm_mmu_page`, one row per sp (Int32Array `spHdr`) ----
const SP_BY =
  "mmu_lock (writes); fixed while a lockless walker can reach the page (RCU or the flush protocol)";
export const SP = defineRows(
  "struct kvm_mmu_page",
  "kvm.spHdr",
  {
    gfn: { by: SP_BY, doc: "first gfn covered (direct sp) or the guest table's gfn" },
    role: { by: SP_BY, doc: "level | direct << 4 | invalid << 5 | access << 6" },
    parent_ptes: { by: "mmu_lock (writes); a pte_list head", doc: "link sptes that point here" },
    root_count: { by: "mmu_lock", doc: "vCPUs using it as root" },
    next: { by: "mmu_lock", doc: "free or pending list link" },
    retire_epoch: { by: "mmu_lock", doc: "RCU epoch at which it was zapped" },
  },
  { stride: 8 },
);
export const ROLE_LEVEL_MASK = 0xf;
export const ROLE_DIRECT = 1 << 4;
export const ROLE_INVALID = 1 << 5;
/** role.access (shadow mode): ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK, bits 6-8. */
export const ROLE_ACCESS_SHIFT = 6;
export const ROLE_ACCESS_MASK = 7 << ROLE_ACCESS_SHIFT;
/** Head ids of parent_ptes lists, for nulls markers (rmap heads use their pool index). */
export const PARENT_HEAD_ID_BASE = 1 << 29;

// ---- shadow mode only: the rest of `struct kvm_mmu_page`, one row per sp (Int32Array `spExt`) ----
export const SPX = defineRows(
  "struct kvm_mmu_page (shadow-mode links)",
  "kvm.spExt",
  {
    hash_next: { by: "mmu_lock", doc: "hash_link: next sp + 1 in the mmu_page_hash bucket" },
    lru_prev: { by: "mmu_lock", doc: "link on active_mmu_pages: sp + 1, 0 = none" },
    lru_next: { by: "mmu_lock", doc: "link on active_mmu_pages: sp + 1, 0 = none" },
    flood: { by: "mmu_lock", doc: "write_flooding_count" },
    on_list: { by: "mmu_lock", doc: "1 while on active_mmu_pages and in the hash" },
  },
  { stride: 8 },
);
/** mmu_page_hash: 1 << KVM_MMU_HASH_SHIFT buckets of sp + 1 (Int32Array `spHash`), under mmu_lock. */
export const KVM_MMU_HASH_SHIFT = 10;
export const KVM_NUM_MMU_PAGES = 1 << KVM_MMU_HASH_SHIFT;

/** Shadow-mode control words and counters: `struct kvm_arch` and `kvm->stat` (Int32Array `sctl`). */
export const SCTL = defineBlock(
  "struct kvm_arch (shadow mode)",
  "kvm.sctl",
  {
    indirect_shadow_pages: { by: "mmu_lock", doc: "kvm->arch.indirect_shadow_pages" },
    active_head: { by: "mmu_lock", doc: "active_mmu_pages: newest sp + 1" },
    active_tail: { by: "mmu_lock", doc: "active_mmu_pages: oldest sp + 1" },
    n_max: { by: "mmu_lock", doc: "n_max_mmu_pages" },
    sp_created: { by: "mmu_lock", doc: "statistic: shadow pages created" },
    sp_hash_hits: { by: "mmu_lock", doc: "statistic: kvm_mmu_get_page found the page" },
    recycled: { by: "mmu_lock", doc: "statistic: mmu_recycled (oldest page zapped)" },
    pte_writes: { by: "mmu_lock", doc: "statistic: mmu_pte_write" },
    pte_zapped: { by: "mmu_lock", doc: "statistic: sptes zapped by emulated guest PT writes" },
    flooded: { by: "mmu_lock", doc: "statistic: mmu_flooded" },
    emulated: { by: "atomic add", doc: "statistic: emulated guest writes" },
    gpte_changed: { by: "mmu_lock", doc: "statistic: fetch retried, a gpte changed under the walk" },
    reloads: { by: "mmu_lock", doc: "statistic: vCPU roots reloaded because they were zapped" },
    pt_protect: { by: "mmu_lock", doc: "statistic: rmap_write_protect(pt_protect) found a spte" },
    pte_prefetch: { by: "mmu_lock", doc: "statistic: sptes re-created from the written gpte" },
  },
  { words: 16 },
);

// ---- `struct pte_list_desc`, one row per descriptor (Int32Array `desc`) ----
export const PTE_LIST_EXT = 3;
export const DESC = defineRows("struct pte_list_desc", "kvm.desc", {
  sptes: {
    words: PTE_LIST_EXT,
    by: "mmu_lock (writes, atomic stores); lockless walkers load them (nulls and restart rules)",
    doc: "spte index + 1 of each entry, 0 = empty",
  },
  more: {
    by: "mmu_lock (writes, atomic store after the entries); lockless walkers load it",
    doc: "next descriptor ((d + 1) << 1), or the nulls ((head << 1) | 1), 0 while built",
  },
});

// ---- `struct kvm_vcpu` words, one row per vCPU (Int32Array `vcpu`) ----
export const VCPU = defineRows(
  "struct kvm_vcpu",
  "kvm.vcpu",
  {
    mode: {
      by: "the vCPU writes it; flushers cmpxchg IN_GUEST_MODE to EXITING_GUEST_MODE",
      doc: "OUTSIDE / IN / EXITING / READING_SHADOW_PAGE_TABLES",
    },
    requests: { by: "set by anyone (atomic or), test-and-cleared by the vCPU", doc: "KVM_REQ_* bits" },
    run: { by: "the owner writes it, the vCPU reads it at safe points", doc: "RUN / PAUSE / STOP" },
    state: { by: "the vCPU writes it, the owner waits on it", doc: "what the worker is doing (VcpuState)" },
    id: { by: "owner, before the worker starts", doc: "vcpu_id" },
    passes: { by: "the vCPU (atomic add)", doc: "completed workload passes" },
    cr3: { by: "the vCPU", doc: "gfn of the top-level guest page table; 0: paging off" },
    root: { by: "the vCPU, under mmu_lock", doc: "shadow mode: root_hpa, the root shadow page" },
    sp_cache: {
      by: "mmu_lock (its vCPU fills and uses it; the owner empties it once no worker runs)",
      doc: "mmu_page_cache: first cached sp + 1, linked through sp `next`",
    },
    sp_cache_n: { by: "as sp_cache; its vCPU may read it without the lock", doc: "shadow pages in sp_cache" },
    desc_cache: {
      by: "mmu_lock (its vCPU fills and uses it; the owner empties it once no worker runs)",
      doc: "mmu_pte_list_desc_cache: first cached descriptor + 1, linked as the slab's free list",
    },
    desc_cache_n: {
      by: "as desc_cache; its vCPU may read it without the lock",
      doc: "descriptors in desc_cache",
    },
    tid: {
      by: "the vCPU worker stores it once at start (atomic); the owner reads it to pin the thread",
      doc: "the worker's kernel thread id (gettid), 0 = unknown",
    },
    mmu_lock_since: {
      by: "its vCPU (atomic store as it takes and drops a read hold); others load it (soft lockup)",
      doc: "ms (KvmShared clock) its read hold of mmu_lock began, 0 = none",
    },
    entries: { by: "its vCPU (plain store: one writer)", doc: "vcpu_enter_guest count (stop() reads it)" },
  },
  { stride: 16 },
);
export const OUTSIDE_GUEST_MODE = 0;
export const IN_GUEST_MODE = 1;
export const EXITING_GUEST_MODE = 2;
export const READING_SHADOW_PAGE_TABLES = 3;
export const KVM_REQ_TLB_FLUSH = 1 << 0;
export const KVM_REQ_MMU_RELOAD = 1 << 1;
export const KVM_REQ_DIRTY_RING_SOFT_FULL = 1 << 2;

// ---- the dirty ring (Int32Array `dirtyRing`): per vCPU a header, then its entries ----
export const RING_HDR = defineBlock(
  "struct kvm_dirty_ring (header, one per vCPU)",
  "dirtyRing",
  {
    dirty_index: {
      by: "its vCPU only (atomic store after the entry is published)",
      doc: "entries pushed (u32, wraps)",
    },
    reset_index: {
      by: "the reset (slots_lock; atomic store, then notify); its vCPU loads it",
      doc: "entries reset (u32, wraps)",
    },
    fetch_index: {
      by: "the harvester (userspace's own index; slots_lock in vm.harvestDirtyRing)",
      doc: "the next entry userspace harvests",
    },
    full_exits: { by: "atomic add by its vCPU", doc: "this vCPU's KVM_EXIT_DIRTY_RING_FULL exits" },
    throttle_us: { by: "the owner (atomic store, dirty-limit)", doc: "us slept per ring-full exit" },
  },
  { words: 8 },
);
/** One entry (after the header, entry i at i & (size - 1)): the uapi's 16 bytes. */
export const RING_GFN = defineRows(
  "struct kvm_dirty_gfn",
  "dirtyRing",
  {
    flags: {
      by: "the vCPU stores DIRTY (release, after slot and offset); the harvester stores RESET, the reset 0 (plain stores under slots_lock, published by its unlock and the reset_index store)",
      doc: "KVM_DIRTY_GFN_F_DIRTY (bit 0), KVM_DIRTY_GFN_F_RESET (bit 1)",
    },
    slot: {
      by: "its vCPU, before flags = DIRTY; read after an acquire load of flags",
      doc: "as_id << 16 | slot id",
    },
    offset_lo: { by: "as slot", doc: "page offset in the slot, low 32 bits" },
    offset_hi: { by: "as slot", doc: "page offset in the slot, high 32 bits (always 0 here)" },
  },
  { base: RING_HDR.WORDS },
);
export const KVM_DIRTY_GFN_F_DIRTY = 1 << 0;
export const KVM_DIRTY_GFN_F_RESET = 1 << 1;
/** Entries kept free for what a vCPU may still push after the soft-full request (no PML here). */
export const KVM_DIRTY_RING_RSVD_ENTRIES = 64;
export const KVM_DIRTY_RING_MAX_ENTRIES = 65536;
/** One page of 16-byte entries. */
export const KVM_DIRTY_RING_MIN_ENTRIES = PAGE_SIZE / 16;

// ---- userfaultfd on one memslot, MISSING mode (Int32Array `uffd`): the post-copy destination ----
const UFFD_OWNER = "owner, while no vCPU runs (userfaultRegister); read-only while they run";
export const UFFD = defineBlock(
  "userfaultfd (header)",
  "kvm.uffd",
  {
    slot: { by: UFFD_OWNER, doc: "registered memslot + 1, 0 = none" },
    npages: { by: UFFD_OWNER, doc: "pages of the registered slot (bits of the missing bitmap)" },
    missing: { by: "atomic add by the owner (discard +1, copy -1)", doc: "pages missing now" },
    req_seq: {
      by: "atomic add by a vCPU after it stores its fault_gfn, then notified; the owner waits on it",
      doc: "fault events (the readable userfaultfd)",
    },
    closed: {
      by: "the owner (atomic store, then every bitmap word notified)",
      doc: "1: the page source is gone; a fault on a missing page fails (SIGBUS)",
    },
  },
  { words: 8 },
);
export const UFFD_VCPU = defineRows(
  "userfaultfd (per-vCPU wait, postcopy-blocktime)",
  "kvm.uffd",
  {
    fault_gfn: {
      by: "its vCPU (atomic store before req_seq's add; 0 after the wait); the owner loads it",
      doc: "gfn + 1 the vCPU is blocked on, 0 = none",
    },
    blocked_us: { by: "its vCPU (atomic add after each wait)", doc: "total time blocked, us" },
    blocked_max_us: { by: "its vCPU (atomic store)", doc: "longest single wait, us" },
    faults: { by: "its vCPU (atomic add)", doc: "waits on a missing page" },
  },
  { base: UFFD.WORDS, stride: 4 },
);
/** The missing bitmap follows the rows of KVM_MAX_VCPUS vCPUs. */
export const UFFD_BITMAP_BASE = UFFD_VCPU.row(KVM_MAX_VCPUS);
export const UFFD_BITMAP = defineRows(
  "userfaultfd missing bitmap (one word per 32 pages)",
  "kvm.uffd",
  {
    bits: {
      by: "set by the owner (discard, no vCPU running); a bit is cleared by the owner (atomic and: release) after the page is written, then the word is notified; vCPUs load it (acquire) and wait on it",
      doc: "bit n: page 32 * row + n of the slot is missing",
    },
  },
  { base: UFFD_BITMAP_BASE },
);

/** `struct kvm_vcpu_stat`, one row per vCPU (Float64Array `vcpuStats`): written by its vCPU only. */
const ST_BY = "its vCPU only (plain stores); others read it after the vCPU stopped or as a statistic";
export const ST = defineRows(
  "struct kvm_vcpu_stat",
  "kvm.vcpuStats",
  {
    writes: { by: ST_BY, doc: "guest writes" },
    reads: { by: ST_BY, doc: "guest reads" },
    fast_pf: { by: ST_BY, doc: "faults fixed by fast_page_fault" },
    slow_pf: { by: ST_BY, doc: "faults through the slow path (mmu_lock)" },
    tlb_miss: { by: ST_BY, doc: "software-TLB misses" },
    lock_wait_ns: { by: ST_BY, doc: "ns waiting for mmu_lock" },
    lock_hold_ns: { by: ST_BY, doc: "ns holding mmu_lock" },
    lock_acq: { by: ST_BY, doc: "mmu_lock acquisitions" },
    flushes_handled: { by: ST_BY, doc: "KVM_REQ_TLB_FLUSH requests handled" },
    retries: { by: ST_BY, doc: "faults retried (notifier or gpte race)" },
    guest_walks: { by: ST_BY, doc: "guest page-table walks" },
    guest_pf: { by: ST_BY, doc: "guest page faults delivered to the guest program" },
    emulated: { by: ST_BY, doc: "writes to write-protected guest page tables, emulated" },
    tlb_audit: { by: ST_BY, doc: "writable TLB entries the sptes do not allow (last TLB audit)" },
  },
  { stride: 16 },
);

export interface KvmConfig {
  /** Host memory frames (4 KiB). */
  hostFrames: number;
  /** Capacity of the metadata pools (memslot pages). */
  maxSlotPages: number;
  maxSp: number;
  maxDesc: number;
  maxVcpus: number;
  /** The MMU design, a name registered in src/mmu/design.ts. */
  wp: DesignName;
  bugs: number;
  /** Default MmuMode.Tdp. */
  mode?: MmuMode;
  /** lockdep: each MMU op asserts the mmu_lock mode it declares (default on). */
  lockdep?: boolean;
  /** Dirty logging by D bit and a PML buffer per vCPU (designs with cpu_dirty_log_size); else write protection. */
  pml?: boolean;
  /** TDP MMU: split huge pages when logging starts (eager_page_split, default on). */
  eager_page_split?: boolean;
  /** Soft lockup: a vCPU holding mmu_lock, or not acknowledging a flush, this long fails the VM. */
  lockHoldTimeoutMs?: number;
}

/** The SharedArrayBuffers of one VM: what a worker needs to attach. */
export interface KvmShared {
  config: KvmConfig;
  /** The module registering config.wp if not built in: threads import it first (kvm_load_design). */
  designModule?: string;
  /** performance.timeOrigin + performance.now() at creation: the clock origin every thread shares. */
  epochMs: number;
  ctl: SharedArrayBuffer;
  slots: SharedArrayBuffer;
  spt: SharedArrayBuffer;
  spHdr: SharedArrayBuffer;
  desc: SharedArrayBuffer;
  rmapPool: SharedArrayBuffer;
  bitmapPool: SharedArrayBuffer;
  lpagePool: SharedArrayBuffer;
  mem: SharedArrayBuffer;
  hpt: SharedArrayBuffer;
  thp: SharedArrayBuffer;
  frameStack: SharedArrayBuffer;
  vcpu: SharedArrayBuffer;
  vcpuStats: SharedArrayBuffer;
  /** Shadow mode only (8-byte placeholders in TDP mode): sp->gfns, the sp extension, the hash. */
  spGfns: SharedArrayBuffer;
  spExt: SharedArrayBuffer;
  spHash: SharedArrayBuffer;
  sctl: SharedArrayBuffer;
  /** The vCPUs' dirty rings (an 8-byte placeholder until vm.enableDirtyRing replaces it). */
  dirtyRing: SharedArrayBuffer;
  /** userfaultfd state (an 8-byte placeholder until vm.userfaultRegister replaces it). */
  uffd: SharedArrayBuffer;
  /** The vCPUs' PML buffers (PML rows; an 8-byte placeholder when the design logs without PML). */
  pml: SharedArrayBuffer;
  /** The runtime trace's rings (sync/trace_ring.ts); absent: tracing off. Set before any vCPU exists. */
  trace?: SharedArrayBuffer;
}

// ---- the PML buffers (Int32Array `pml`), one row per vCPU: the "hardware" log of D-bit sets ----
/** Entries of a PML buffer (one 4 KiB page of 8-byte gpas in VMX; here one gfn a word). */
export const PML_ENTITY_NUM = 512;
const PML_BY = "its vCPU only (the 'CPU' writes, vmx_flush_pml_buffer reads, both on the vCPU's thread)";
export const PML = defineRows(
  "PML buffer (VMCS pml_index and the PML page)",
  "kvm.pml",
  {
    used: {
      by: PML_BY,
      doc: "entries written: GUEST_PML_INDEX is 511 - used (the CPU fills from the top down); 512 = full",
    },
    entries: { words: PML_ENTITY_NUM, by: PML_BY, doc: "gfns of pages whose D bit the vCPU set" },
  },
  { stride: PML_ENTITY_NUM + 8 },
);

/** Pages of host virtual address space a VM can mmap. */
export function hvaPages(config: KvmConfig): number {
  return 2 * config.hostFrames + 64 * 512;
}

function sab(bytes: number): SharedArrayBuffer {
  return new SharedArrayBuffer(Math.max(8, Math.ceil(bytes / 8) * 8));
}

export function allocKvmShared(config: KvmConfig): KvmShared {
  const slotPages = config.maxSlotPages;
  // Level 1 heads, plus levels 2 and 3 (+2 per slot for unaligned ends, bounded by slots).
  const rmapWords =
    slotPages + Math.ceil(slotPages / 512) + Math.ceil(slotPages / 262144) + 4 * KVM_USER_MEM_SLOTS;
  const bitmapWords = 2 * (Math.ceil(slotPages / 32) + KVM_USER_MEM_SLOTS);
  const lpageWords = Math.ceil(slotPages / 512) + Math.ceil(slotPages / 262144) + 4 * KVM_USER_MEM_SLOTS;
  const shadow = config.mode === MmuMode.Shadow;
  return {
    config,
    designModule: designs?.module(config.wp),
    epochMs: performance.timeOrigin + performance.now(),
    ctl: sab(CTL.WORDS * 4),
    slots: sab(SLOT.row(KVM_USER_MEM_SLOTS) * 4),
    spt: sab(config.maxSp * 512 * 4),
    spHdr: sab(SP.row(config.maxSp) * 4),
    // The descriptors, then one free-list link per descriptor (alloc/slab.ts).
    desc: sab((DESC.row(config.maxDesc) + config.maxDesc) * 4),
    rmapPool: sab(rmapWords * 4),
    bitmapPool: sab(bitmapWords * 4),
    lpagePool: sab(lpageWords * 4),
    mem: new SharedArrayBuffer(config.hostFrames * PAGE_SIZE),
    // Host virtual space: twice the frames plus 2 MiB alignment slack per THP mapping of >= 2 MiB.
    hpt: sab(hvaPages(config) * 4),
    thp: sab(Math.ceil(hvaPages(config) / 512) * 4),
    frameStack: sab(config.hostFrames * 4),
    vcpu: sab(VCPU.row(config.maxVcpus) * 4),
    vcpuStats: sab(ST.row(config.maxVcpus) * 8),
    spGfns: sab(shadow ? config.maxSp * 512 * 4 : 0),
    spExt: sab(shadow ? SPX.row(config.maxSp) * 4 : 0),
    spHash: sab(shadow ? KVM_NUM_MMU_PAGES * 4 : 0),
    sctl: sab(SCTL.WORDS * 4),
    dirtyRing: sab(0),
    uffd: sab(0),
    pml: sab(config.pml === true && !shadow ? PML.row(config.maxVcpus) * 4 : 0),
  };
}

/**
 * The MMU ops a Kvm resolves once, at construction, from its design and paging mode (KVM's
 * struct kvm_mmu, filled by init_kvm_tdp_mmu / kvm_init_shadow_mmu, plus the design's VM-wide
 * ops). Opaque here: src/mmu/kvm_mmu.ts gives it its members (a type augmentation, so this layer
 * imports nothing from above).
 */
export interface KvmOps {
  readonly name: DesignName;
}

/** What the registry (src/mmu/design.ts) lends this layer: the ops of a name, its module. */
export interface KvmDesigns {
  ops(name: DesignName, mode: MmuMode): KvmOps;
  module(name: DesignName): string | undefined;
}

let designs: KvmDesigns | null = null;

/** Installed by src/mmu/design.ts when it loads (in every thread that builds a Kvm). */
export function kvm_set_designs(d: KvmDesigns): void {
  designs = d;
}

export class Kvm {
  readonly shared: KvmShared;
  readonly ctl: Int32Array;
  readonly slots: Int32Array;
  readonly spt: Int32Array;
  readonly spHdr: Int32Array;
  readonly desc: Int32Array;
  readonly rmapPool: Int32Array;
  readonly bitmapPool: Int32Array;
  readonly lpagePool: Int32Array;
  readonly mem: Int32Array;
  readonly hpt: Int32Array;
  readonly thp: Int32Array;
  readonly frameStack: Int32Array;
  readonly vcpu: Int32Array;
  readonly vcpuStats: Float64Array;
  readonly spGfns: Int32Array;
  readonly spExt: Int32Array;
  readonly spHash: Int32Array;
  readonly sctl: Int32Array;
  /** Replaced once by enableDirtyRing (before any vCPU exists, so every worker sees the final one). */
  dirtyRing: Int32Array;
  /** Replaced once by userfaultRegister (before the vCPUs run, so every worker sees the final one). */
  uffd: Int32Array;
  readonly pml: Int32Array;
  readonly mode: MmuMode;
  readonly mmu_lock: RwLock;
  readonly slots_lock: Mutex;
  readonly mm_lock: Mutex;
  readonly rcu: Rcu;
  readonly bugs: number;
  readonly wp: DesignName;
  /** The design's MMU ops for this VM's paging mode (see `ops`). */
  private _ops: KvmOps | null;
  /** lockdep: ops assert the mmu_lock mode they declare (KvmConfig.lockdep). */
  readonly lockdep: boolean;
  /**
   * The vCPU whose memory caches allocations under mmu_lock draw from, -1 for none (then
   * they take from the global pools). Set by the mmu_lock holder after it locks and reset before
   * it unlocks, so only that holder reads it (this object is private to one thread).
   */
  mmu_cache_vcpu = -1;
  /** This thread's last gfn_to_memslot hit (memslots->lru_slot): a hint, checked before use. */
  lru_slot = 0;
  /** This thread's recorder of the VM's trace (`on` false without one). Replaced once by vm_enable_trace. */
  trace: Tracer;
  /** Write-protect statistics of this thread (kvm->stat-like; this object is per thread). */
  readonly wpStats = { protected: 0, casRetries: 0, largeDropped: 0 };
  /** pte_list_walk_lockless's walks and restarts on this thread (the same per-thread stat). */
  readonly rmapStats = { walks: 0, restarts: 0 };
  /** kvm_get_running_vcpu: the vCPU of this VM this thread runs, -1 for none (this thread only). */
  running_vcpu = -1;
  /** KVM_RESET_DIRTY_RINGS' arrays on this thread (src/mmu/dirty_ring.ts), made at first use. */
  ring_reset_scratch: { slots: Int32Array; offsets: Int32Array; c: Int32Array } | null = null;

  constructor(shared: KvmShared) {
    this.shared = shared;
    this.ctl = new Int32Array(shared.ctl);
    this.slots = new Int32Array(shared.slots);
    this.spt = new Int32Array(shared.spt);
    this.spHdr = new Int32Array(shared.spHdr);
    this.desc = new Int32Array(shared.desc);
    this.rmapPool = new Int32Array(shared.rmapPool);
    this.bitmapPool = new Int32Array(shared.bitmapPool);
    this.lpagePool = new Int32Array(shared.lpagePool);
    this.mem = new Int32Array(shared.mem);
    this.hpt = new Int32Array(shared.hpt);
    this.thp = new Int32Array(shared.thp);
    this.frameStack = new Int32Array(shared.frameStack);
    this.vcpu = new Int32Array(shared.vcpu);
    this.vcpuStats = new Float64Array(shared.vcpuStats);
    this.spGfns = new Int32Array(shared.spGfns);
    this.spExt = new Int32Array(shared.spExt);
    this.spHash = new Int32Array(shared.spHash);
    this.sctl = new Int32Array(shared.sctl);
    this.dirtyRing = new Int32Array(shared.dirtyRing);
    this.uffd = new Int32Array(shared.uffd);
    this.pml = new Int32Array(shared.pml);
    this.mode = shared.config.mode ?? MmuMode.Tdp;
    this.mmu_lock = new RwLock(this.ctl, CTL.mmu_lock);
    this.slots_lock = new Mutex(this.ctl, CTL.slots_lock);
    this.mm_lock = new Mutex(this.ctl, CTL.mm_lock, false);
    this.rcu = new Rcu(this.ctl, CTL.rcu);
    this.bugs = shared.config.bugs;
    this.wp = shared.config.wp;
    this.lockdep = shared.config.lockdep ?? true;
    this.trace = new Tracer(shared.trace ?? null, shared.epochMs);
    if (this.trace.on) this.mmu_lock.tracer = this.trace;
    // Resolved here when the registry is loaded (it is wherever MMU code runs); a thread that
    // only reads the shared structures never needs it.
    this._ops = designs === null ? null : designs.ops(this.wp, this.mode);
  }

  /** The design's MMU ops for this VM's paging mode, resolved once. */
  get ops(): KvmOps {
    if (this._ops === null) {
      if (designs === null) throw new Error("Kvm: no MMU design registry loaded (import src/mmu/design.js)");
      this._ops = designs.ops(this.wp, this.mode);
    }
    return this._ops;
  }

  bug(b: number): boolean {
    return (this.bugs & b) !== 0;
  }
}

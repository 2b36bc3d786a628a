/**
 * `struct kvm` in shared memory: every thread (the VM owner, each vCPU worker, the MMU-notifier
 * thread) builds a `Kvm` over the same SharedArrayBuffers from a `KvmShared` descriptor.
 *
 * Which lock protects which word is stated where the word is defined; docs/locking.md has the
 * whole picture.
 */
import { Mutex, MUTEX_WORDS } from "./sync/mutex.js";
import { Rcu, RCU_WORDS } from "./sync/rcu.js";

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 4096;
export const PAGE_WORDS = PAGE_SIZE / 4;
export const KVM_MAX_VCPUS = 64;
export const KVM_USER_MEM_SLOTS = 32;

/** Write-protect strategies for dirty logging. */
export const enum WpStrategy {
  Locked = 0,
  Lockless = 1,
}

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
} as const;
export type BugName = keyof typeof BUG;

// ---- the control words (Int32Array `ctl`) ----
export const CTL_MMU_LOCK = 0; // kvm->mmu_lock
export const CTL_SLOTS_LOCK = CTL_MMU_LOCK + MUTEX_WORDS; // kvm->slots_lock
export const CTL_MM_LOCK = CTL_SLOTS_LOCK + MUTEX_WORDS; // host mm: frame allocator, host page table
export const CTL_RCU = CTL_MM_LOCK + MUTEX_WORDS;
const C = CTL_RCU + RCU_WORDS;
/** mmu_notifier_seq / _count: written under mmu_lock, read locklessly by faults. */
export const CTL_NOTIFIER_SEQ = C + 0;
export const CTL_NOTIFIER_COUNT = C + 1;
/** The TDP root shadow page (0: none). Written under mmu_lock. */
export const CTL_ROOT = C + 2;
/** Shadow-page allocator: free list, list of zapped pages waiting for their grace period. Under mmu_lock. */
export const CTL_SP_FREE = C + 5;
export const CTL_SP_PENDING = C + 6;
export const CTL_SP_USED = C + 7;
export const CTL_SP_HIGH = C + 8; // never-used pages start here
/** pte_list_desc slab: free list and counters. Under mmu_lock. */
export const CTL_DESC_FREE = C + 9;
export const CTL_DESC_HIGH = C + 10;
export const CTL_DESC_USED = C + 11;
export const CTL_DESC_ALLOCS = C + 12;
/** Host frame allocator (free stack top). Under mm_lock. */
export const CTL_FRAME_TOP = C + 13;
/** Bump pointer of the host virtual address space (in pages). Owner thread only. */
export const CTL_HVA_NEXT = C + 14;
export const CTL_NR_VCPUS = C + 15;
/** VM state: 0 running, 1 stopping, 2 failed (a worker threw). */
export const CTL_VM_STATE = C + 16;
export const CTL_REMOTE_FLUSHES = C + 17;
export const CTL_LPAGES = C + 18; // large sptes present (kvm->stat.lpages). Under mmu_lock.
export const CTL_RMAP_POOL_NEXT = C + 19; // bump allocator of memslot metadata. Under slots_lock.
export const CTL_BITMAP_POOL_NEXT = C + 20;
export const CTL_FRAME_HIGH = C + 21; // never-used frames start here. Under mm_lock.
export const CTL_LPAGE_POOL_NEXT = C + 22;
export const CTL_WORDS = C + 24;

// ---- memslots (Int32Array `slots`, one row per slot id). Written under slots_lock (+mmu_lock for FLAGS). ----
export const SLOT_ACTIVE = 0;
export const SLOT_FLAGS = 1;
export const SLOT_BASE_GFN = 2;
export const SLOT_NPAGES = 3;
export const SLOT_HVA_PAGE = 4; // userspace_addr >> PAGE_SHIFT
export const SLOT_RMAP_BASE = 5; // index into rmapPool of level 1; levels 2,3 follow
export const SLOT_RMAP_L2 = 6;
export const SLOT_RMAP_L3 = 7;
export const SLOT_BITMAP_BASE = 8; // index into bitmapPool; the snapshot half follows
export const SLOT_BITMAP_WORDS = 9;
export const SLOT_LPAGE_L2 = 10; // lpage_info write_count, index into lpagePool
export const SLOT_LPAGE_L3 = 11;
export const SLOT_STRIDE = 12;
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;

// ---- shadow page headers (Int32Array `spHdr`, one row per sp: struct kvm_mmu_page) ----
export const SP_GFN = 0; // direct sp: first gfn covered
export const SP_ROLE = 1; // level | direct<<4 | invalid<<5
export const SP_PARENT_PTES = 2; // pte_list head of link sptes pointing here
export const SP_ROOT_COUNT = 3;
export const SP_NEXT = 4; // free / pending list link
export const SP_RETIRE_EPOCH = 5; // RCU epoch at which it was zapped
export const SP_STRIDE = 8;
export const ROLE_LEVEL_MASK = 0xf;
export const ROLE_DIRECT = 1 << 4;
export const ROLE_INVALID = 1 << 5;
/** role.access (shadow mode): ACC_EXEC_MASK | ACC_WRITE_MASK | ACC_USER_MASK, bits 6-8. */
export const ROLE_ACCESS_SHIFT = 6;
export const ROLE_ACCESS_MASK = 7 << ROLE_ACCESS_SHIFT;
/** Head ids of parent_ptes lists, for nulls markers (rmap heads use their pool index). */
export const PARENT_HEAD_ID_BASE = 1 << 29;

// ---- shadow mode only (src/mmu/mmu_page_hash.ts, shadow_page.ts): per-sp extension (Int32Array `spExt`) ----
export const SPX_HASH_NEXT = 0; // next sp + 1 in the mmu_page_hash bucket (hash_link)
export const SPX_LRU_PREV = 1; // active_mmu_pages (link): sp + 1, 0 = none
export const SPX_LRU_NEXT = 2;
export const SPX_FLOOD = 3; // write_flooding_count
export const SPX_ON_LIST = 4; // 1 while on active_mmu_pages and in the hash (until it goes to the invalid list)
export const SPX_STRIDE = 8;
/** mmu_page_hash: 1 << KVM_MMU_HASH_SHIFT buckets of sp + 1 (Int32Array `spHash`). */
export const KVM_MMU_HASH_SHIFT = 10;
export const KVM_NUM_MMU_PAGES = 1 << KVM_MMU_HASH_SHIFT;
/** Shadow-mode control words and counters (Int32Array `sctl`). Under mmu_lock unless noted. */
export const SCTL_INDIRECT_SHADOW_PAGES = 0; // kvm->arch.indirect_shadow_pages
export const SCTL_ACTIVE_HEAD = 1; // newest sp + 1
export const SCTL_ACTIVE_TAIL = 2; // oldest sp + 1
export const SCTL_N_MAX = 3; // n_max_mmu_pages
export const SCTL_SP_CREATED = 4;
export const SCTL_SP_HASH_HITS = 5;
export const SCTL_RECYCLED = 6; // mmu_recycled (zap oldest)
export const SCTL_PTE_WRITES = 7; // mmu_pte_write
export const SCTL_PTE_ZAPPED = 8; // sptes zapped by emulated guest PT writes
export const SCTL_FLOODED = 9; // mmu_flooded: sps zapped by write flooding
export const SCTL_EMULATED = 10; // emulated guest writes (atomic add)
export const SCTL_GPTE_CHANGED = 11; // fetch retried: a gpte changed under the walk
export const SCTL_RELOADS = 12; // vCPU roots reloaded because they were zapped
export const SCTL_PT_PROTECT = 13; // rmap_write_protect(pt_protect) calls that found a spte to protect
export const SCTL_PTE_PREFETCH = 14; // sptes re-created from the written gpte (update_pte)
export const SCTL_WORDS = 16;

// ---- pte_list_desc (Int32Array `desc`, 4 words: sptes[0..2], more) ----
export const PTE_LIST_EXT = 3;
export const DESC_WORDS = 4;
export const DESC_MORE = 3;

// ---- per-vCPU words (Int32Array `vcpu`, row per vCPU) ----
export const VCPU_MODE = 0; // OUTSIDE/IN/EXITING/READING: written by the vCPU, cmpxchg'ed by flushers
export const VCPU_REQUESTS = 1; // request bits: set by anyone, test-and-cleared by the vCPU
export const VCPU_RUN = 2; // run control from the owner: RUN/PAUSE/STOP
export const VCPU_STATE = 3; // what the worker is doing: see VcpuState
export const VCPU_ID = 4;
export const VCPU_PASSES = 5; // completed workload passes
/** Guest CR3 (gfn of the top-level guest page table; 0: paging off). Written by the vCPU. */
export const VCPU_CR3 = 6;
/** Shadow mode: the root shadow page the vCPU uses (root_hpa). Written by the vCPU under mmu_lock. */
export const VCPU_ROOT = 7;
export const VCPU_STRIDE = 16;
export const OUTSIDE_GUEST_MODE = 0;
export const IN_GUEST_MODE = 1;
export const EXITING_GUEST_MODE = 2;
export const READING_SHADOW_PAGE_TABLES = 3;
export const KVM_REQ_TLB_FLUSH = 1 << 0;
export const KVM_REQ_MMU_RELOAD = 1 << 1;

/** Per-vCPU statistics (Float64Array `vcpuStats`, row per vCPU): written by the vCPU only. */
export const ST_WRITES = 0;
export const ST_READS = 1;
export const ST_FAST_PF = 2;
export const ST_SLOW_PF = 3;
export const ST_TLB_MISS = 4;
export const ST_LOCK_WAIT_NS = 5;
export const ST_LOCK_HOLD_NS = 6;
export const ST_LOCK_ACQ = 7;
export const ST_FLUSHES_HANDLED = 8;
export const ST_RETRIES = 9;
/** Guest paging (shadow mode, or TDP with a guest CR3): */
export const ST_GUEST_WALKS = 10; // guest page-table walks (KVM's walk_addr, or the MMU's 2D walk)
export const ST_GUEST_PF = 11; // guest page faults delivered to the guest program
export const ST_EMULATED = 12; // writes to write-protected guest page tables, emulated
export const ST_TLB_AUDIT = 13; // writable TLB entries the sptes do not allow (last TLB audit)
export const ST_STRIDE = 16;

export interface KvmConfig {
  /** Host memory frames (4 KiB). */
  hostFrames: number;
  /** Capacity of the metadata pools (memslot pages). */
  maxSlotPages: number;
  maxSp: number;
  maxDesc: number;
  maxVcpus: number;
  wp: WpStrategy;
  bugs: number;
  /** Default MmuMode.Tdp. */
  mode?: MmuMode;
}

/** The SharedArrayBuffers of one VM: what a worker needs to attach. */
export interface KvmShared {
  config: KvmConfig;
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
}

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
    ctl: sab(CTL_WORDS * 4),
    slots: sab(KVM_USER_MEM_SLOTS * SLOT_STRIDE * 4),
    spt: sab(config.maxSp * 512 * 4),
    spHdr: sab(config.maxSp * SP_STRIDE * 4),
    desc: sab(config.maxDesc * (DESC_WORDS + 1) * 4),
    rmapPool: sab(rmapWords * 4),
    bitmapPool: sab(bitmapWords * 4),
    lpagePool: sab(lpageWords * 4),
    mem: new SharedArrayBuffer(config.hostFrames * PAGE_SIZE),
    // Host virtual space: twice the frames plus 2 MiB alignment slack per mapping.
    hpt: sab(hvaPages(config) * 4),
    thp: sab(Math.ceil(hvaPages(config) / 512) * 4),
    frameStack: sab(config.hostFrames * 4),
    vcpu: sab(config.maxVcpus * VCPU_STRIDE * 4),
    vcpuStats: sab(config.maxVcpus * ST_STRIDE * 8),
    spGfns: sab(shadow ? config.maxSp * 512 * 4 : 0),
    spExt: sab(shadow ? config.maxSp * SPX_STRIDE * 4 : 0),
    spHash: sab(shadow ? KVM_NUM_MMU_PAGES * 4 : 0),
    sctl: sab(SCTL_WORDS * 4),
  };
}

/** Bytes of MMU metadata (everything but guest memory). */
export function metadataBytes(s: KvmShared): number {
  let n = 0;
  for (const [k, v] of Object.entries(s)) {
    if (k !== "config" && k !== "mem" && v instanceof SharedArrayBuffer) n += v.byteLength;
  }
  return n;
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
  readonly mode: MmuMode;
  readonly mmu_lock: Mutex;
  readonly slots_lock: Mutex;
  readonly mm_lock: Mutex;
  readonly rcu: Rcu;
  readonly bugs: number;
  readonly wp: WpStrategy;

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
    this.mode = shared.config.mode ?? MmuMode.Tdp;
    this.mmu_lock = new Mutex(this.ctl, CTL_MMU_LOCK);
    this.slots_lock = new Mutex(this.ctl, CTL_SLOTS_LOCK);
    this.mm_lock = new Mutex(this.ctl, CTL_MM_LOCK, false);
    this.rcu = new Rcu(this.ctl, CTL_RCU);
    this.bugs = shared.config.bugs;
    this.wp = shared.config.wp;
  }

  bug(b: number): boolean {
    return (this.bugs & b) !== 0;
  }
}

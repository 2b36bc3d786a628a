/**
 * KVM_CREATE_VM: the options a VM is made with, checked, and its shared memory allocated
 * (kvm_create_vm). Sizing of the MMU's pools follows the paging mode.
 */
import { allocKvmShared, BUG, BugName, KVM_MAX_VCPUS, KvmShared, MmuMode, PAGE_SIZE } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { isInt } from "./state.js";
import { DesignName, designNames, designOps, isDesign } from "../mmu/design.js";
import { BUG_TDP, TdpBugName } from "../mmu/tdp_mmu/tdp_mmu_bugs.js";

/** A design registered in src/mmu/design.ts ("locked", "lockless", ...). */
export type WpName = DesignName;
export type MmuModeName = "tdp" | "shadow";

export interface VmOptions {
  /** Bytes of host memory (guest backing plus spare frames for page migration). */
  memory: number;
  wp: WpName;
  /** "tdp" (EPT/NPT, the default) or "shadow" (EPT off: shadow paging of guest page tables). */
  mode?: MmuModeName;
  /** Catalog bugs to put back: the rmap MMU's (BugName) and the TDP MMU's (TdpBugName). */
  bugs?: (BugName | TdpBugName)[];
  maxVcpus?: number;
  /** Capacity of the memslot metadata, in pages (default: the host memory's pages), 1..2^26. */
  maxSlotPages?: number;
  /** Shadow pages (page-table pages) in the arena, 1..2^19. */
  maxSp?: number;
  /** pte_list_desc objects in the slab, 1..2^24. */
  maxDesc?: number;
  /** tdp-mmu: dirty logging by D bit and PML (default true); false: write protection (--no-pml). */
  pml?: boolean;
  /** tdp-mmu: split huge pages when logging starts (default true; --no-eager-split). */
  eager_page_split?: boolean;
  /**
   * Soft-lockup bound, ms (default 5000): a vCPU that holds mmu_lock, or does not acknowledge a
   * TLB flush, this long fails the VM (a SoftLockupError or ETIMEDOUT naming it).
   */
  lockHoldTimeoutMs?: number;
}

/** Inclusive ranges of the pool limits Vm.create accepts. */
export const POOL_LIMITS = {
  maxSlotPages: [1, 2 ** 26],
  maxSp: [1, 2 ** 19],
  maxDesc: [1, 2 ** 24],
} as const;

/**
 * Host memory is one SharedArrayBuffer seen as an Int32Array, and V8 caps a typed array at 2^32
 * elements: 16 GiB (2^22 frames, frame 0 included), guest memory and the spare frames together.
 */
export const MAX_MEMORY = 2 ** 32 * 4;
/** The catalog bugs named in `bugs` as KvmConfig.bugs bits (EINVAL naming an unknown one). */
function bugMask(names: readonly string[] | undefined): number {
  let bugs = 0;
  const catalog: Record<string, number> = { ...BUG, ...BUG_TDP };
  for (const b of names ?? []) {
    if (!Object.hasOwn(catalog, b))
      throw einval("bugs", `unknown bug ${String(b)}; known: ${Object.keys(catalog).join(", ")}`);
    bugs |= catalog[b];
  }
  return bugs;
}

/** Checks the options (EINVAL naming the option, ENOMEM) and allocates the VM's shared memory. */
export function kvm_create_vm(o: VmOptions): KvmShared {
  if (typeof o !== "object" || o === null) throw einval("options", `must be an object, got ${String(o)}`);
  if (!isInt(o.memory) || o.memory <= 0 || o.memory % PAGE_SIZE !== 0)
    throw einval("memory", `must be a positive multiple of ${PAGE_SIZE} bytes, got ${String(o.memory)}`);
  if (o.memory > MAX_MEMORY)
    throw new KvmError(
      "ENOMEM",
      `memory: ${o.memory} bytes is over the ${MAX_MEMORY}-byte limit (host memory is one Int32Array, at most 2^32 words)`,
    );
  if (typeof o.wp !== "string" || !isDesign(o.wp))
    throw einval("wp", `must be one of ${designNames().join(", ")}, got ${String(o.wp)}`);
  const mode = o.mode ?? "tdp";
  if (mode !== "tdp" && mode !== "shadow")
    throw einval("mode", `must be "tdp" or "shadow", got ${String(mode)}`);
  const bugs = bugMask(o.bugs);
  for (const k of ["pml", "eager_page_split"] as const)
    if (o[k] !== undefined && typeof o[k] !== "boolean")
      throw einval(k, `must be a boolean, got ${String(o[k])}`);
  const maxVcpus = o.maxVcpus ?? KVM_MAX_VCPUS;
  if (!isInt(maxVcpus) || maxVcpus < 1 || maxVcpus > KVM_MAX_VCPUS)
    throw einval("maxVcpus", `must be 1..${KVM_MAX_VCPUS}`);
  for (const k of Object.keys(POOL_LIMITS) as (keyof typeof POOL_LIMITS)[]) {
    const x = o[k];
    const [lo, hi] = POOL_LIMITS[k];
    if (x !== undefined && (!isInt(x) || x < lo || x > hi))
      throw einval(k, `must be an integer in ${lo}..${hi}, got ${String(x)}`);
  }
  const lockHoldTimeoutMs = o.lockHoldTimeoutMs;
  if (
    lockHoldTimeoutMs !== undefined &&
    (!isInt(lockHoldTimeoutMs) || lockHoldTimeoutMs < 1 || lockHoldTimeoutMs > 3_600_000)
  )
    throw einval(
      "lockHoldTimeoutMs",
      `must be an integer in 1..3600000 (ms), got ${String(lockHoldTimeoutMs)}`,
    );
  const hostFrames = o.memory / PAGE_SIZE;
  const maxSlotPages = o.maxSlotPages ?? Math.min(hostFrames, POOL_LIMITS.maxSlotPages[1]);
  // TDP: one leaf table per 512 pages, a few upper tables, slack for tables being retired.
  // Shadow: a page per guest table per address space, aliases, pages that wait to be recycled;
  // a fixed floor for small guests with many address spaces, then the same 2 per 512 pages as
  // TDP (a guest mapping all its memory once with 4 KiB pages needs 1 per 512), so metadata
  // stays under 1% of guest memory; past n_max_mmu_pages pages are recycled, as in KVM.
  const shadow = mode === "shadow";
  const perSize = Math.ceil(maxSlotPages / 512) * 2 + 64;
  // Plus what the vCPUs' memory caches hold (mmu_topup_memory_caches: up to 8 pages, 16 descriptors).
  const maxSp = o.maxSp ?? (shadow ? Math.max(1024, perSize) : perSize) + 8 * maxVcpus;
  const maxDesc =
    o.maxDesc ??
    Math.max(shadow ? 16384 : 4096, Math.ceil(maxSlotPages / (shadow ? 16 : 64))) + 16 * maxVcpus;
  // The design's ops for this mode (a design may refuse the mode: KvmError naming why); D-bit
  // logging where the design has it (cpu_dirty_log_size), unless turned off.
  const ops = designOps(o.wp, shadow ? MmuMode.Shadow : MmuMode.Tdp);
  const pml = o.pml !== false && ops.cpu_dirty_log_size !== undefined;
  let shared: KvmShared;
  try {
    shared = allocKvmShared({
      hostFrames,
      maxSlotPages,
      maxSp,
      maxDesc,
      maxVcpus,
      wp: o.wp,
      bugs,
      mode: shadow ? MmuMode.Shadow : MmuMode.Tdp,
      pml,
      eager_page_split: o.eager_page_split,
      lockHoldTimeoutMs,
    });
  } catch (e) {
    throw new KvmError(
      "ENOMEM",
      `memory: cannot allocate ${o.memory} bytes of shared memory (${(e as Error).message})`,
    );
  }
  return shared;
}

/** Bytes of MMU metadata: every shared buffer but guest memory and the trace's rings. */
export function metadataBytes(s: KvmShared): number {
  let n = 0;
  for (const [k, v] of Object.entries(s)) {
    if (k !== "config" && k !== "mem" && k !== "trace" && v instanceof SharedArrayBuffer) n += v.byteLength;
  }
  return n;
}

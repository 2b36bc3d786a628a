/**
 * The VM as its owner (the VMM) sees it: the KVM ioctl surface as a TypeScript API.
 *
 *   const vm = Vm.create({ memory: 1 << 30, wp: "lockless" });
 *   const hva = vm.mmap(512 << 20);
 *   vm.setUserMemoryRegion({ slot: 0, flags: KVM_MEM_LOG_DIRTY_PAGES, guestPhysAddr: 0,
 *                            memorySize: 512 << 20, userspaceAddr: hva });
 *   vm.createVcpu(0);
 *   await vm.run((id) => guestArgs);          // one worker_thread per vCPU
 *   const log = vm.getDirtyLog(0);            // KVM_GET_DIRTY_LOG
 *   await vm.stop();
 *
 * Every method validates its arguments first and throws KvmError (EINVAL, EEXIST, ENOENT,
 * ENOMEM, EBUSY) without changing the VM.
 */
import os from "node:os";
import { Worker } from "node:worker_threads";
import {
  allocKvmShared,
  BUG,
  BugName,
  CTL,
  Kvm,
  KVM_MAX_VCPUS,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KVM_USER_MEM_SLOTS,
  KvmShared,
  metadataBytes,
  MmuMode,
  OUTSIDE_GUEST_MODE,
  PAGE_SIZE,
  SLOT,
  ST,
  VCPU,
  KVM_DIRTY_LOG_INITIALLY_SET,
  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE,
  KVM_DIRTY_RING_MAX_ENTRIES,
  KVM_DIRTY_RING_MIN_ENTRIES,
  RING_HDR,
  UFFD,
  UFFD_BITMAP,
  UFFD_VCPU,
} from "./kvm_host.js";
import { einval, Errno, KvmError } from "./errors.js";
import { host_mmap, host_read_u64, hva_to_pfn } from "./mem/host_memory.js";
import { slot_level_pages } from "./mem/memslot.js";
import {
  kvm_arch_sync_dirty_log,
  kvm_get_dirty_log,
  kvm_set_dirty_logging,
  wp_design,
} from "./mmu/dirty_log.js";
import { DesignName, designNames, designOps, isDesign } from "./mmu/design.js";
import { BUG_TDP, TdpBugName } from "./mmu/tdp_mmu/tdp_mmu_bugs.js";
import { kvm_clear_dirty_log } from "./mmu/clear_dirty_log.js";
import { kvm_dirty_ring_harvest, ring_base, ring_words } from "./mem/dirty_ring.js";
import { kvm_reset_dirty_rings } from "./mmu/dirty_ring.js";
import { addDirtyLogTimes, DirtyLogTimes, newDirtyLogTimes } from "./mmu/write_protect.js";
import { kvm_flush_remote_tlbs, kvm_vcpu_kick, VcpuState } from "./kvm/requests.js";
import { RunCtl } from "./vcpu/vcpu.js";
import type { GuestArgs } from "./workload/guest.js";
import { validateGuestSpecs } from "./guest/spec.js";
import { guest_read, guest_write, guest_range_check } from "./guest/host_access.js";
import { HOST, HostWorkerData } from "./mem/host_thread.js";
import { mmu_free_memory_caches } from "./mmu/mmu_cache.js";
import { uffd_copy, uffd_missing, uffd_words } from "./mem/userfault.js";
import { waitAsyncAlive } from "./sync/atomic.js";
import { numa_balancing_settings } from "./mem/numa_balancing.js";
import { sched_setaffinity } from "./sync/affinity.js";

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
}

/** Inclusive ranges of the pool limits Vm.create accepts. */
export const POOL_LIMITS = {
  maxSlotPages: [1, 2 ** 26],
  maxSp: [1, 2 ** 19],
  maxDesc: [1, 2 ** 24],
} as const;

/**
 * How long the owner waits for a vCPU to answer (park, audit, stop, flush acknowledgement)
 * before the VM fails with ETIMEDOUT naming that vCPU.
 */
export const VCPU_WAIT_MS = 10_000;

export interface MemoryRegion {
  slot: number;
  flags: number;
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: number;
}

/** One harvested dirty-ring entry: slot id and page offset in the slot. */
export interface DirtyGfn {
  slot: number;
  offset: number;
}

export interface HostThreadOptions {
  migrateRate: number;
  invalidateRate: number;
  invalidatePages?: number;
  seed?: number;
}

/**
 * Host memory is one SharedArrayBuffer seen as an Int32Array, and V8 caps a typed array at 2^32
 * elements: 16 GiB (2^22 frames, frame 0 included), guest memory and the spare frames together.
 */
export const MAX_MEMORY = 2 ** 32 * 4;
const ERRNOS: readonly Errno[] = [
  "EINVAL",
  "EEXIST",
  "ENOENT",
  "ENOMEM",
  "EBUSY",
  "EFAULT",
  "ETIMEDOUT",
  "EIO",
  "ENXIO",
  "E2BIG",
  "ENOSYS",
];

/** Node flags that a worker cannot take (they apply to string input only). */
export function workerExecArgv(): string[] {
  return process.execArgv.filter((a) => !a.startsWith("--input-type") && a !== "-e" && a !== "--eval");
}

function describe(x: unknown): string {
  if (x === null || typeof x !== "object") return String(x);
  return (x.constructor as { name?: string } | undefined)?.name ?? "an object";
}

function isInt(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x);
}

export class Vm {
  readonly kvm: Kvm;
  readonly shared: KvmShared;
  private readonly workers = new Map<number, Worker>();
  private readonly created = new Set<number>();
  private hostWorker: Worker | null = null;
  private hostCtl: Int32Array | null = null;
  /** Set by run(), cleared by stop(): memslots are created and deleted only while it is false. */
  private running = false;
  /** stop() in progress: a worker exiting now is expected, not a failure. */
  private stopping = false;
  /** The first error a worker reported; the VM is stopped when one arrives. */
  error: KvmError | Error | null = null;
  /** getDirtyLog times: the sum over calls, and the last call's. */
  private readonly times: DirtyLogTimes = newDirtyLogTimes();
  private lastTimes: DirtyLogTimes = newDirtyLogTimes();
  /** clearDirtyLog and resetDirtyRings times, the same way. */
  private readonly clearTimes: DirtyLogTimes = newDirtyLogTimes();
  private lastClear: DirtyLogTimes = newDirtyLogTimes();
  private readonly resetTimes: DirtyLogTimes = newDirtyLogTimes();
  private lastReset: DirtyLogTimes = newDirtyLogTimes();

  private constructor(shared: KvmShared) {
    this.shared = shared;
    this.kvm = new Kvm(shared);
  }

  static create(o: VmOptions): Vm {
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
    let bugs = 0;
    const catalog: Record<string, number> = { ...BUG, ...BUG_TDP };
    for (const b of o.bugs ?? []) {
      if (!Object.hasOwn(catalog, b))
        throw einval("bugs", `unknown bug ${String(b)}; known: ${Object.keys(catalog).join(", ")}`);
      bugs |= catalog[b];
    }
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
      });
    } catch (e) {
      throw new KvmError(
        "ENOMEM",
        `memory: cannot allocate ${o.memory} bytes of shared memory (${(e as Error).message})`,
      );
    }
    return new Vm(shared);
  }

  /** mmap(MAP_ANONYMOUS): returns the host virtual address (bytes) of `bytes` of zeroed memory. */
  mmap(bytes: number, opts: { thp?: boolean } = {}): number {
    if (!isInt(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0)
      throw einval("bytes", `must be a positive multiple of ${PAGE_SIZE}, got ${String(bytes)}`);
    return host_mmap(this.kvm, bytes / PAGE_SIZE, opts.thp ?? true) * PAGE_SIZE;
  }

  /** KVM_SET_USER_MEMORY_REGION. */
  setUserMemoryRegion(m: MemoryRegion): void {
    const kvm = this.kvm;
    if (typeof m !== "object" || m === null) throw einval("region", `must be an object, got ${String(m)}`);
    if (!isInt(m.slot) || m.slot < 0 || m.slot >= KVM_USER_MEM_SLOTS)
      throw einval("slot", `must be 0..${KVM_USER_MEM_SLOTS - 1}, got ${String(m.slot)}`);
    if (!isInt(m.flags) || (m.flags & ~(KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY)) !== 0)
      throw einval("flags", `unknown flags 0x${Number(m.flags).toString(16)}`);
    for (const k of ["guestPhysAddr", "memorySize", "userspaceAddr"] as const) {
      const x = m[k];
      if (!isInt(x) || x < 0 || x % PAGE_SIZE !== 0)
        throw einval(k, `must be a non-negative multiple of ${PAGE_SIZE}, got ${String(x)}`);
    }
    const slot = m.slot;
    const s = kvm.slots;
    const npages = m.memorySize / PAGE_SIZE;
    const baseGfn = m.guestPhysAddr / PAGE_SIZE;
    const hvaPage = m.userspaceAddr / PAGE_SIZE;
    kvm.slots_lock.lock();
    try {
      const active = s[SLOT.active(slot)] !== 0;
      if (npages === 0) {
        if (!active) throw einval("memorySize", `0 deletes a slot, but slot ${m.slot} does not exist`);
        this.checkIdle("memorySize");
        this.deleteSlot(slot);
        return;
      }
      if (active) {
        if (
          s[SLOT.base_gfn(slot)] !== baseGfn ||
          s[SLOT.npages(slot)] !== npages ||
          s[SLOT.hva_page(slot)] !== hvaPage
        )
          throw einval("slot", `slot ${m.slot} exists: only its flags may change (delete it first)`);
        if (((s[SLOT.flags(slot)] ^ m.flags) & KVM_MEM_READONLY) !== 0)
          throw einval("flags", "KVM_MEM_READONLY cannot change");
        kvm_set_dirty_logging(kvm, slot, (m.flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0);
        return;
      }
      if (baseGfn + npages >= 2 ** 31)
        throw einval("guestPhysAddr", "beyond the 43-bit guest-physical space this engine models");
      if (hvaPage + npages > kvm.ctl[CTL.hva_next] || !this.hvaMapped(hvaPage, npages))
        throw new KvmError(
          "EFAULT",
          `userspaceAddr: [0x${m.userspaceAddr.toString(16)}, +0x${m.memorySize.toString(16)}) is not mapped`,
        );
      for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
        if (s[SLOT.active(id)] === 0) continue;
        const ob = s[SLOT.base_gfn(id)];
        if (baseGfn < ob + s[SLOT.npages(id)] && ob < baseGfn + npages)
          throw new KvmError(
            "EEXIST",
            `guestPhysAddr: [0x${m.guestPhysAddr.toString(16)}, +0x${m.memorySize.toString(16)}) overlaps slot ${id}`,
          );
      }
      this.checkIdle("slot");
      this.createSlot(slot, baseGfn, npages, hvaPage, m.flags);
    } catch (e) {
      // A flush no vCPU acknowledged: the VM fails (the slot stays as it was).
      if (e instanceof KvmError && e.code === "ETIMEDOUT") this.fail(e);
      throw e;
    } finally {
      kvm.slots_lock.unlock();
    }
  }

  /** Every page of [hvaPage, +npages) is backed (KVM would fault on first access; we refuse early). */
  private hvaMapped(hvaPage: number, npages: number): boolean {
    for (let p = hvaPage; p < hvaPage + npages; p++) if (hva_to_pfn(this.kvm, p) < 0) return false;
    return true;
  }

  private checkIdle(arg: string): void {
    if (this.running)
      throw new KvmError(
        "EBUSY",
        `${arg}: memslots can be created or deleted only while the vCPUs are stopped`,
      );
  }

  private createSlot(slot: number, baseGfn: number, npages: number, hvaPage: number, flags: number): void {
    const kvm = this.kvm;
    const l2 = slot_level_pages(baseGfn, npages, 2);
    const l3 = slot_level_pages(baseGfn, npages, 3);
    const rmapWords = npages + l2 + l3;
    const bitmapWords = Math.ceil(npages / 32);
    const rNext = kvm.ctl[CTL.rmap_pool_next];
    const bNext = kvm.ctl[CTL.bitmap_pool_next];
    const lpBase = kvm.ctl[CTL.lpage_pool_next];
    if (
      rNext + rmapWords > kvm.rmapPool.length ||
      bNext + 2 * bitmapWords > kvm.bitmapPool.length ||
      lpBase + l2 + l3 > kvm.lpagePool.length
    )
      throw new KvmError(
        "ENOMEM",
        `memorySize: ${npages} pages do not fit the memslot metadata (maxSlotPages)`,
      );
    const s = kvm.slots;
    kvm.rmapPool.fill(0, rNext, rNext + rmapWords);
    kvm.bitmapPool.fill(0, bNext, bNext + 2 * bitmapWords);
    // lpage_info write_count: disallow large pages that the slot or its backing cannot hold.
    const lp = kvm.lpagePool;
    lp.fill(0, lpBase, lpBase + l2);
    lp.fill(1, lpBase + l2, lpBase + l2 + l3); // no 1 GiB host pages
    if (baseGfn % 512 !== 0) lp[lpBase] = 1;
    if ((baseGfn + npages) % 512 !== 0) lp[lpBase + l2 - 1] = 1;
    if ((baseGfn ^ hvaPage) % 512 !== 0) lp.fill(1, lpBase, lpBase + l2);
    s[SLOT.base_gfn(slot)] = baseGfn;
    s[SLOT.npages(slot)] = npages;
    s[SLOT.hva_page(slot)] = hvaPage;
    s[SLOT.rmap_base(slot)] = rNext;
    s[SLOT.rmap_l2(slot)] = rNext + npages;
    s[SLOT.rmap_l3(slot)] = rNext + npages + l2;
    s[SLOT.bitmap_base(slot)] = bNext;
    s[SLOT.bitmap_words(slot)] = bitmapWords;
    s[SLOT.lpage_l2(slot)] = lpBase;
    s[SLOT.lpage_l3(slot)] = lpBase + l2;
    s[SLOT.flags(slot)] = 0;
    kvm.ctl[CTL.rmap_pool_next] = rNext + rmapWords;
    kvm.ctl[CTL.bitmap_pool_next] = bNext + 2 * bitmapWords;
    kvm.ctl[CTL.lpage_pool_next] = lpBase + l2 + l3;
    Atomics.store(s, SLOT.active(slot), 1);
    if ((flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0) kvm_set_dirty_logging(kvm, slot, true);
    s[SLOT.flags(slot)] |= flags & KVM_MEM_READONLY;
  }

  private deleteSlot(slot: number): void {
    const kvm = this.kvm;
    const s = kvm.slots;
    kvm.mmu_lock.lock();
    try {
      const hva = s[SLOT.hva_page(slot)];
      kvm.ops.zap_gfn_range(kvm, hva, hva + s[SLOT.npages(slot)]);
      kvm_flush_remote_tlbs(kvm);
      Atomics.store(s, SLOT.active(slot), 0);
      // Its userfaultfd registration goes with it (no vCPU runs: nobody waits on it).
      if (kvm.uffd[UFFD.slot] === slot + 1) kvm.uffd[UFFD.slot] = 0;
    } finally {
      kvm.mmu_lock.unlock();
    }
  }

  /** KVM_CREATE_VCPU. */
  createVcpu(id: number): void {
    const max = this.shared.config.maxVcpus;
    if (!isInt(id) || id < 0 || id >= max) throw einval("id", `must be 0..${max - 1}, got ${String(id)}`);
    if (this.created.has(id)) throw new KvmError("EEXIST", `id: vcpu ${id} already exists`);
    this.created.add(id);
    const n = Math.max(Atomics.load(this.kvm.ctl, CTL.nr_vcpus), id + 1);
    Atomics.store(this.kvm.ctl, CTL.nr_vcpus, n);
  }

  get vcpuIds(): number[] {
    return [...this.created].sort((a, b) => a - b);
  }

  /**
   * Starts one worker per vCPU running guest(id). Resolves once all are running. Every guest
   * spec is built and checked (an object that can be cloned into a worker) before any thread
   * starts; a run whose vCPU fails while starting is stopped and rejects with that error.
   * `error` belongs to one run: a run after stop() starts clean (read `error` before).
   */
  async run(guest: (id: number) => GuestArgs, opts: { tlbBits?: number } = {}): Promise<void> {
    if (this.running) throw new KvmError("EBUSY", "run: the vCPUs are already running");
    if (this.created.size === 0) throw einval("run", "no vCPU was created");
    const tlbBits = (opts ?? {}).tlbBits ?? 12;
    if (!isInt(tlbBits) || tlbBits < 1 || tlbBits > 20) throw einval("tlbBits", "must be 1..20");
    // Every spec is checked (EINVAL naming the field) before any worker starts.
    const specs = validateGuestSpecs(guest, this.vcpuIds);
    for (const [id, spec] of specs) {
      try {
        structuredClone(spec);
      } catch (e) {
        throw einval("guest", `vcpu ${id}: the spec cannot be sent to a worker (${(e as Error).message})`);
      }
    }
    this.running = true;
    this.error = null;
    Atomics.store(this.kvm.ctl, CTL.vm_state, 0);
    try {
      for (const [id, spec] of specs) {
        Atomics.store(this.kvm.vcpu, VCPU.run(id), RunCtl.Run);
        Atomics.store(this.kvm.vcpu, VCPU.state(id), VcpuState.Created);
        const w = new Worker(new URL("./workload/vcpu_worker.js", import.meta.url), {
          execArgv: workerExecArgv(),
          workerData: { shared: this.shared, vcpuId: id, guest: spec, tlbBits },
        });
        this.watch(w, `vcpu ${id}`, id);
        this.workers.set(id, w);
      }
      for (const id of specs.keys()) await this.waitState(id, (s) => s !== (VcpuState.Created as number));
    } catch (e) {
      this.fail(e instanceof KvmError ? e : new KvmError("EIO", `run: ${(e as Error).message}`));
    }
    // (a worker's message may have set it while we awaited)
    const err = this.runError();
    if (err) {
      await this.stop();
      throw err;
    }
  }

  private watch(w: Worker, who: string, vcpuId = -1): void {
    w.on("message", (m: { type: string; message: string; code?: string }) => {
      if (m.type === "error") {
        // A guest module's own error may carry any code; only an errno is passed on.
        const code = ERRNOS.includes(m.code as Errno) ? (m.code as Errno) : "EIO";
        this.fail(new KvmError(code, `${who}: ${m.message}`));
      }
    });
    w.on("error", (e) => this.fail(new KvmError("EIO", `${who}: ${e.message}`)));
    if (vcpuId < 0) return;
    // A worker gone without saying Stopped or Dead (terminated, crashed): no flusher may wait for it.
    w.on("exit", () => {
      const s = Atomics.load(this.kvm.vcpu, VCPU.state(vcpuId));
      if (s === (VcpuState.Stopped as number) || s === (VcpuState.Dead as number)) return;
      Atomics.store(this.kvm.vcpu, VCPU.mode(vcpuId), OUTSIDE_GUEST_MODE);
      Atomics.store(this.kvm.vcpu, VCPU.state(vcpuId), VcpuState.Dead);
      Atomics.notify(this.kvm.vcpu, VCPU.state(vcpuId));
      Atomics.notify(this.kvm.vcpu, VCPU.mode(vcpuId));
      if (!this.stopping) this.fail(new KvmError("EIO", `${who}: the worker exited`));
    });
  }

  private fail(e: Error): void {
    this.error ??= e;
    Atomics.store(this.kvm.ctl, CTL.vm_state, 2);
    for (const id of this.created) {
      Atomics.store(this.kvm.vcpu, VCPU.run(id), RunCtl.Stop);
      kvm_vcpu_kick(this.kvm, id);
    }
  }

  /** Waits until vCPU `id` reaches a state `ok` accepts (or dies); past VCPU_WAIT_MS the VM fails. */
  private async waitState(id: number, ok: (s: number) => boolean, what = "answer"): Promise<void> {
    const v = this.kvm.vcpu;
    const i = VCPU.state(id);
    const deadline = Date.now() + VCPU_WAIT_MS;
    for (;;) {
      const s = Atomics.load(v, i);
      if (ok(s) || s === (VcpuState.Dead as number) || s === (VcpuState.Stopped as number)) return;
      // A worker that died before reporting any state must not leave us waiting.
      if (this.error) return;
      if (Date.now() > deadline) {
        this.fail(new KvmError("ETIMEDOUT", `vcpu ${id}: did not ${what} in ${VCPU_WAIT_MS} ms`));
        return;
      }
      await waitAsyncAlive(v, i, s, 50);
    }
  }

  /**
   * Parks every running vCPU outside guest mode. Rejects with EINVAL when no vCPU runs (before
   * run(), after stop()); a vCPU created while the others ran has no worker and is not waited for.
   */
  async pause(): Promise<void> {
    if (!this.running || this.workers.size === 0) throw einval("pause", "the vCPUs are not running");
    this.throwIfFailed();
    for (const id of this.workers.keys()) {
      Atomics.store(this.kvm.vcpu, VCPU.run(id), RunCtl.Pause);
      kvm_vcpu_kick(this.kvm, id);
    }
    for (const id of this.workers.keys())
      await this.waitState(id, (s) => s === (VcpuState.Paused as number), "park");
    this.throwIfFailed();
  }

  /**
   * The TLB part of the MMU audit: every parked vCPU audits its own software TLB
   * (Vcpu.tlbAudit). Returns the stale writable entries per vCPU id. The vCPUs must be paused
   * and nothing else may change the MMU meanwhile (host thread paused, no ioctl in flight).
   */
  async auditTlbs(): Promise<Map<number, number>> {
    const v = this.kvm.vcpu;
    for (const id of this.workers.keys())
      if (Atomics.load(v, VCPU.state(id)) !== (VcpuState.Paused as number))
        throw new KvmError("EBUSY", "auditTlbs: the vCPUs must be paused");
    const out = new Map<number, number>();
    for (const id of this.workers.keys()) {
      const run = VCPU.run(id);
      Atomics.store(v, run, RunCtl.Audit);
      Atomics.notify(v, run);
      await this.waitState(id, (s) => s === (VcpuState.Audited as number), "audit its TLB");
      out.set(id, this.kvm.vcpuStats[ST.tlb_audit(id)]);
      Atomics.store(v, run, RunCtl.Pause);
      Atomics.notify(v, run);
      await this.waitState(id, (s) => s === (VcpuState.Paused as number));
    }
    this.throwIfFailed();
    return out;
  }

  resume(): void {
    for (const id of this.workers.keys()) {
      const i = VCPU.run(id);
      Atomics.store(this.kvm.vcpu, i, RunCtl.Run);
      Atomics.notify(this.kvm.vcpu, i);
    }
  }

  private runError(): Error | null {
    return this.error;
  }

  throwIfFailed(): void {
    if (this.error) throw this.error;
  }

  /**
   * Stops every vCPU at its next safe point (never inside a fault or holding mmu_lock), then
   * joins the workers. A worker that does not stop within the grace time is terminated.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    try {
      for (const id of this.created) {
        const i = VCPU.run(id);
        Atomics.store(this.kvm.vcpu, i, RunCtl.Stop);
        kvm_vcpu_kick(this.kvm, id);
        Atomics.notify(this.kvm.vcpu, i);
      }
      await this.stopHostThread();
      const stopped = (id: number): boolean => {
        const s = Atomics.load(this.kvm.vcpu, VCPU.state(id));
        return s === (VcpuState.Stopped as number) || s === (VcpuState.Dead as number);
      };
      const deadline = Date.now() + VCPU_WAIT_MS;
      for (const id of this.workers.keys()) {
        const i = VCPU.state(id);
        while (!stopped(id) && Date.now() < deadline) {
          await waitAsyncAlive(this.kvm.vcpu, i, Atomics.load(this.kvm.vcpu, i), 50);
        }
        if (!stopped(id))
          this.fail(new KvmError("ETIMEDOUT", `vcpu ${id}: did not stop in ${VCPU_WAIT_MS} ms`));
      }
      await Promise.all(
        [...this.workers.values()].map((w) =>
          w.terminate().then(
            () => undefined,
            () => undefined,
          ),
        ),
      );
      this.workers.clear();
      // mmu_free_memory_caches: no worker is left to use them. A lock still held belongs to a
      // worker that was terminated inside it; the caches then stay where they are.
      if (!this.kvm.mmu_lock.isLocked()) for (const id of this.created) mmu_free_memory_caches(this.kvm, id);
      this.running = false;
    } finally {
      this.stopping = false;
    }
  }

  /** Starts the host thread that migrates and invalidates guest backing (MMU-notifier churn). */
  async startHostThread(o: HostThreadOptions): Promise<void> {
    for (const [k, v] of Object.entries({ migrateRate: o.migrateRate, invalidateRate: o.invalidateRate }))
      if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v))
        throw einval(k, `must be a rate >= 0, got ${String(v)}`);
    if (this.hostWorker) throw new KvmError("EBUSY", "startHostThread: already running");
    const ranges: [number, number][] = [];
    const s = this.kvm.slots;
    for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
      if (s[SLOT.active(id)]) ranges.push([s[SLOT.hva_page(id)], s[SLOT.npages(id)]]);
    }
    if (ranges.length === 0) throw einval("startHostThread", "no memslot to act on");
    const ctl = new SharedArrayBuffer(HOST.WORDS * 4);
    this.hostCtl = new Int32Array(ctl);
    const data: HostWorkerData = {
      shared: this.shared,
      ctl,
      ranges,
      migrateRate: o.migrateRate,
      invalidateRate: o.invalidateRate,
      invalidatePages: o.invalidatePages ?? 512,
      seed: o.seed ?? 1,
    };
    this.hostWorker = new Worker(new URL("./workload/host_worker.js", import.meta.url), {
      workerData: data,
      execArgv: workerExecArgv(),
    });
    this.watch(this.hostWorker, "host thread");
    while (Atomics.load(this.hostCtl, HOST.state) === 0 && !this.error)
      await new Promise((r) => setTimeout(r, 1));
  }

  /**
   * Automatic NUMA balancing as Linux 3.8-3.12 ran it: every `scanPeriodMs` one vCPU, on its way
   * out of guest mode, unmaps the next `scanBytes` of guest memory through the MMU notifier, so
   * the guest's next touch of each page is a fault (src/mem/numa_balancing.ts). Defaults: that
   * era's 100 ms and 256 MiB. `scanPeriodMs: 0` turns it off. Any time, running or not.
   */
  setNumaBalancing(o: { scanPeriodMs?: number; scanBytes?: number } = {}): void {
    if (typeof o !== "object" || o === null) throw einval("options", `must be an object, got ${String(o)}`);
    const { periodMs, pages } = numa_balancing_settings(o.scanPeriodMs, o.scanBytes);
    const c = this.kvm.ctl;
    Atomics.store(c, CTL.numa_scan_pages, pages);
    Atomics.store(c, CTL.numa_scan_period_ms, periodMs);
  }

  /**
   * Pins vCPU `id`'s worker thread to host CPU `cpu` (KVM's dirty_log_perf_test -c). Linux with
   * util-linux's taskset only: ENOSYS elsewhere. ENOENT: no such vCPU or its thread not started.
   */
  pinVcpu(id: number, cpu: number): void {
    if (!isInt(id) || id < 0 || id >= KVM_MAX_VCPUS)
      throw einval("id", `must be 0..${KVM_MAX_VCPUS - 1}, got ${String(id)}`);
    if (!isInt(cpu) || cpu < 0 || cpu >= os.cpus().length)
      throw einval("cpu", `must be 0..${os.cpus().length - 1}, got ${String(cpu)}`);
    const tid = this.vcpuTid(id);
    if (tid === 0) throw new KvmError("ENOENT", `id: vCPU ${id} has no running thread`);
    sched_setaffinity(tid, cpu);
  }

  /** The kernel thread id of vCPU `id`'s worker (gettid), 0 before its thread has started. */
  vcpuTid(id: number): number {
    return this.vcpuIds.includes(id) ? Atomics.load(this.kvm.vcpu, VCPU.tid(id)) : 0;
  }

  /** NUMA balancing's scans so far and the pages they unmapped. */
  numaBalancingStats(): { scans: number; pagesScanned: number } {
    const c = this.kvm.ctl;
    return {
      scans: Atomics.load(c, CTL.numa_scans) >>> 0,
      pagesScanned: Atomics.load(c, CTL.numa_pages_scanned) >>> 0,
    };
  }

  hostThreadCounters(): { migrations: number; invalidations: number } {
    const c = this.hostCtl;
    return { migrations: c ? Atomics.load(c, 2) : 0, invalidations: c ? Atomics.load(c, 3) : 0 };
  }

  /** The host thread's mmu_lock wait and hold so far (ns; µs resolution): zero without one. */
  hostThreadLockTimes(): { lockWaitNs: number; lockHoldNs: number } {
    const c = this.hostCtl;
    return {
      lockWaitNs: c ? Atomics.load(c, HOST.lockWaitUs) * 1e3 : 0,
      lockHoldNs: c ? Atomics.load(c, HOST.lockHoldUs) * 1e3 : 0,
    };
  }

  async pauseHostThread(): Promise<void> {
    const c = this.hostCtl;
    if (!c) return;
    Atomics.store(c, HOST.run, 1);
    const deadline = Date.now() + VCPU_WAIT_MS;
    while (Atomics.load(c, HOST.state) === 1) {
      if (Date.now() > deadline) {
        this.fail(new KvmError("ETIMEDOUT", `host thread: did not pause in ${VCPU_WAIT_MS} ms`));
        throw this.error!;
      }
      await waitAsyncAlive(c, HOST.state, 1, 50);
    }
  }

  resumeHostThread(): void {
    const c = this.hostCtl;
    if (!c) return;
    Atomics.store(c, HOST.run, 0);
    Atomics.notify(c, HOST.run);
  }

  async stopHostThread(): Promise<void> {
    const w = this.hostWorker;
    const c = this.hostCtl;
    if (!w || !c) return;
    Atomics.store(c, HOST.run, 2);
    Atomics.notify(c, HOST.run);
    let timer: NodeJS.Timeout | undefined;
    const exited = await new Promise<boolean>((res) => {
      w.once("exit", () => res(true));
      timer = setTimeout(() => res(false), VCPU_WAIT_MS);
    });
    clearTimeout(timer);
    if (!exited) {
      this.fail(new KvmError("ETIMEDOUT", `host thread: did not stop in ${VCPU_WAIT_MS} ms`));
      await w.terminate();
    }
    this.hostWorker = null;
  }

  /** Refuses a slot id out of range (EINVAL), whether or not the slot exists. */
  private checkSlotId(slot: number): void {
    if (!isInt(slot) || slot < 0 || slot >= KVM_USER_MEM_SLOTS)
      throw einval("slot", `must be 0..${KVM_USER_MEM_SLOTS - 1}, got ${String(slot)}`);
  }

  /** Refuses a slot id that is out of range or not created. */
  private checkSlot(slot: number): void {
    this.checkSlotId(slot);
    if (this.kvm.slots[SLOT.active(slot)] === 0)
      throw new KvmError("ENOENT", `slot: slot ${slot} does not exist`);
  }

  /** KVM_GET_DIRTY_LOG: the slot's bitmap (bit n = page base_gfn + n), harvested and re-protected. */
  getDirtyLog(slot: number, out?: Uint32Array): Uint32Array {
    const kvm = this.kvm;
    kvm.slots_lock.lock();
    try {
      this.checkBitmapMode("getDirtyLog");
      this.checkSlot(slot);
      if ((kvm.slots[SLOT.flags(slot)] & KVM_MEM_LOG_DIRTY_PAGES) === 0)
        throw new KvmError("ENOENT", `slot: slot ${slot} is not dirty-logged`);
      const words = kvm.slots[SLOT.bitmap_words(slot)];
      // Checked before the harvest: a bad `out` must not cost the dirty bits it would carry.
      if (out !== undefined && !(out instanceof Uint32Array))
        throw einval("out", `must be a Uint32Array, got ${describe(out)}`);
      if (out !== undefined && out.length < words)
        throw einval("out", `needs ${words} words, got ${out.length}`);
      const bitmap = out ?? new Uint32Array(words);
      const call = newDirtyLogTimes();
      try {
        kvm_get_dirty_log(kvm, slot, bitmap, call);
      } catch (e) {
        if (e instanceof KvmError && e.code === "ETIMEDOUT") this.fail(e);
        throw e;
      }
      addDirtyLogTimes(this.times, call);
      this.lastTimes = call;
      return bitmap;
    } finally {
      kvm.slots_lock.unlock();
    }
  }

  /** ENXIO in ring mode without the bitmap (kvm_use_dirty_bitmap). */
  private checkBitmapMode(what: string): void {
    const ctl = this.kvm.ctl;
    if (ctl[CTL.dirty_ring_size] !== 0 && ctl[CTL.dirty_ring_with_bitmap] === 0)
      throw new KvmError("ENXIO", `${what}: the VM logs to dirty rings and has no dirty bitmap`);
  }

  /**
   * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: flags 0 (off), MANUAL_PROTECT_ENABLE (1) or
   * MANUAL_PROTECT_ENABLE | INITIALLY_SET (3). As in KVM it may change at any time; it is
   * taken under slots_lock, so no GET or CLEAR sees half of it. GET and CLEAR read it per call;
   * INITIALLY_SET applies to bitmaps created afterwards (logging turned on later).
   */
  enableManualDirtyLogProtect(flags: number): void {
    const all = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET;
    if (!isInt(flags) || (flags & ~all) !== 0)
      throw einval(
        "flags",
        `unknown flags ${String(flags)} (known: 1 MANUAL_PROTECT_ENABLE, 2 INITIALLY_SET)`,
      );
    if (flags === KVM_DIRTY_LOG_INITIALLY_SET)
      throw einval("flags", "INITIALLY_SET requires MANUAL_PROTECT_ENABLE");
    const kvm = this.kvm;
    kvm.slots_lock.lock();
    try {
      Atomics.store(kvm.ctl, CTL.manual_dirty_log, flags);
    } finally {
      kvm.slots_lock.unlock();
    }
  }

  /**
   * KVM_CLEAR_DIRTY_LOG: clears the pages [firstPage, firstPage + numPages) of `slot` whose bits
   * are set in `bitmap` (bit n = page firstPage + n) and write-protects those that were dirty.
   * Checks, in KVM's order: ENXIO (ring mode without a bitmap), EINVAL (slot id), EINVAL
   * (firstPage not a multiple of 64), ENOENT (no slot, or not dirty-logged), EINVAL (range:
   * past the slot, or numPages not a multiple of 64 unless the range ends the slot); then the
   * bitmap (EINVAL if not a Uint32Array, EFAULT if shorter than numPages bits). May run while
   * the vCPUs run. Returns the pages cleared.
   */
  clearDirtyLog(slot: number, firstPage: number, numPages: number, bitmap: Uint32Array): number {
    const kvm = this.kvm;
    kvm.slots_lock.lock();
    try {
      this.checkBitmapMode("clearDirtyLog");
      // KVM's order: the id, then first_page's alignment, then whether the slot exists.
      this.checkSlotId(slot);
      if (!isInt(firstPage) || firstPage < 0 || firstPage % 64 !== 0)
        throw einval("firstPage", `must be a multiple of 64, got ${String(firstPage)}`);
      this.checkSlot(slot);
      if ((kvm.slots[SLOT.flags(slot)] & KVM_MEM_LOG_DIRTY_PAGES) === 0)
        throw new KvmError("ENOENT", `slot: slot ${slot} is not dirty-logged (no bitmap)`);
      const npages = kvm.slots[SLOT.npages(slot)];
      if (firstPage > npages)
        throw einval("firstPage", `${firstPage} is past the end of slot ${slot} (${npages} pages)`);
      if (!isInt(numPages) || numPages < 0 || numPages > npages - firstPage)
        throw einval(
          "numPages",
          `must be 0..${npages - firstPage} from page ${firstPage}, got ${String(numPages)}`,
        );
      if (numPages % 64 !== 0 && numPages < npages - firstPage)
        throw einval("numPages", `must be a multiple of 64 unless the range ends the slot, got ${numPages}`);
      if (!(bitmap instanceof Uint32Array))
        throw einval("bitmap", `must be a Uint32Array, got ${describe(bitmap)}`);
      if (bitmap.length < Math.ceil(numPages / 32))
        throw new KvmError("EFAULT", `bitmap: needs ${Math.ceil(numPages / 32)} words, got ${bitmap.length}`);
      const call = newDirtyLogTimes();
      let n: number;
      try {
        n = kvm_clear_dirty_log(kvm, wp_design(kvm), slot, firstPage, numPages, bitmap, call);
      } catch (e) {
        if (e instanceof KvmError && e.code === "ETIMEDOUT") this.fail(e);
        throw e;
      }
      addDirtyLogTimes(this.clearTimes, call);
      this.lastClear = call;
      return n;
    } finally {
      kvm.slots_lock.unlock();
    }
  }

  /**
   * KVM_CAP_DIRTY_LOG_RING (and _WITH_BITMAP): one ring of `entries` entries per vCPU. Once per
   * VM, before any vCPU exists; `entries` a power of two, at least one page of 16-byte entries
   * (256), at most 65536 (E2BIG above; EINVAL for the rest). withBitmap: the bitmap stays, for
   * writes made without a running vCPU; only before any memslot exists (EINVAL).
   */
  enableDirtyRing(entries: number, opts: { withBitmap?: boolean } = {}): void {
    const kvm = this.kvm;
    if (!isInt(entries) || entries <= 0 || (entries & (entries - 1)) !== 0)
      throw einval("entries", `must be a power of two, got ${String(entries)}`);
    if (entries < KVM_DIRTY_RING_MIN_ENTRIES)
      throw einval(
        "entries",
        `must be at least ${KVM_DIRTY_RING_MIN_ENTRIES} (one page of entries), got ${entries}`,
      );
    if (entries > KVM_DIRTY_RING_MAX_ENTRIES)
      throw new KvmError("E2BIG", `entries: at most ${KVM_DIRTY_RING_MAX_ENTRIES}, got ${entries}`);
    if (kvm.ctl[CTL.dirty_ring_size] !== 0) throw einval("entries", "the dirty ring is already enabled");
    if (this.created.size !== 0)
      throw einval("entries", "the dirty ring must be enabled before any vCPU exists");
    const withBitmap = (opts ?? {}).withBitmap ?? false;
    if (typeof withBitmap !== "boolean")
      throw einval("withBitmap", `must be a boolean, got ${String(withBitmap)}`);
    kvm.slots_lock.lock();
    try {
      if (withBitmap)
        for (let id = 0; id < KVM_USER_MEM_SLOTS; id++)
          if (kvm.slots[SLOT.active(id)] !== 0)
            throw einval("withBitmap", "the ring's bitmap must be enabled before any memslot exists");
      let ring: SharedArrayBuffer;
      try {
        ring = new SharedArrayBuffer(this.shared.config.maxVcpus * ring_words(entries) * 4);
      } catch (e) {
        throw new KvmError("ENOMEM", `entries: cannot allocate the rings (${(e as Error).message})`);
      }
      // Before any vCPU exists: every worker attaches to this buffer.
      this.shared.dirtyRing = ring;
      kvm.dirtyRing = new Int32Array(ring);
      kvm.ctl[CTL.dirty_ring_with_bitmap] = withBitmap ? 1 : 0;
      Atomics.store(kvm.ctl, CTL.dirty_ring_size, entries);
    } finally {
      kvm.slots_lock.unlock();
    }
  }

  private checkRingVcpu(vcpuId: number): void {
    if (this.kvm.ctl[CTL.dirty_ring_size] === 0) throw einval("vcpuId", "the dirty ring is not enabled");
    if (!isInt(vcpuId) || !this.created.has(vcpuId)) throw einval("vcpuId", `no vCPU ${String(vcpuId)}`);
  }

  /**
   * Userspace's harvest of vCPU vcpuId's ring: the DIRTY entries from where the last harvest
   * stopped, in order (at most `max`), each marked RESET. The pages are not protected again
   * until resetDirtyRings(), which must come before their contents are read. May run while
   * the vCPUs run.
   */
  harvestDirtyRing(vcpuId: number, max = Infinity): DirtyGfn[] {
    this.checkRingVcpu(vcpuId);
    if (!(max === Infinity || (isInt(max) && max >= 0)))
      throw einval("max", `must be an integer >= 0, got ${String(max)}`);
    const out: DirtyGfn[] = [];
    this.kvm.slots_lock.lock();
    try {
      // With PML the vCPUs' buffers reach the rings only at an exit: kick them first, as QEMU's
      // kvm_dirty_ring_flush does (kvm_cpu_synchronize_kick_all) before it reaps.
      kvm_arch_sync_dirty_log(this.kvm);
      kvm_dirty_ring_harvest(this.kvm, vcpuId, max, (slot, offset) => out.push({ slot, offset }));
    } finally {
      this.kvm.slots_lock.unlock();
    }
    return out;
  }

  /**
   * KVM_RESET_DIRTY_RINGS: frees the harvested entries of every ring, write-protects their pages
   * again through the VM's design, flushes, and lets vCPUs blocked in a ring-full exit go on.
   * Returns the entries reset. EINVAL without a ring. May run while the vCPUs run.
   */
  resetDirtyRings(): number {
    const kvm = this.kvm;
    if (kvm.ctl[CTL.dirty_ring_size] === 0) throw einval("resetDirtyRings", "the dirty ring is not enabled");
    kvm.slots_lock.lock();
    try {
      const call = newDirtyLogTimes();
      let n: number;
      try {
        n = kvm_reset_dirty_rings(kvm, wp_design(kvm), call);
      } catch (e) {
        if (e instanceof KvmError && e.code === "ETIMEDOUT") this.fail(e);
        throw e;
      }
      addDirtyLogTimes(this.resetTimes, call);
      this.lastReset = call;
      return n;
    } finally {
      kvm.slots_lock.unlock();
    }
  }

  /**
   * Ring-full exits (KVM_EXIT_DIRTY_RING_FULL) so far: of vCPU vcpuId, or of all vCPUs; plus the
   * host writes that ring-only mode could not log (no running vCPU, no bitmap).
   */
  dirtyRingStats(vcpuId?: number): { fullExits: number; dropped: number } {
    const kvm = this.kvm;
    let fullExits: number;
    if (vcpuId === undefined) fullExits = Atomics.load(kvm.ctl, CTL.dirty_ring_full_exits);
    else {
      this.checkRingVcpu(vcpuId);
      fullExits = Atomics.load(kvm.dirtyRing, ring_base(kvm, vcpuId) + RING_HDR.full_exits);
    }
    return { fullExits, dropped: Atomics.load(kvm.ctl, CTL.dirty_ring_dropped) };
  }

  /**
   * Resolves with the VM's ring-full exit count once it exceeds `since` (default: the count
   * now), or with the unchanged count after timeoutMs (default 10 s). The harvester's event:
   * harvest, reset, and the blocked vCPU resumes. Rejects with the VM's error if it failed.
   */
  async waitDirtyRingFull(opts: { since?: number; timeoutMs?: number } = {}): Promise<number> {
    const ctl = this.kvm.ctl;
    const since = opts.since ?? Atomics.load(ctl, CTL.dirty_ring_full_exits);
    const timeoutMs = opts.timeoutMs ?? 10_000;
    if (!isInt(since)) throw einval("since", `must be an integer, got ${String(since)}`);
    if (typeof timeoutMs !== "number" || !(timeoutMs >= 0))
      throw einval("timeoutMs", `must be a number >= 0, got ${String(timeoutMs)}`);
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      this.throwIfFailed();
      const n = Atomics.load(ctl, CTL.dirty_ring_full_exits);
      const left = deadline - performance.now();
      if (n > since || left <= 0) return n;
      await waitAsyncAlive(ctl, CTL.dirty_ring_full_exits, n, Math.min(left, 50));
    }
  }

  /** Times accumulated by clearDirtyLog (lock wait, protect, flush; dirtyPages = pages cleared). */
  clearDirtyLogTimes(): DirtyLogTimes {
    return { ...this.clearTimes };
  }

  lastClearDirtyLogTimes(): DirtyLogTimes {
    return { ...this.lastClear };
  }

  /** Times accumulated by resetDirtyRings (dirtyPages = entries reset), and the last call's. */
  resetDirtyRingsTimes(): DirtyLogTimes {
    return { ...this.resetTimes };
  }

  lastResetDirtyRingsTimes(): DirtyLogTimes {
    return { ...this.lastReset };
  }

  /** Times accumulated by getDirtyLog (lock wait, protect, flush) and dirty pages reported. */
  dirtyLogTimes(): DirtyLogTimes {
    return { ...this.times };
  }

  /** The same for the last getDirtyLog call alone. */
  lastDirtyLogTimes(): DirtyLogTimes {
    return { ...this.lastTimes };
  }

  /**
   * userfaultfd (UFFDIO_REGISTER, MISSING mode) on memslot `slot`: from now on a page marked
   * missing (userfaultDiscard) blocks the vCPU whose fault reaches it until userfaultCopy places
   * it. One slot per VM; only while no vCPU runs (EBUSY), so every worker sees the state.
   */
  userfaultRegister(slot: number): void {
    const kvm = this.kvm;
    if (!isInt(slot) || slot < 0 || slot >= KVM_USER_MEM_SLOTS || kvm.slots[SLOT.active(slot)] === 0)
      throw einval("slot", `no memslot ${String(slot)}`);
    if (this.running) throw new KvmError("EBUSY", "userfaultRegister: the vCPUs are running");
    if (kvm.uffd[UFFD.slot] !== 0) throw new KvmError("EEXIST", "slot: a memslot is already registered");
    const npages = kvm.slots[SLOT.npages(slot)];
    let buf: SharedArrayBuffer;
    try {
      buf = new SharedArrayBuffer(uffd_words(npages) * 4);
    } catch (e) {
      throw new KvmError("ENOMEM", `slot: cannot allocate the missing bitmap (${(e as Error).message})`);
    }
    // Before the workers start: each one attaches to this buffer.
    this.shared.uffd = buf;
    kvm.uffd = new Int32Array(buf);
    kvm.uffd[UFFD.npages] = npages;
    Atomics.store(kvm.uffd, UFFD.slot, slot + 1);
  }

  private uffdSlot(what: string): number {
    const slot = this.kvm.uffd[UFFD.slot] - 1;
    if (slot < 0) throw einval(what, "no memslot is registered (userfaultRegister)");
    return slot;
  }

  /**
   * Marks pages of the registered slot missing (MADV_DONTNEED on a registered range): bit n of
   * `bitmap` set = page n. Their mappings are dropped and their frames zeroed. Only while no
   * vCPU runs (EBUSY). Returns the pages now missing.
   */
  userfaultDiscard(bitmap: Uint32Array): number {
    const kvm = this.kvm;
    const slot = this.uffdSlot("userfaultDiscard");
    const npages = kvm.uffd[UFFD.npages];
    if (!(bitmap instanceof Uint32Array) || bitmap.length < Math.ceil(npages / 32))
      throw einval("bitmap", `must be a Uint32Array of at least ${Math.ceil(npages / 32)} words`);
    if (this.running) throw new KvmError("EBUSY", "userfaultDiscard: the vCPUs are running");
    const u = kvm.uffd;
    const hva = kvm.slots[SLOT.hva_page(slot)];
    kvm.mmu_lock.lock();
    try {
      kvm.ops.zap_gfn_range(kvm, hva, hva + npages);
      kvm_flush_remote_tlbs(kvm);
    } finally {
      kvm.mmu_lock.unlock();
    }
    const zero = new Int32Array(PAGE_SIZE / 4);
    const base = kvm.slots[SLOT.base_gfn(slot)];
    for (let p = 0; p < npages; p++) {
      if ((bitmap[p >>> 5] & (1 << (p & 31))) === 0 || uffd_missing(kvm, slot, base + p)) continue;
      // Written first (the frame is unmapped), then marked: the zeroes are what a reader would see.
      kvm.mm_lock.lock();
      try {
        const pfn = hva_to_pfn(kvm, hva + p);
        if (pfn >= 0) kvm.mem.set(zero, pfn * (PAGE_SIZE / 4));
      } finally {
        kvm.mm_lock.unlock();
      }
      Atomics.or(u, UFFD_BITMAP.bits(p >>> 5), 1 << (p & 31));
      Atomics.add(u, UFFD.missing, 1);
    }
    return Atomics.load(u, UFFD.missing);
  }

  /**
   * UFFDIO_COPY: places the page at gpa (page-aligned, in the registered slot) with `bytes`
   * (PAGE_SIZE of them; null: zeroes) and wakes the vCPUs waiting for it. False (nothing written)
   * when the page was not missing, as UFFDIO_COPY's EEXIST. Owner thread; vCPUs may run.
   */
  userfaultCopy(gpa: number, bytes: Uint8Array | null): boolean {
    const slot = this.uffdSlot("userfaultCopy");
    const s = this.kvm.slots;
    const base = s[SLOT.base_gfn(slot)];
    if (
      !isInt(gpa) ||
      gpa % PAGE_SIZE !== 0 ||
      gpa / PAGE_SIZE < base ||
      gpa / PAGE_SIZE >= base + s[SLOT.npages(slot)]
    )
      throw einval("gpa", `must be a page-aligned address in the registered slot, got ${String(gpa)}`);
    if (bytes !== null && (!(bytes instanceof Uint8Array) || bytes.length !== PAGE_SIZE))
      throw einval("bytes", `must be ${PAGE_SIZE} bytes or null`);
    let words: Int32Array | null = null;
    if (bytes) {
      words = new Int32Array(PAGE_SIZE / 4);
      new Uint8Array(words.buffer).set(bytes);
    }
    return uffd_copy(this.kvm, slot, gpa / PAGE_SIZE, words);
  }

  /** True when the page at gpa is registered and missing. */
  userfaultMissing(gpa: number): boolean {
    if (!isInt(gpa) || gpa < 0) throw einval("gpa", `must be a non-negative integer, got ${String(gpa)}`);
    const slot = this.kvm.uffd[UFFD.slot] - 1;
    const s = this.kvm.slots;
    if (slot < 0) return false;
    const gfn = Math.floor(gpa / PAGE_SIZE);
    const base = s[SLOT.base_gfn(slot)];
    return gfn >= base && gfn < base + s[SLOT.npages(slot)] && uffd_missing(this.kvm, slot, gfn);
  }

  /** The gpas the vCPUs are blocked on now (read(uffd)), at most one per vCPU, and the event count. */
  userfaultPending(): { seq: number; gpas: number[] } {
    const u = this.kvm.uffd;
    if (u[UFFD.slot] === 0) return { seq: 0, gpas: [] };
    const seq = Atomics.load(u, UFFD.req_seq);
    const gpas: number[] = [];
    for (const id of this.created) {
      const g = Atomics.load(u, UFFD_VCPU.fault_gfn(id));
      if (g !== 0 && !gpas.includes((g - 1) * PAGE_SIZE)) gpas.push((g - 1) * PAGE_SIZE);
    }
    return { seq, gpas };
  }

  /** Resolves with the fault-event count once it differs from `seq`, or after timeoutMs. */
  async waitUserfault(seq: number, timeoutMs: number): Promise<number> {
    const u = this.kvm.uffd;
    if (u[UFFD.slot] === 0) throw einval("waitUserfault", "no memslot is registered (userfaultRegister)");
    await waitAsyncAlive(u, UFFD.req_seq, seq, timeoutMs);
    return Atomics.load(u, UFFD.req_seq);
  }

  /**
   * The page source is gone: vCPUs blocked on (or later faulting on) a missing page fail with
   * EFAULT instead of waiting forever (SIGBUS once the uffd is closed under them).
   */
  userfaultClose(): void {
    const u = this.kvm.uffd;
    if (u[UFFD.slot] === 0) return;
    Atomics.store(u, UFFD.closed, 1);
    for (let w = 0; w < Math.ceil(u[UFFD.npages] / 32); w++) Atomics.notify(u, UFFD_BITMAP.bits(w));
  }

  /** Pages missing now, and per vCPU id the time blocked on them (postcopy-vcpu-blocktime). */
  userfaultStats(): {
    missing: number;
    vcpus: { id: number; blockedMs: number; maxBlockedMs: number; faults: number }[];
  } {
    const u = this.kvm.uffd;
    const registered = u[UFFD.slot] !== 0;
    return {
      missing: registered ? Atomics.load(u, UFFD.missing) : 0,
      vcpus: this.vcpuIds.map((id) => ({
        id,
        blockedMs: registered ? Atomics.load(u, UFFD_VCPU.blocked_us(id)) / 1000 : 0,
        maxBlockedMs: registered ? Atomics.load(u, UFFD_VCPU.blocked_max_us(id)) / 1000 : 0,
        faults: registered ? Atomics.load(u, UFFD_VCPU.faults(id)) : 0,
      })),
    };
  }

  /** Host-side read of the 8 bytes at guest-physical gpa of a slot (through its hva). */
  readGuestU64(gpa: number): [number, number] {
    const gfn = Math.floor(gpa / PAGE_SIZE);
    const s = this.kvm.slots;
    for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
      if (!s[SLOT.active(id)]) continue;
      const base = s[SLOT.base_gfn(id)];
      if (gfn >= base && gfn < base + s[SLOT.npages(id)]) {
        if (uffd_missing(this.kvm, id, gfn))
          throw new KvmError(
            "EFAULT",
            `gpa: 0x${gpa.toString(16)} is missing (post-copy: the page has not arrived yet)`,
          );
        return host_read_u64(this.kvm, (s[SLOT.hva_page(id)] + gfn - base) * PAGE_SIZE + (gpa % PAGE_SIZE));
      }
    }
    throw new KvmError("EFAULT", `gpa: 0x${gpa.toString(16)} is in no memslot`);
  }

  /** Per-vCPU statistics as the workers last published them. */
  vcpuStats(id: number): Float64Array {
    return this.kvm.vcpuStats.subarray(ST.row(id), ST.row(id + 1));
  }

  metadataBytes(): number {
    return metadataBytes(this.shared);
  }

  /**
   * Host-side copy of the whole guest page at guest-physical gpa (page-aligned) into `out`
   * (PAGE_SIZE / 4 words), through its hva and under the host mm lock, as readGuestU64: the
   * copy never races a page migration. Used by the migration-style oracle and the e2e tests.
   */
  readGuestPage(gpa: number, out: Int32Array = new Int32Array(PAGE_SIZE / 4)): Int32Array {
    if (!isInt(gpa) || gpa < 0 || gpa % PAGE_SIZE !== 0)
      throw einval("gpa", `must be a page-aligned address, got ${String(gpa)}`);
    if (out.length < PAGE_SIZE / 4) throw einval("out", `needs ${PAGE_SIZE / 4} words, got ${out.length}`);
    const gfn = gpa / PAGE_SIZE;
    const s = this.kvm.slots;
    for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
      if (!s[SLOT.active(id)]) continue;
      const base = s[SLOT.base_gfn(id)];
      if (gfn < base || gfn >= base + s[SLOT.npages(id)]) continue;
      const kvm = this.kvm;
      if (uffd_missing(kvm, id, gfn))
        throw new KvmError(
          "EFAULT",
          `gpa: 0x${gpa.toString(16)} is missing (post-copy: the page has not arrived yet)`,
        );
      kvm.mm_lock.lock();
      try {
        const pfn = hva_to_pfn(kvm, s[SLOT.hva_page(id)] + gfn - base);
        out.set(kvm.mem.subarray(pfn * (PAGE_SIZE / 4), (pfn + 1) * (PAGE_SIZE / 4)));
      } finally {
        kvm.mm_lock.unlock();
      }
      return out;
    }
    throw new KvmError("EFAULT", `gpa: 0x${gpa.toString(16)} is in no memslot`);
  }

  /**
   * Resolves once every vCPU has completed `passes` passes since it was created (the guest counts
   * them with ctx.passDone); `passes` may instead give one target per vCPU, in vcpuIds order.
   * `service`, if given, runs on every poll (e.g. to harvest dirty rings, so that vCPUs throttled
   * on a full ring can progress). Rejects with the VM's error if a worker fails, ETIMEDOUT after
   * timeoutMs (default 60 s; Infinity waits as long as the vCPUs run), EINVAL on bad arguments or
   * when the vCPUs are not running.
   */
  async waitPasses(
    passes: number | readonly number[],
    opts: { timeoutMs?: number; service?: () => void } = {},
  ): Promise<void> {
    const ids = this.vcpuIds;
    const targets = typeof passes === "number" ? ids.map(() => passes) : passes;
    if (!Array.isArray(targets) || targets.length !== ids.length)
      throw einval(
        "passes",
        `must be an integer >= 0 or an array of ${ids.length} of them, got ${String(passes)}`,
      );
    for (const t of targets)
      if (!isInt(t) || t < 0) throw einval("passes", `must be an integer >= 0, got ${String(t)}`);
    const timeoutMs = opts.timeoutMs ?? 60_000;
    if (typeof timeoutMs !== "number" || !(timeoutMs > 0))
      throw einval("timeoutMs", `must be a positive number, got ${String(timeoutMs)}`);
    const service = opts.service;
    if (service !== undefined && typeof service !== "function")
      throw einval("service", `must be a function, got ${String(service)}`);
    const v = this.kvm.vcpu;
    const deadline = performance.now() + timeoutMs;
    for (let k = 0; k < ids.length; k++) {
      const i = VCPU.passes(ids[k]);
      for (;;) {
        this.throwIfFailed();
        service?.();
        const done = Atomics.load(v, i);
        if (done >= targets[k]) break;
        if (!this.running) throw einval("waitPasses", "the vCPUs are not running");
        const left = deadline - performance.now();
        if (left <= 0)
          throw new KvmError(
            "ETIMEDOUT",
            `waitPasses: vcpu ${ids[k]} completed ${done} of ${targets[k]} passes in ${timeoutMs} ms`,
          );
        // passDone does not notify: poll, a few ms at a time. (Not Atomics.waitAsync: its timeout
        // does not keep Node's event loop alive, so a wait with nothing else pending never ends.)
        await new Promise((r) => setTimeout(r, Math.min(5, left)));
      }
    }
    this.throwIfFailed();
  }

  /**
   * kvm_write_guest: copies `bytes` into guest-physical memory at gpa (any alignment, across
   * pages and slots), then marks the pages dirty in logged slots. EFAULT (nothing written) if
   * any byte is outside the memslots or in a read-only slot; EINVAL on bad arguments. May run
   * while vCPUs run: each page is copied under mm_lock, so page migration never loses it.
   */
  writeGuest(gpa: number, bytes: Uint8Array): void {
    if (!(bytes instanceof Uint8Array)) throw einval("bytes", "must be a Uint8Array");
    guest_range_check(this.kvm, gpa, bytes.length, true);
    guest_write(this.kvm, gpa, bytes);
  }

  /** kvm_read_guest: `length` bytes of guest-physical memory at gpa (errors as writeGuest). */
  readGuest(gpa: number, length: number): Uint8Array {
    guest_range_check(this.kvm, gpa, length, false);
    return guest_read(this.kvm, gpa, length);
  }
}

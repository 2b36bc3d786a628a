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
 * ENOMEM, EBUSY) without changing the VM. Once the VM failed (`error` set) it is dead, as KVM's
 * kvm_vm_dead(): every ioctl throws EIO at once, its cause the VM's error, and waits for no lock
 * or acknowledgement; stop(), stopHostThread(), userfaultClose(), the statistics and host reads
 * of guest memory (readGuest*: the VMM's own memory) still work. This class is the ioctl layer, as kvm_main.c: it
 * checks and dispatches; each surface is its own file in src/vm/, on the VM's state
 * (src/vm/state.ts), which is JS-private here and reached by tests and benchmarks through
 * src/vm/internal.ts only.
 */
import {
  CTL,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KVM_USER_MEM_SLOTS,
  PAGE_SIZE,
  ST,
  VCPU,
  type KvmShared,
} from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { host_mmap } from "../mem/host_memory.js";
import { __kvm_set_memory_region, MemoryRegion } from "../mem/set_memslot.js";
import { kvm_x86_memslot_ops } from "../mmu/memslot.js";
import type { DirtyLogTimes } from "../mmu/write_protect.js";
import type { GuestArgs } from "../workload/guest.js";
import {
  check_idle,
  isInt,
  vm_check_vcpu,
  newVmState,
  VM_STATES,
  vm_check_dead,
  vm_ioctl,
  vm_throw_if_failed,
  StopResult,
  VmState,
} from "./state.js";
import { kvm_create_vm, metadataBytes, VmOptions } from "./create.js";
import { vm_audit_tlbs, vm_pause, vm_resume, vm_run, vm_stop, vm_vcpu_ids, vm_wait_passes } from "./run.js";
import * as host from "./host_thread.js";
import { vm_numa_balancing_stats, vm_set_numa_balancing } from "./numa.js";
import { vm_pin_vcpu, vm_vcpu_tid } from "./pinning.js";
import * as dlog from "./dirty_log.js";
import * as ring from "./dirty_ring.js";
import * as uffd from "./userfault.js";
import * as gmem from "./guest_memory.js";
import { TraceSource, vm_enable_trace, vm_trace_source } from "./trace.js";
import { TracePhase } from "../sync/trace_ring.js";
import { MAX_FIELDS, TP, type TracepointName } from "../sync/tracepoints.js";

export class Vm {
  /** The VM's state: JS-private, so the public type has no way in (src/vm/internal.ts has). */
  readonly #s: VmState;

  private constructor(st: VmState) {
    this.#s = st;
    VM_STATES.set(this, st);
  }

  /** KVM_CREATE_VM. */
  static create(o: VmOptions): Vm {
    return new Vm(newVmState(kvm_create_vm(o)));
  }

  /** The first error a worker reported; the VM is stopped when one arrives. */
  get error(): KvmError | Error | null {
    return this.#s.error;
  }

  /** mmap(MAP_ANONYMOUS): returns the host virtual address (bytes) of `bytes` of zeroed memory. */
  mmap(bytes: number, opts: { thp?: boolean } = {}): number {
    if (typeof opts !== "object" || opts === null)
      throw einval("opts", `must be an object, got ${String(opts)}`);
    if (opts.thp !== undefined && typeof opts.thp !== "boolean")
      throw einval("thp", `must be a boolean, got ${String(opts.thp)}`);
    if (!isInt(bytes) || bytes <= 0 || bytes % PAGE_SIZE !== 0)
      throw einval("bytes", `must be a positive multiple of ${PAGE_SIZE}, got ${String(bytes)}`);
    return host_mmap(this.#s.kvm, bytes / PAGE_SIZE, opts.thp ?? true) * PAGE_SIZE;
  }

  /** KVM_SET_USER_MEMORY_REGION (kvm_vm_ioctl_set_memory_region). */
  setUserMemoryRegion(m: MemoryRegion): void {
    const st = this.#s;
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
    // A flush no vCPU acknowledged fails the VM (the slot stays as it was): vm_ioctl.
    vm_ioctl(st, "setUserMemoryRegion", () => {
      st.kvm.slots_lock.lock();
      try {
        __kvm_set_memory_region(st.kvm, m, kvm_x86_memslot_ops, (arg) => check_idle(st, arg));
      } finally {
        st.kvm.slots_lock.unlock();
      }
    });
  }

  /** KVM_CREATE_VCPU. */
  createVcpu(id: number): void {
    const st = this.#s;
    vm_check_dead(st, "createVcpu");
    const max = st.shared.config.maxVcpus;
    if (!isInt(id) || id < 0 || id >= max) throw einval("id", `must be 0..${max - 1}, got ${String(id)}`);
    if (st.created.has(id)) throw new KvmError("EEXIST", `id: vcpu ${id} already exists`);
    st.created.add(id);
    const n = Math.max(Atomics.load(st.kvm.ctl, CTL.nr_vcpus), id + 1);
    Atomics.store(st.kvm.ctl, CTL.nr_vcpus, n);
  }

  get vcpuIds(): number[] {
    return vm_vcpu_ids(this.#s);
  }

  /**
   * Starts one worker per vCPU running guest(id). Resolves once all are running. Every guest
   * spec is built and checked (an object that can be cloned into a worker) before any thread
   * starts; a run whose vCPU fails while starting is stopped and rejects with that error.
   * A VM that failed stays dead (kvm_vm_dead): run() then throws EIO, its cause `error`.
   */
  run(guest: (id: number) => GuestArgs, opts: { tlbBits?: number } = {}): Promise<void> {
    return vm_run(this.#s, guest, opts);
  }

  /**
   * Parks every running vCPU outside guest mode. Rejects with EINVAL when no vCPU runs (before
   * run(), after stop()); a vCPU created while the others ran has no worker and is not waited for.
   */
  pause(): Promise<void> {
    return vm_pause(this.#s);
  }

  /**
   * The TLB part of the MMU audit: every parked vCPU audits its own software TLB
   * (Vcpu.tlbAudit). Returns the stale writable entries per vCPU id. The vCPUs must be paused
   * and nothing else may change the MMU meanwhile (host thread paused, no ioctl in flight).
   */
  auditTlbs(): Promise<Map<number, number>> {
    return vm_audit_tlbs(this.#s);
  }

  resume(): void {
    vm_resume(this.#s);
  }

  throwIfFailed(): void {
    vm_throw_if_failed(this.#s);
  }

  /**
   * Stops every vCPU at its next safe point (never inside a fault or holding mmu_lock), then
   * joins the workers. A vCPU whose guest spins in JavaScript (in guest mode, no entry for
   * `ackTimeoutMs`, default VCPU_ACK_MS) is terminated at once and named in `terminated`; one
   * that does not stop within the grace time (VCPU_WAIT_MS) elsewhere fails the VM (ETIMEDOUT)
   * and is terminated. EINVAL: `ackTimeoutMs` not an integer 1..VCPU_WAIT_MS.
   */
  stop(opts: { ackTimeoutMs?: number } = {}): Promise<StopResult> {
    return vm_stop(this.#s, opts);
  }

  /**
   * Resolves once every vCPU has completed `passes` passes since it was created (the guest counts
   * them with ctx.passDone); `passes` may instead give one target per vCPU, in vcpuIds order.
   * `service`, if given, runs on every poll (e.g. to harvest dirty rings, so that vCPUs throttled
   * on a full ring can progress). Rejects with the VM's error if a worker fails, ETIMEDOUT after
   * timeoutMs (default 60 s; Infinity waits as long as the vCPUs run), EINVAL on bad arguments or
   * when the vCPUs are not running.
   */
  waitPasses(
    passes: number | readonly number[],
    opts: { timeoutMs?: number; service?: () => void } = {},
  ): Promise<void> {
    return vm_wait_passes(this.#s, passes, opts);
  }

  /** Starts the host thread that migrates and invalidates guest backing (MMU-notifier churn). */
  startHostThread(o: host.HostThreadOptions): Promise<void> {
    return host.vm_start_host_thread(this.#s, o);
  }

  pauseHostThread(): Promise<void> {
    return host.vm_pause_host_thread(this.#s);
  }

  resumeHostThread(): void {
    host.vm_resume_host_thread(this.#s);
  }

  stopHostThread(): Promise<void> {
    return host.vm_stop_host_thread(this.#s);
  }

  hostThreadCounters(): { migrations: number; invalidations: number } {
    return host.vm_host_thread_counters(this.#s);
  }

  /** The host thread's mmu_lock wait and hold so far (ns; µs resolution): zero without one. */
  hostThreadLockTimes(): { lockWaitNs: number; lockHoldNs: number } {
    return host.vm_host_thread_lock_times(this.#s);
  }

  /**
   * Automatic NUMA balancing as Linux 3.8-3.12 ran it: every `scanPeriodMs` one vCPU, on its way
   * out of guest mode, unmaps the next `scanBytes` of guest memory through the MMU notifier, so
   * the guest's next touch of each page is a fault (src/mem/numa_balancing.ts). Defaults: that
   * era's 100 ms and 256 MiB. `scanPeriodMs: 0` turns it off. Any time, running or not.
   */
  setNumaBalancing(o: { scanPeriodMs?: number; scanBytes?: number } = {}): void {
    return vm_ioctl(this.#s, "setNumaBalancing", () => vm_set_numa_balancing(this.#s, o));
  }

  /** NUMA balancing's scans so far and the pages they unmapped. */
  numaBalancingStats(): { scans: number; pagesScanned: number } {
    return vm_numa_balancing_stats(this.#s);
  }

  /**
   * Pins vCPU `id`'s worker thread to host CPU `cpu` (KVM's dirty_log_perf_test -c). Linux with
   * util-linux's taskset only: ENOSYS elsewhere. ENOENT: no such vCPU or its thread not started.
   */
  pinVcpu(id: number, cpu: number): void {
    return vm_ioctl(this.#s, "pinVcpu", () => vm_pin_vcpu(this.#s, id, cpu));
  }

  /** The kernel thread id of vCPU `id`'s worker (gettid), 0 before its thread has started. */
  vcpuTid(id: number): number {
    return vm_vcpu_tid(this.#s, id);
  }

  /**
   * KVM_GET_DIRTY_LOG: the slot's bitmap (bit n = page base_gfn + n), harvested and re-protected.
   * EFAULT for an `out` shorter than the slot's bitmap (checked before the harvest: no bit lost).
   */
  getDirtyLog(slot: number, out?: Uint32Array): Uint32Array {
    return vm_ioctl(this.#s, "getDirtyLog", () => dlog.kvm_vm_ioctl_get_dirty_log(this.#s, slot, out));
  }

  /**
   * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: flags 0 (off), MANUAL_PROTECT_ENABLE (1) or
   * MANUAL_PROTECT_ENABLE | INITIALLY_SET (3). As in KVM it may change at any time; it is
   * taken under slots_lock, so no GET or CLEAR sees half of it. GET and CLEAR read it per call;
   * INITIALLY_SET applies to bitmaps created afterwards (logging turned on later).
   */
  enableManualDirtyLogProtect(flags: number): void {
    return vm_ioctl(this.#s, "enableManualDirtyLogProtect", () =>
      dlog.kvm_vm_enable_manual_dirty_log_protect(this.#s, flags),
    );
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
    return vm_ioctl(this.#s, "clearDirtyLog", () =>
      dlog.kvm_vm_ioctl_clear_dirty_log(this.#s, slot, firstPage, numPages, bitmap),
    );
  }

  /** Times accumulated by getDirtyLog (lock wait, protect, flush) and dirty pages reported. */
  dirtyLogTimes(): DirtyLogTimes {
    return { ...this.#s.times };
  }

  /** The same for the last getDirtyLog call alone. */
  lastDirtyLogTimes(): DirtyLogTimes {
    return { ...this.#s.lastTimes };
  }

  /** Times accumulated by clearDirtyLog (lock wait, protect, flush; dirtyPages = pages cleared). */
  clearDirtyLogTimes(): DirtyLogTimes {
    return { ...this.#s.clearTimes };
  }

  lastClearDirtyLogTimes(): DirtyLogTimes {
    return { ...this.#s.lastClear };
  }

  /**
   * Turns on the runtime trace (src/vm/trace.ts): rings every thread of the VM records its
   * tracepoints in, one in `sample` (1..2^30) per-access events. Before any vCPU exists (EINVAL),
   * once (EEXIST). A TraceTimeline drains them (traceSource).
   */
  enableTrace(sample: number): void {
    return vm_ioctl(this.#s, "enableTrace", () => vm_enable_trace(this.#s.kvm, this.#s.created.size, sample));
  }

  /**
   * Records tracepoint `name` on this thread's track (a no-op without a trace): for the layers
   * above the VM (migration rounds, switch-over). `phase`: "i" an instant, "B"/"E" a slice's ends.
   */
  traceEvent(name: TracepointName, phase: "i" | "B" | "E", ...fields: number[]): void {
    const t = this.#s.kvm.trace;
    if (!t.on) return;
    const ph = phase === "B" ? TracePhase.Begin : phase === "E" ? TracePhase.End : TracePhase.Instant;
    t.emit(TP[name], ph, ...fields.slice(0, MAX_FIELDS));
  }

  /** What a TraceTimeline reads of this VM, its process named `name`; null when not traced. */
  traceSource(name: string): TraceSource | null {
    return vm_trace_source(this.#s.kvm, name);
  }

  /**
   * KVM_CAP_DIRTY_LOG_RING (and _WITH_BITMAP): one ring of `entries` entries per vCPU. Once per
   * VM, before any vCPU exists; `entries` a power of two, at least one page of 16-byte entries
   * (256), at most 65536 (E2BIG above; EINVAL for the rest). withBitmap: the bitmap stays, for
   * writes made without a running vCPU; only before any memslot exists (EINVAL).
   */
  enableDirtyRing(entries: number, opts: { withBitmap?: boolean } = {}): void {
    return vm_ioctl(this.#s, "enableDirtyRing", () =>
      ring.kvm_vm_ioctl_enable_dirty_log_ring(this.#s, entries, opts),
    );
  }

  /**
   * Userspace's harvest of vCPU vcpuId's ring into caller-provided arrays: the DIRTY entries from
   * where the last harvest stopped, in order, at most slots.length, each marked RESET; entry k's
   * slot id in slots[k], its page offset in the slot in offsets[k]. Returns the entries
   * harvested (no object per entry). `offsets` has the length of `slots` (EINVAL otherwise).
   * The pages are not protected again until resetDirtyRings(), which must come before their
   * contents are read. May run while the vCPUs run.
   */
  harvestDirtyRingInto(vcpuId: number, slots: Int32Array, offsets: Int32Array): number {
    return vm_ioctl(this.#s, "harvestDirtyRingInto", () =>
      ring.vm_harvest_dirty_ring_into(this.#s, vcpuId, slots, offsets),
    );
  }

  /**
   * harvestDirtyRingInto's convenience form: the entries harvested (at most `max`) as
   * {slot, offset} objects.
   */
  harvestDirtyRing(vcpuId: number, max = Infinity): ring.DirtyGfn[] {
    return vm_ioctl(this.#s, "harvestDirtyRing", () => ring.vm_harvest_dirty_ring(this.#s, vcpuId, max));
  }

  /**
   * KVM_RESET_DIRTY_RINGS: frees the harvested entries of every ring, write-protects their pages
   * again through the VM's design, flushes, and lets vCPUs blocked in a ring-full exit go on.
   * Returns the entries reset. EINVAL without a ring. May run while the vCPUs run.
   */
  resetDirtyRings(): number {
    return vm_ioctl(this.#s, "resetDirtyRings", () => ring.kvm_vm_ioctl_reset_dirty_pages(this.#s));
  }

  /** Times accumulated by resetDirtyRings (dirtyPages = entries reset), and the last call's. */
  resetDirtyRingsTimes(): DirtyLogTimes {
    return { ...this.#s.resetTimes };
  }

  lastResetDirtyRingsTimes(): DirtyLogTimes {
    return { ...this.#s.lastReset };
  }

  /**
   * dirty-limit's knob (QEMU's cpu->throttle_us_per_full): vCPU vcpuId sleeps `us` after each
   * ring-full exit, once the reset lets it go on; 0 stops it. EINVAL without a ring, for an
   * unknown vCPU, or `us` not an integer 0..60,000,000. May be set while the vCPUs run.
   */
  setDirtyRingThrottle(vcpuId: number, us: number): void {
    return ring.vm_set_dirty_ring_throttle(this.#s, vcpuId, us);
  }

  /**
   * Ring-full exits (KVM_EXIT_DIRTY_RING_FULL) so far: of vCPU vcpuId, or of all vCPUs; plus the
   * host writes that ring-only mode could not log (no running vCPU, no bitmap).
   */
  dirtyRingStats(vcpuId?: number): { fullExits: number; dropped: number } {
    return ring.vm_dirty_ring_stats(this.#s, vcpuId);
  }

  /**
   * Resolves with the VM's ring-full exit count once it exceeds `since` (default: the count
   * now), or with the unchanged count after timeoutMs (default 10 s). The harvester's event:
   * harvest, reset, and the blocked vCPU resumes. Rejects with the VM's error if it failed.
   */
  waitDirtyRingFull(opts: { since?: number; timeoutMs?: number } = {}): Promise<number> {
    return ring.vm_wait_dirty_ring_full(this.#s, opts);
  }

  /**
   * userfaultfd (UFFDIO_REGISTER, MISSING mode) on memslot `slot`: from now on a page marked
   * missing (userfaultDiscard) blocks the vCPU whose fault reaches it until userfaultCopy places
   * it. One slot per VM; only while no vCPU runs (EBUSY), so every worker sees the state.
   */
  userfaultRegister(slot: number): void {
    return vm_ioctl(this.#s, "userfaultRegister", () => uffd.vm_userfault_register(this.#s, slot));
  }

  /**
   * Marks pages of the registered slot missing (MADV_DONTNEED on a registered range): bit n of
   * `bitmap` set = page n. Their mappings are dropped and their frames zeroed. Only while no
   * vCPU runs or every vCPU is paused (EBUSY otherwise). Returns the pages now missing.
   */
  userfaultDiscard(bitmap: Uint32Array): number {
    return vm_ioctl(this.#s, "userfaultDiscard", () => uffd.vm_userfault_discard(this.#s, bitmap));
  }

  /**
   * UFFDIO_COPY: places the page at gpa (page-aligned, in the registered slot) with `bytes`
   * (PAGE_SIZE of them; null: zeroes) and wakes the vCPUs waiting for it. False (nothing written)
   * when the page was not missing, as UFFDIO_COPY's EEXIST. Owner thread; vCPUs may run.
   */
  userfaultCopy(gpa: number, bytes: Uint8Array | null): boolean {
    return vm_ioctl(this.#s, "userfaultCopy", () => uffd.vm_userfault_copy(this.#s, gpa, bytes));
  }

  /** True when the page at gpa is registered and missing. */
  userfaultMissing(gpa: number): boolean {
    return uffd.vm_userfault_missing(this.#s, gpa);
  }

  /** The gpas the vCPUs are blocked on now (read(uffd)), at most one per vCPU, and the event count. */
  userfaultPending(): { seq: number; gpas: number[] } {
    return uffd.vm_userfault_pending(this.#s);
  }

  /** Resolves with the fault-event count once it differs from `seq`, or after timeoutMs. */
  waitUserfault(seq: number, timeoutMs: number): Promise<number> {
    return uffd.vm_wait_userfault(this.#s, seq, timeoutMs);
  }

  /**
   * The page source is gone: vCPUs blocked on (or later faulting on) a missing page fail with
   * EFAULT instead of waiting forever (SIGBUS once the uffd is closed under them).
   */
  userfaultClose(): void {
    uffd.vm_userfault_close(this.#s);
  }

  /** Pages missing now, and per vCPU id the time blocked on them (postcopy-vcpu-blocktime). */
  userfaultStats(): uffd.UserfaultStats {
    return uffd.vm_userfault_stats(this.#s);
  }

  /** Per-vCPU statistics as the workers last published them. */
  vcpuStats(id: number): Float64Array {
    return this.#s.kvm.vcpuStats.subarray(ST.row(id), ST.row(id + 1));
  }

  /**
   * Passes vCPU `id` has completed since it was created (the guest's ctx.passDone), read live:
   * the counts `waitPasses` compares with. EINVAL for an id that is not a created vCPU.
   */
  vcpuPasses(id: number): number {
    vm_check_vcpu(this.#s, id);
    return Atomics.load(this.#s.kvm.vcpu, VCPU.passes(id));
  }

  metadataBytes(): number {
    return metadataBytes(this.#s.shared);
  }

  /**
   * The VM's shared structures, for a thread of the caller's that copies guest pages (the
   * migration's multifd channels: `new Kvm(shared)` and guest/host_access.ts there, each page
   * under mm_lock). Take it once the memslots and userfault registration are final: those
   * threads never see a later change.
   */
  sharedState(): KvmShared {
    return this.#s.shared;
  }

  /**
   * kvm_write_guest: copies `bytes` into guest-physical memory at gpa (any alignment, across
   * pages and slots), then marks the pages dirty in logged slots. EFAULT (nothing written) if
   * any byte is outside the memslots or in a read-only slot; EINVAL on bad arguments. May run
   * while vCPUs run: each page is copied under mm_lock, so page migration never loses it.
   */
  writeGuest(gpa: number, bytes: Uint8Array): void {
    return vm_ioctl(this.#s, "writeGuest", () => gmem.kvm_write_guest(this.#s, gpa, bytes));
  }

  /** kvm_read_guest: `length` bytes of guest-physical memory at gpa (errors as writeGuest). */
  readGuest(gpa: number, length: number): Uint8Array {
    return gmem.kvm_read_guest(this.#s, gpa, length);
  }

  /** Host-side read of the 8 bytes at guest-physical gpa of a slot (through its hva). */
  readGuestU64(gpa: number): [number, number] {
    return gmem.vm_read_guest_u64(this.#s, gpa);
  }

  /**
   * Host-side copy of the whole guest page at guest-physical gpa (page-aligned) into `out`
   * (PAGE_SIZE / 4 words), through its hva and under the host mm lock, as readGuestU64: the
   * copy never races a page migration. Used by the migration-style oracle and the e2e tests.
   */
  readGuestPage(gpa: number, out: Int32Array = new Int32Array(PAGE_SIZE / 4)): Int32Array {
    return gmem.vm_read_guest_page(this.#s, gpa, out);
  }
}

/**
 * A vCPU as its worker thread sees it: guest accesses through the software TLB, TLB misses
 * walked locklessly in guest mode (as the hardware walks EPT tables), faults handled outside
 * guest mode, requests honoured at every entry, run control (pause/stop) at safe points.
 */
import {
  CTL,
  EXITING_GUEST_MODE,
  IN_GUEST_MODE,
  Kvm,
  KVM_REQ_DIRTY_RING_SOFT_FULL,
  KVM_REQ_TLB_FLUSH,
  MmuMode,
  OUTSIDE_GUEST_MODE,
  ST,
  VCPU,
} from "../kvm_host.js";
import { acas, aload, aor, aread, astore, axchg, guestPoint, schedHookInstalled } from "../sync/atomic.js";
import { KF, kfunc_enter, kfunc_exit, kfunc_ret } from "../sync/kfunc.js";
import {
  kvm_dirty_ring_full_exit,
  kvm_dirty_ring_throttle_us,
  kvm_dirty_ring_soft_full,
  kvm_dirty_ring_wait,
} from "../mem/dirty_ring.js";
import { FaultStats, KvmPageFault, ShadowWalkIterator, walk_shadow_page_lockless } from "../mmu/mmu.js";
import { kvm_mmu_page_fault, PFERR_PRESENT_MASK, PFERR_WRITE_MASK } from "../mmu/kvm_mmu.js";
// The design registry: a thread that runs vCPUs resolves its Kvm's ops there.
import "../mmu/design.js";
import { is_shadow_present_pte, is_writable_pte, spte_leaf_pfn, SPTE_DIRTY } from "../mmu/spte.js";
import { pml_log_write, PmlStats, vmx_flush_pml_buffer } from "./pml.js";
import { SoftTlb } from "./tlb.js";
import { paging_emulate_write, paging_miss, PagingState } from "./paging.js";
import { kvm_mmu_load_cr3 } from "../mmu/shadow_page.js";
import { mmu_topup_memory_caches } from "../mmu/mmu_cache.js";
import { trace_flush_ack, VcpuState } from "../kvm/requests.js";
import { task_numa_work } from "../mem/numa_balancing.js";
import { kvm_mmu_notifier } from "../mmu/mmu_notifier.js";
import type { MmuNotifier } from "../mem/host_memory.js";

/** Run control values (VCPU.run), written by the VM owner. */
export const enum RunCtl {
  Run = 0,
  Pause = 1,
  Stop = 2,
  /** While paused: audit the TLB (Vcpu.tlbAudit), publish, report VcpuState.Audited. */
  Audit = 3,
}

/** Safe points between two looks at NUMA balancing's clock (Vcpu.numaTick). */
const NUMA_TICK_MISSES = 256;

/** Thrown out of the guest loop when the owner asks the vCPU to stop. */
export class VcpuStop extends Error {}

/** KVM's exit reason for a vCPU whose dirty ring is soft-full (include/uapi/linux/kvm.h). */
export const KVM_EXIT_DIRTY_RING_FULL = 31;

/**
 * An exit to the caller of a vCPU driven on the caller's own thread (ringFullWaits false): KVM_RUN
 * returning with `exitReason`. The access that took it did not happen; the caller harvests and
 * resets the ring, calls enterGuest() (KVM_RUN again) and retries the access.
 */
export class VcpuExit extends Error {
  constructor(readonly exitReason: number) {
    super(`vCPU exit ${exitReason} (KVM_EXIT_DIRTY_RING_FULL): harvest and reset the ring, then enter again`);
    this.name = "VcpuExit";
  }
}

export class Vcpu {
  /*
   * Fields set in the constructor are `declare`d: an ES2022 class field without an initializer
   * is first defined as undefined, and V8 then sees every later assignment as a change of a
   * mutable, any-type field, so each hit would reload and re-check this.mem, this.tlbTag, ...
   */
  declare readonly kvm: Kvm;
  declare readonly id: number;
  declare readonly tlb: SoftTlb;
  readonly fault = new FaultStats();
  /** struct kvm_page_fault, reused by every fault of this vCPU. */
  declare readonly pf: KvmPageFault;
  declare readonly mem: Int32Array;
  declare private readonly ctl: Int32Array;
  declare private readonly v: Int32Array;
  /** The TLB's arrays and index mask, cached for the hit path. */
  declare private readonly tlbTag: Int32Array;
  declare private readonly tlbWtag: Int32Array;
  declare private readonly tlbBase: Int32Array | Uint32Array;
  declare private readonly tlbMask: number;
  /**
   * This vCPU's mode word (kvm.vcpu[VCPU.mode(id)]) as a one-element view of the same shared
   * bytes: written by the vCPU and by kickers with Atomics; the hit reads it with a plain load
   * (docs/locking.md §3.8). One field to load per hit, where v[modeIx] needs two.
   */
  declare private readonly modeWord: Int32Array;
  /**
   * Indices of this vCPU's mode and run words and of CTL.root, taken once from the layouts: the
   * miss path reads them on every miss, and a layout's index closure is not folded to a constant.
   */
  declare private readonly modeIx: number;
  declare private readonly runIx: number;
  declare private readonly entriesIx: number;
  declare private readonly rootIx: number;
  /** Shadow mode (fixed), and whether misses take the guest-paging path (shadow, or a CR3). */
  declare readonly shadow: boolean;
  declare private pagingMiss: boolean;
  /** PML buffer entries (kvm.ops.cpu_dirty_log_size), 0: no D-bit logging. */
  declare private readonly pmlSize: number;
  readonly pmlStats = new PmlStats();
  /** Guest CR3: gfn of the top-level guest page table, 0 = paging off (addresses are gfns). */
  cr3 = 0;
  readonly paging = new PagingState();
  /** The lockless walk of the TDP miss path and the TLB audit. */
  private readonly it = new ShadowWalkIterator();
  /** Guest accesses, counted by the guest programs (kept off the TLB-hit path). */
  /**
   * A ring-full exit waits for another thread's reset (a vCPU worker: vcpu_worker.ts sets it);
   * false, a vCPU driven on its caller's thread, the exit is returned to the caller (VcpuExit).
   */
  ringFullWaits = false;
  writes = 0;
  reads = 0;
  tlbMisses = 0;
  /** Safe points (TLB misses, checkpoints) until numaTick looks at the clock again. */
  private numaCountdown = NUMA_TICK_MISSES;
  /** ms this thread spent parked (paused or stopped): subtracted to give its run time. */
  private parkedMs = 0;
  /** curr->node_stamp: run time (ms) at which this thread last queued NUMA balancing's work. */
  private numaNodeStamp = 0;
  /** KVM's notifier callbacks, for NUMA balancing's scans run on this thread (made on first use). */
  private notifier: MmuNotifier | null = null;

  constructor(kvm: Kvm, id: number, tlbBits = 12) {
    this.kvm = kvm;
    this.id = id;
    this.pf = new KvmPageFault(id, this.fault);
    this.tlb = new SoftTlb(tlbBits, kvm.mem.length);
    this.mem = kvm.mem;
    this.ctl = kvm.ctl;
    this.v = kvm.vcpu;
    this.tlbTag = this.tlb.tag;
    this.tlbWtag = this.tlb.wtag;
    this.tlbBase = this.tlb.base;
    this.tlbMask = this.tlb.mask;
    this.shadow = kvm.mode === MmuMode.Shadow;
    this.pagingMiss = this.shadow;
    this.modeIx = VCPU.mode(id);
    this.modeWord = new Int32Array(kvm.vcpu.buffer, kvm.vcpu.byteOffset + this.modeIx * 4, 1);
    this.runIx = VCPU.run(id);
    this.entriesIx = VCPU.entries(id);
    this.rootIx = CTL.root;
    this.pmlSize = kvm.ops.cpu_dirty_log_size?.(kvm) ?? 0;
    // Under the controlled scheduler every guest access is a scheduling point: this thread's
    // vCPUs take the instrumented hit paths (the plain ones never call guestPoint).
    if (schedHookInstalled()) {
      this.read32 = this.read32Sched.bind(this);
      this.write32 = (gfn, w, x) => this.writeSched(gfn, w, x, 0, 1);
      this.write64 = (gfn, w, lo, hi) => this.writeSched(gfn, w, lo, hi, 2);
    }
  }

  /** vcpu_enter_guest: process requests, then mode = IN, then re-check requests. */
  enterGuest(): void {
    const kfd = kfunc_enter(KF.vcpu_enter_guest);
    const v = this.v;
    const id = this.id;
    for (;;) {
      const req = axchg(v, VCPU.requests(id), 0);
      if ((req & KVM_REQ_TLB_FLUSH) !== 0) {
        this.tlb.flush();
        if (this.kvm.trace.on) trace_flush_ack(this.kvm.trace, id);
      }
      if ((req & KVM_REQ_DIRTY_RING_SOFT_FULL) !== 0) this.dirtyRingFull();
      astore(v, VCPU.mode(id), IN_GUEST_MODE);
      if (aload(v, VCPU.requests(id)) === 0) break;
      astore(v, VCPU.mode(id), OUTSIDE_GUEST_MODE);
    }
    // Each entry counted: stop() tells a vCPU that never acknowledged its kick (a guest spinning in
    // JavaScript) by this count standing still in guest mode. A plain store: one writer.
    v[this.entriesIx]++;
    // A pause or stop written while we were outside guest mode found no IN mode to kick
    // (kvm_vcpu_kick): kick ourselves, so that the next access takes the safe point. Dekker
    // with the owner (it stores run, then cmpxchg's mode; we store mode, then load run).
    if (aload(v, this.runIx) !== (RunCtl.Run as number))
      acas(v, this.modeIx, IN_GUEST_MODE, EXITING_GUEST_MODE);
    kfunc_exit(kfd);
  }

  /** VM exit: the PML buffer into the log (vmx_flush_pml_buffer), mode = OUTSIDE; wakes a flusher that kicked us. */
  exitGuest(): void {
    const kfd = kfunc_enter(KF.vcpu_exit_guest);
    try {
      if (this.pmlSize !== 0) vmx_flush_pml_buffer(this.kvm, this.id, this.pmlStats);
      const old = axchg(this.v, VCPU.mode(this.id), OUTSIDE_GUEST_MODE);
      if (old === EXITING_GUEST_MODE && !schedHookInstalled()) Atomics.notify(this.v, VCPU.mode(this.id));
    } finally {
      kfunc_exit(kfd);
    }
  }

  /**
   * A safe point in guest mode (every TLB miss, every guest checkpoint): acknowledge a kick,
   * honour pause/stop, and, as the scheduler tick does for a running task, run NUMA balancing's
   * task work when it is due.
   */
  safePoint(): void {
    // EXITING: kicked. OUTSIDE: an entry threw (enterGuestAfter) and the caller went on; enter
    // now, before an access goes through the TLB with no flush request honoured.
    if (aload(this.v, this.modeIx) !== IN_GUEST_MODE) {
      this.exitGuest();
      this.enterGuest();
    }
    if (aload(this.v, this.runIx) !== (RunCtl.Run as number)) this.runControl();
    if (--this.numaCountdown <= 0) this.numaTick();
  }

  /**
   * KVM_EXIT_DIRTY_RING_FULL: outside guest mode, counted, until a reset brings the ring below
   * its soft limit (KVM re-arms the request so the vCPU cannot re-enter before). Pause, audit
   * and stop are honoured meanwhile. A vCPU on the caller's thread (ringFullWaits false) returns
   * the exit to its caller instead (VcpuExit): waiting there would wait on itself forever.
   */
  private dirtyRingFull(): void {
    if (!this.ringFullWaits && !schedHookInstalled()) {
      // On the caller's thread nobody else resets the ring (the explorer's threads take turns,
      // so they wait): the exit goes to the caller, the request re-armed (as KVM's
      // kvm_dirty_ring_check_request) until a reset clears it.
      if (!kvm_dirty_ring_soft_full(this.kvm, this.id)) return;
      aor(this.v, VCPU.requests(this.id), KVM_REQ_DIRTY_RING_SOFT_FULL);
      kvm_dirty_ring_full_exit(this.kvm, this.id);
      throw new VcpuExit(KVM_EXIT_DIRTY_RING_FULL);
    }
    kvm_dirty_ring_full_exit(this.kvm, this.id);
    while (kvm_dirty_ring_wait(this.kvm, this.id))
      if (aload(this.v, this.runIx) !== (RunCtl.Run as number)) {
        this.parked();
        astore(this.v, VCPU.state(this.id), VcpuState.Running);
      }
    const us = kvm_dirty_ring_throttle_us(this.kvm, this.id);
    if (us > 0 && !schedHookInstalled()) this.dirtyLimitSleep(us);
  }

  /**
   * dirty-limit (QEMU's dirtylimit_vcpu_execute): after the exit's ring was reaped, userspace's
   * vCPU thread sleeps `us`. A pause or stop (the owner notifies the run word) cuts it short.
   */
  private dirtyLimitSleep(us: number): void {
    const end = performance.now() + us / 1000;
    for (;;) {
      if (aload(this.v, this.runIx) !== (RunCtl.Run as number)) {
        this.parked();
        astore(this.v, VCPU.state(this.id), VcpuState.Running);
        return;
      }
      const left = end - performance.now();
      if (left <= 0) return;
      Atomics.wait(this.v, this.runIx, RunCtl.Run, left);
    }
  }

  private runControl(): void {
    const t = performance.now();
    try {
      this.parked();
    } finally {
      this.parkedMs += performance.now() - t;
    }
    astore(this.v, VCPU.state(this.id), VcpuState.Running);
    this.enterGuest();
  }

  /** Out of guest mode until the run control says Run (stop throws VcpuStop). */
  private parked(): void {
    const v = this.v;
    const id = this.id;
    for (;;) {
      const ctl = aload(v, VCPU.run(id));
      if (ctl === (RunCtl.Run as number)) break;
      this.exitGuest();
      if (ctl === (RunCtl.Stop as number)) throw new VcpuStop();
      if (ctl === (RunCtl.Audit as number)) {
        this.kvm.vcpuStats[ST.tlb_audit(this.id)] = this.tlbAudit();
        astore(v, VCPU.state(id), VcpuState.Audited);
        Atomics.notify(v, VCPU.state(id));
        if (!schedHookInstalled()) Atomics.wait(v, VCPU.run(id), ctl, 100);
        continue;
      }
      this.publishStats();
      astore(v, VCPU.state(id), VcpuState.Paused);
      Atomics.notify(v, VCPU.state(id));
      if (!schedHookInstalled()) Atomics.wait(v, VCPU.run(id), ctl, 100);
    }
  }

  /*
   * The hit paths (docs/locking.md §3.8). A tag is gfn + 1 and IN_GUEST_MODE is 1, so
   * `tag === gfn + mode` holds only for a valid entry while this vCPU is in guest mode. A
   * flusher's kick (KVM_REQ_TLB_FLUSH) or the owner's (pause, stop) turns our mode from IN to
   * EXITING; from then on nothing matches (gfn + 2 would be the tag of gfn + 1, which lives in
   * another set) and the next access takes its slow path, whose first step is the safe point.
   * So no per-access countdown: a hit is a tag compare, an add and the access. The mode word
   * (modeWord) is read with a plain load (an Atomics.load is a builtin call here, several
   * hits' worth): §3.8 says why the flush protocol does not depend on the value it returns.
   * These plain forms never call guestPoint; the *Sched forms (chosen in the constructor when
   * this thread has a scheduler hook) are the same with the scheduling point.
   */

  /** Guest store of 8 bytes (lo, hi) at word `w` (0..1022, even) of page gfn. */
  write64(gfn: number, w: number, lo: number, hi: number): void {
    const t = gfn & this.tlbMask;
    if (this.tlbWtag[t] === ((gfn + this.modeWord[0]) | 0)) {
      const i = this.tlbBase[t] + w;
      this.mem[i] = lo;
      this.mem[i + 1] = hi;
      return;
    }
    this.writeSlow(gfn, w, lo, hi, 2);
  }

  /**
   * Guest store of 4 bytes at word `w` of page `gfn` (a guest virtual page once a CR3 is loaded,
   * as for every access).
   */
  write32(gfn: number, w: number, x: number): void {
    const t = gfn & this.tlbMask;
    if (this.tlbWtag[t] === ((gfn + this.modeWord[0]) | 0)) {
      this.mem[this.tlbBase[t] + w] = x;
      return;
    }
    this.writeSlow(gfn, w, x, 0, 1);
  }

  /** Guest load of the low 32 bits at word `w` of page gfn. */
  read32(gfn: number, w: number): number {
    const t = gfn & this.tlbMask;
    if (this.tlbTag[t] === ((gfn + this.modeWord[0]) | 0)) return this.mem[this.tlbBase[t] + w];
    return this.readSlow(gfn, w);
  }

  /**
   * The guest store under the controlled scheduler (write32: words 1, write64: 2). A hit runs no
   * KVM code and cannot throw but at its scheduling point (the run then ends), so it needs no
   * finally; the recorded run checks it against the spte (a hit through an entry whose spte lost
   * W is the flush that never came: explore_trace.ts).
   */
  private writeSched(gfn: number, w: number, lo: number, hi: number, words: number): void {
    const kfd = kfunc_enter(KF.guest_write);
    const t = gfn & this.tlbMask;
    if (this.tlbWtag[t] === ((gfn + this.modeWord[0]) | 0)) {
      const i = this.tlbBase[t] + w;
      guestPoint(true, this.mem, i);
      this.mem[i] = lo;
      if (words === 2) this.mem[i + 1] = hi;
      return kfunc_exit(kfd);
    }
    // The slow path is an entry point: a guest page fault it throws may be caught by the guest.
    try {
      this.writeSlow(gfn, w, lo, hi, words);
    } finally {
      kfunc_exit(kfd);
    }
  }

  private read32Sched(gfn: number, w: number): number {
    const kfd = kfunc_enter(KF.guest_read);
    const t = gfn & this.tlbMask;
    if (this.tlbTag[t] === ((gfn + this.modeWord[0]) | 0)) {
      const i = this.tlbBase[t] + w;
      guestPoint(false, this.mem, i);
      return kfunc_ret(kfd, this.mem[i]);
    }
    try {
      return this.readSlow(gfn, w);
    } finally {
      kfunc_exit(kfd);
    }
  }

  /**
   * A store that did not hit: either the entry is there and we were kicked (or are outside
   * guest mode), so take the safe point first; or it is missing or read-only, a TLB miss (whose
   * first step is the safe point). Then the store through the entry, if it survived.
   */
  private writeSlow(gfn: number, w: number, lo: number, hi: number, words: number): void {
    const t = gfn & this.tlbMask;
    for (;;) {
      if (this.tlbWtag[t] === gfn + 1) this.safePoint();
      else if (this.miss(gfn, true)) {
        paging_emulate_write(this, this.paging, w, lo, hi, words);
        return;
      }
      if (this.tlbWtag[t] === gfn + 1) {
        const i = this.tlbBase[t] + w;
        guestPoint(true, this.mem, i);
        this.mem[i] = lo;
        if (words === 2) this.mem[i + 1] = hi;
        return;
      }
    }
  }

  /** A load that did not hit (as writeSlow). */
  private readSlow(gfn: number, w: number): number {
    const t = gfn & this.tlbMask;
    for (;;) {
      if (this.tlbTag[t] === gfn + 1) this.safePoint();
      else this.miss(gfn, false);
      if (this.tlbTag[t] === gfn + 1) {
        const i = this.tlbBase[t] + w;
        guestPoint(false, this.mem, i);
        return this.mem[i];
      }
    }
  }

  /**
   * MOV to CR3: switches the guest address space (gfn of a PML4; 0 turns paging off) and flushes
   * this vCPU's TLB (no PCID). In shadow mode the vCPU drops its root and takes the root of the
   * new address space (kvm_mmu_new_cr3), creating and write-protecting it if needed.
   */
  loadCr3(cr3: number): void {
    this.cr3 = cr3;
    astore(this.v, VCPU.cr3(this.id), cr3);
    this.pagingMiss = this.shadow || cr3 !== 0;
    this.tlb.flush();
    if (this.shadow) {
      this.exitGuest();
      try {
        mmu_topup_memory_caches(this.kvm, this.id);
        kvm_mmu_load_cr3(this.kvm, this.id, cr3);
      } catch (e) {
        this.enterGuestAfter(e);
        throw e;
      }
      this.enterGuest();
    }
  }

  /** INVLPG: drops this vCPU's translation of one page (without unsync there is nothing to resync). */
  invlpg(gfn: number): void {
    this.tlb.invalidate(gfn);
  }

  /**
   * TLB miss: poll for kicks (a safe point), walk the TDP tables locklessly in guest mode and
   * fill the TLB, or take the fault outside guest mode. With guest paging or in shadow mode the
   * miss goes to paging.ts; true means "emulate this write" (shadow mode only).
   */
  private miss(gfn: number, write: boolean): boolean {
    this.tlbMisses++;
    this.safePoint();
    if (this.pagingMiss) return paging_miss(this, this.paging, gfn, write, this.shadow);
    // The root with READ_ONCE, as the walk reads the sptes (invalidating it flushes remote TLBs).
    const s = walk_shadow_page_lockless(this.kvm, aread(this.ctl, this.rootIx), gfn, this.it);
    const present = is_shadow_present_pte(s);
    if (present) {
      let writable = is_writable_pte(s);
      if (!write || writable) {
        // A/D bits: a write through a writable spte with D clear sets D (and logs the gfn); a
        // read caches it read-only, so that the first write comes back here.
        if (writable && this.pmlSize !== 0 && (s & SPTE_DIRTY) === 0) {
          const fullExits = this.pmlStats.fullExits;
          if (!write) writable = false;
          else if (!pml_log_write(this.kvm, this.id, this.it.sptep, s, gfn, this.pmlStats)) return false;
          // A PML-full exit (the only push to the ring in guest mode) filled the ring to its soft
          // limit: a real exit, so that the vCPU takes KVM_EXIT_DIRTY_RING_FULL before it writes
          // on (with PML no write faults). The request is looked at only after such an exit.
          else if (
            this.pmlStats.fullExits !== fullExits &&
            (aload(this.v, VCPU.requests(this.id)) & KVM_REQ_DIRTY_RING_SOFT_FULL) !== 0
          ) {
            this.exitGuest();
            this.enterGuest();
            return false;
          }
        }
        this.tlb.fill(gfn, spte_leaf_pfn(s, this.it.level, gfn), writable);
        return false;
      }
    }
    this.pageFault(gfn, (present ? PFERR_PRESENT_MASK : 0) | (write ? PFERR_WRITE_MASK : 0));
    return false;
  }

  /**
   * The vCPU's one way into the MMU: leaves guest mode, runs kvm_mmu_page_fault on this vCPU's
   * fault record (the design's page_fault op), and enters guest mode again (also when the fault
   * throws). `addr` is a gfn (TDP) or a guest virtual page (shadow mode); errorCode has PFERR_*
   * bits. Returns RET_PF_RETRY or RET_PF_EMULATE.
   */
  pageFault(addr: number, errorCode: number): number {
    this.exitGuest();
    let r: number;
    try {
      this.pf.cr3 = this.cr3;
      r = kvm_mmu_page_fault(this.kvm, this.pf, addr, errorCode);
    } catch (e) {
      this.enterGuestAfter(e);
      throw e;
    }
    this.enterGuest();
    return r;
  }

  /**
   * Enters guest mode again after `first` was thrown outside it (a guest that catches a guest
   * page fault goes on in guest mode). Should the entry throw too (a ring-full VcpuExit on the
   * caller's thread, a stop), `first` is what the caller gets, the second error its cause: the
   * vCPU stays outside guest mode until its next safe point enters again, and an exit is not
   * lost (its request stays armed, so that entry takes it again).
   */
  enterGuestAfter(first: unknown): void {
    try {
      this.enterGuest();
    } catch (second) {
      if (first instanceof Error && first.cause === undefined) first.cause = second;
    }
  }

  /**
   * Task work on the way back to user mode: NUMA balancing's scan (src/mem/numa_balancing.ts),
   * when one is due. Looked at every NUMA_TICK_MISSES safe points (a clock read is several
   * misses' worth), as the scheduler tick looks at the running task. The scan runs outside
   * guest mode: its zap flushes remote TLBs, and that flush waits for every vCPU in guest mode,
   * this one included.
   */
  private numaTick(): void {
    this.numaCountdown = NUMA_TICK_MISSES;
    const period = aload(this.ctl, CTL.numa_scan_period_ms);
    if (period === 0) return;
    // task_tick_numa: due once this thread has run a period since the last (its run time, not
    // the wall clock: a paused VM does not owe scans when it resumes)...
    const t = performance.now();
    const runMs = t - this.parkedMs;
    if (runMs - this.numaNodeStamp <= period) return;
    this.numaNodeStamp = Math.max(this.numaNodeStamp + period, runMs - period);
    // ...and the mm's scan is due by the wall clock (task_numa_work checks numa_next_scan).
    const now = Math.floor(performance.timeOrigin + t - this.kvm.shared.epochMs);
    if (now < aload(this.ctl, CTL.numa_next_scan)) return;
    this.notifier ??= kvm_mmu_notifier(this.kvm);
    this.exitGuest();
    try {
      task_numa_work(this.kvm, now, this.notifier);
    } catch (e) {
      this.enterGuestAfter(e);
      throw e;
    }
    this.enterGuest();
  }

  /**
   * The TLB part of the MMU audit (the TLB is private to this thread, so the vCPU
   * audits it itself, parked, when the owner asks with everything quiesced): once every flush
   * request has been honoured, no entry may allow a write that the spte does not — present,
   * writable, same frame. A pending KVM_REQ_TLB_FLUSH empties the TLB before its next use, so
   * then nothing is stale. TDP without guest paging only (elsewhere entries are keyed by gva).
   * Returns the number of bad entries.
   */
  tlbAudit(): number {
    if (this.pagingMiss) return 0;
    if ((aload(this.v, VCPU.requests(this.id)) & KVM_REQ_TLB_FLUSH) !== 0) return 0;
    let bad = 0;
    for (const { gfn, pfn } of this.tlb.writableEntries()) {
      const s = walk_shadow_page_lockless(this.kvm, aload(this.ctl, CTL.root), gfn, this.it);
      const ok =
        is_shadow_present_pte(s) && is_writable_pte(s) && spte_leaf_pfn(s, this.it.level, gfn) === pfn;
      if (!ok) bad++;
    }
    return bad;
  }

  publishStats(): void {
    const s = this.kvm.vcpuStats;
    const id = this.id;
    const lock = this.kvm.mmu_lock.stats;
    s[ST.writes(id)] = this.writes;
    s[ST.reads(id)] = this.reads;
    s[ST.fast_pf(id)] = this.fault.fast;
    s[ST.slow_pf(id)] = this.fault.slow;
    s[ST.retries(id)] = this.fault.retries;
    s[ST.tlb_miss(id)] = this.tlbMisses;
    s[ST.lock_wait_ns(id)] = lock.waitNs;
    s[ST.lock_hold_ns(id)] = lock.holdNs;
    s[ST.lock_acq(id)] = lock.acquisitions;
    s[ST.flushes_handled(id)] = this.tlb.flushes;
    const p = this.paging;
    s[ST.guest_walks(id)] = p.guestWalks;
    s[ST.guest_pf(id)] = p.guestFaults;
    s[ST.emulated(id)] = p.emulated;
  }

  passDone(): void {
    Atomics.add(this.v, VCPU.passes(this.id), 1);
  }
}

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
  PAGE_WORDS,
  ST,
  VCPU,
} from "../kvm_host.js";
import { aload, astore, axchg, guestPoint, schedHookInstalled } from "../sync/atomic.js";
import { kvm_dirty_ring_full_exit, kvm_dirty_ring_wait } from "../mem/dirty_ring.js";
import { tdp_page_fault } from "../mmu/tdp_fault.js";
import { FaultStats, ShadowWalkIterator, walk_shadow_page_lockless } from "../mmu/mmu.js";
import { is_shadow_present_pte, is_writable_pte, spte_leaf_pfn } from "../mmu/spte.js";
import { SoftTlb } from "./tlb.js";
import { paging_emulate_write, paging_miss, PagingState } from "./paging.js";
import { kvm_mmu_load_cr3 } from "../mmu/shadow_page.js";
import { mmu_topup_memory_caches } from "../mmu/mmu_cache.js";
import { VcpuState } from "../kvm/requests.js";

/** Run control values (VCPU.run), written by the VM owner. */
export const enum RunCtl {
  Run = 0,
  Pause = 1,
  Stop = 2,
  /** While paused: audit the TLB (Vcpu.tlbAudit), publish, report VcpuState.Audited. */
  Audit = 3,
}

/** Thrown out of the guest loop when the owner asks the vCPU to stop. */
export class VcpuStop extends Error {}

const POLL_EVERY = 256;

export class Vcpu {
  readonly kvm: Kvm;
  readonly id: number;
  readonly tlb: SoftTlb;
  readonly fault = new FaultStats();
  readonly mem: Int32Array;
  private readonly ctl: Int32Array;
  private readonly v: Int32Array;
  /** The TLB's entries and index mask, cached for the hit path. */
  private readonly tlbE: Int32Array;
  private readonly tlbMask: number;
  private countdown = POLL_EVERY;
  /**
   * Indices of this vCPU's mode and run words and of CTL.root, taken once from the layouts: the
   * miss path reads them on every miss, and a layout's index closure is not folded to a constant.
   */
  private readonly modeIx: number;
  private readonly runIx: number;
  private readonly rootIx: number;
  /** Shadow mode (fixed), and whether misses take the guest-paging path (shadow, or a CR3). */
  readonly shadow: boolean;
  private pagingMiss: boolean;
  /** Guest CR3: gfn of the top-level guest page table, 0 = paging off (addresses are gfns). */
  cr3 = 0;
  readonly paging = new PagingState(this.fault);
  /** The lockless walk of the TDP miss path and the TLB audit. */
  private readonly it = new ShadowWalkIterator();
  /** Guest accesses, counted by the guest programs (kept off the TLB-hit path). */
  writes = 0;
  reads = 0;
  tlbMisses = 0;

  constructor(kvm: Kvm, id: number, tlbBits = 12) {
    this.kvm = kvm;
    this.id = id;
    this.tlb = new SoftTlb(tlbBits);
    this.mem = kvm.mem;
    this.ctl = kvm.ctl;
    this.v = kvm.vcpu;
    this.tlbE = this.tlb.e;
    this.tlbMask = this.tlb.mask;
    this.shadow = kvm.mode === MmuMode.Shadow;
    this.pagingMiss = this.shadow;
    this.modeIx = VCPU.mode(id);
    this.runIx = VCPU.run(id);
    this.rootIx = CTL.root;
  }

  /** vcpu_enter_guest: process requests, then mode = IN, then re-check requests. */
  enterGuest(): void {
    const v = this.v;
    const id = this.id;
    for (;;) {
      const req = axchg(v, VCPU.requests(id), 0);
      if ((req & KVM_REQ_TLB_FLUSH) !== 0) this.tlb.flush();
      if ((req & KVM_REQ_DIRTY_RING_SOFT_FULL) !== 0) this.dirtyRingFull();
      astore(v, VCPU.mode(id), IN_GUEST_MODE);
      if (aload(v, VCPU.requests(id)) === 0) return;
      astore(v, VCPU.mode(id), OUTSIDE_GUEST_MODE);
    }
  }

  /** VM exit: mode = OUTSIDE; wakes a flusher that kicked us. */
  exitGuest(): void {
    const old = axchg(this.v, VCPU.mode(this.id), OUTSIDE_GUEST_MODE);
    if (old === EXITING_GUEST_MODE && !schedHookInstalled()) Atomics.notify(this.v, VCPU.mode(this.id));
  }

  /** A safe point in guest mode: acknowledge a kick, honour pause/stop. */
  safePoint(): void {
    this.countdown = POLL_EVERY;
    if (aload(this.v, this.modeIx) === EXITING_GUEST_MODE) {
      this.exitGuest();
      this.enterGuest();
    }
    if (aload(this.v, this.runIx) !== (RunCtl.Run as number)) this.runControl();
  }

  /**
   * KVM_EXIT_DIRTY_RING_FULL: outside guest mode, counted, until a reset brings the ring below
   * its soft limit (KVM re-arms the request so the vCPU cannot re-enter before). Pause, audit
   * and stop are honoured meanwhile.
   */
  private dirtyRingFull(): void {
    kvm_dirty_ring_full_exit(this.kvm, this.id);
    while (kvm_dirty_ring_wait(this.kvm, this.id))
      if (aload(this.v, this.runIx) !== (RunCtl.Run as number)) {
        this.parked();
        astore(this.v, VCPU.state(this.id), VcpuState.Running);
      }
  }

  private runControl(): void {
    this.parked();
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

  /** Guest store of 8 bytes (lo, hi) at word `w` (0..1022, even) of page gfn. */
  write64(gfn: number, w: number, lo: number, hi: number): void {
    const e = this.tlbE;
    const t = (gfn & this.tlbMask) << 1;
    if (--this.countdown === 0) this.safePoint();
    for (;;) {
      if (e[t] === gfn + 1) {
        const x = e[t + 1];
        if ((x & 1) !== 0) {
          const i = (x >>> 1) * PAGE_WORDS + w;
          guestPoint(true, this.mem, i);
          this.mem[i] = lo;
          this.mem[i + 1] = hi;
          return;
        }
      }
      if (this.miss(gfn, true)) {
        paging_emulate_write(this, this.paging, w, lo, hi, 2);
        return;
      }
    }
  }

  /**
   * Guest store of 4 bytes at word `w` of page `gfn` (a guest virtual page once a CR3 is loaded,
   * as for every access).
   */
  write32(gfn: number, w: number, x: number): void {
    const e = this.tlbE;
    const t = (gfn & this.tlbMask) << 1;
    if (--this.countdown === 0) this.safePoint();
    for (;;) {
      if (e[t] === gfn + 1) {
        const y = e[t + 1];
        if ((y & 1) !== 0) {
          const i = (y >>> 1) * PAGE_WORDS + w;
          guestPoint(true, this.mem, i);
          this.mem[i] = x;
          return;
        }
      }
      if (this.miss(gfn, true)) {
        paging_emulate_write(this, this.paging, w, x, 0, 1);
        return;
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
      } finally {
        this.enterGuest();
      }
    }
  }

  /** INVLPG: drops this vCPU's translation of one page (without unsync there is nothing to resync). */
  invlpg(gfn: number): void {
    const t = (gfn & this.tlbMask) << 1;
    if (this.tlbE[t] === gfn + 1) this.tlbE[t] = 0;
  }

  /** Guest load of the low 32 bits at word `w` of page gfn. */
  read32(gfn: number, w: number): number {
    const e = this.tlbE;
    const t = (gfn & this.tlbMask) << 1;
    if (--this.countdown === 0) this.safePoint();
    for (;;) {
      if (e[t] === gfn + 1) {
        const i = (e[t + 1] >>> 1) * PAGE_WORDS + w;
        guestPoint(false, this.mem, i);
        return this.mem[i];
      }
      this.miss(gfn, false);
    }
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
    const s = walk_shadow_page_lockless(this.kvm, aload(this.ctl, this.rootIx), gfn, this.it);
    const present = is_shadow_present_pte(s);
    if (present) {
      const writable = is_writable_pte(s);
      if (!write || writable) {
        this.tlb.fill(gfn, spte_leaf_pfn(s, this.it.level, gfn), writable);
        return false;
      }
    }
    this.exitGuest();
    tdp_page_fault(this.kvm, this.id, gfn, write, present, this.fault);
    this.enterGuest();
    return false;
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

/**
 * A vCPU as its worker thread sees it: guest accesses through the software TLB, TLB misses
 * walked locklessly in guest mode (as the hardware walks EPT tables), faults handled outside
 * guest mode, requests honoured at every entry, run control (pause/stop) at safe points.
 */
import {
  CTL_ROOT,
  EXITING_GUEST_MODE,
  IN_GUEST_MODE,
  Kvm,
  KVM_REQ_DIRTY_RING_SOFT_FULL,
  KVM_REQ_TLB_FLUSH,
  MmuMode,
  OUTSIDE_GUEST_MODE,
  PAGE_WORDS,
  ST_FAST_PF,
  ST_EMULATED,
  ST_FLUSHES_HANDLED,
  ST_GUEST_PF,
  ST_GUEST_WALKS,
  ST_LOCK_ACQ,
  ST_LOCK_HOLD_NS,
  ST_LOCK_WAIT_NS,
  ST_READS,
  ST_RETRIES,
  ST_SLOW_PF,
  ST_STRIDE,
  ST_TLB_AUDIT,
  ST_TLB_MISS,
  ST_WRITES,
  VCPU_CR3,
  VCPU_MODE,
  VCPU_PASSES,
  VCPU_REQUESTS,
  VCPU_RUN,
  VCPU_STATE,
  VCPU_STRIDE,
} from "../kvm_host.js";
import { aload, astore, axchg, guestPoint, schedHookInstalled } from "../sync/atomic.js";
import { kvm_dirty_ring_full_exit, kvm_dirty_ring_wait } from "../mmu/dirty_ring.js";
import { FaultStats, tdp_page_fault } from "../mmu/tdp_fault.js";
import {
  is_last_spte,
  is_shadow_present_pte,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  spte_to_pfn,
} from "../mmu/spte.js";
import { SoftTlb } from "./tlb.js";
import { paging_emulate_write, paging_miss, PagingState } from "./paging.js";
import { kvm_mmu_load_cr3 } from "../mmu/shadow.js";
import { VcpuState } from "./requests.js";

/** Run control values (VCPU_RUN), written by the VM owner. */
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
  readonly row: number;
  readonly tlb: SoftTlb;
  readonly fault = new FaultStats();
  readonly mem: Int32Array;
  private readonly spt: Int32Array;
  private readonly ctl: Int32Array;
  private readonly v: Int32Array;
  /** The TLB's entries and index mask, cached for the hit path. */
  private readonly tlbE: Int32Array;
  private readonly tlbMask: number;
  private countdown = POLL_EVERY;
  /** Shadow mode (fixed), and whether misses take the guest-paging path (shadow, or a CR3). */
  readonly shadow: boolean;
  private pagingMiss: boolean;
  /** Guest CR3: gfn of the top-level guest page table, 0 = paging off (addresses are gfns). */
  cr3 = 0;
  readonly paging = new PagingState();
  /** Guest accesses, counted by the guest programs (kept off the TLB-hit path). */
  writes = 0;
  reads = 0;
  tlbMisses = 0;

  constructor(kvm: Kvm, id: number, tlbBits = 12) {
    this.kvm = kvm;
    this.id = id;
    this.row = id * VCPU_STRIDE;
    this.tlb = new SoftTlb(tlbBits);
    this.mem = kvm.mem;
    this.spt = kvm.spt;
    this.ctl = kvm.ctl;
    this.v = kvm.vcpu;
    this.tlbE = this.tlb.e;
    this.tlbMask = this.tlb.mask;
    this.shadow = kvm.mode === MmuMode.Shadow;
    this.pagingMiss = this.shadow;
  }

  /** vcpu_enter_guest: process requests, then mode = IN, then re-check requests. */
  enterGuest(): void {
    const v = this.v;
    const r = this.row;
    for (;;) {
      const req = axchg(v, r + VCPU_REQUESTS, 0);
      if ((req & KVM_REQ_TLB_FLUSH) !== 0) this.tlb.flush();
      if ((req & KVM_REQ_DIRTY_RING_SOFT_FULL) !== 0) this.dirtyRingFull();
      astore(v, r + VCPU_MODE, IN_GUEST_MODE);
      if (aload(v, r + VCPU_REQUESTS) === 0) return;
      astore(v, r + VCPU_MODE, OUTSIDE_GUEST_MODE);
    }
  }

  /** VM exit: mode = OUTSIDE; wakes a flusher that kicked us. */
  exitGuest(): void {
    const old = axchg(this.v, this.row + VCPU_MODE, OUTSIDE_GUEST_MODE);
    if (old === EXITING_GUEST_MODE && !schedHookInstalled()) Atomics.notify(this.v, this.row + VCPU_MODE);
  }

  /** A safe point in guest mode: acknowledge a kick, honour pause/stop. */
  safePoint(): void {
    this.countdown = POLL_EVERY;
    if (aload(this.v, this.row + VCPU_MODE) === EXITING_GUEST_MODE) {
      this.exitGuest();
      this.enterGuest();
    }
    if (aload(this.v, this.row + VCPU_RUN) !== (RunCtl.Run as number)) this.runControl();
  }

  /**
   * KVM_EXIT_DIRTY_RING_FULL: outside guest mode, counted, until a reset brings the ring below
   * its soft limit (KVM re-arms the request so the vCPU cannot re-enter before). Pause, audit
   * and stop are honoured meanwhile.
   */
  private dirtyRingFull(): void {
    kvm_dirty_ring_full_exit(this.kvm, this.id);
    while (kvm_dirty_ring_wait(this.kvm, this.id))
      if (aload(this.v, this.row + VCPU_RUN) !== (RunCtl.Run as number)) {
        this.parked();
        astore(this.v, this.row + VCPU_STATE, VcpuState.Running);
      }
  }

  private runControl(): void {
    this.parked();
    astore(this.v, this.row + VCPU_STATE, VcpuState.Running);
    this.enterGuest();
  }

  /** Out of guest mode until the run control says Run (stop throws VcpuStop). */
  private parked(): void {
    const v = this.v;
    const r = this.row;
    for (;;) {
      const ctl = aload(v, r + VCPU_RUN);
      if (ctl === (RunCtl.Run as number)) break;
      this.exitGuest();
      if (ctl === (RunCtl.Stop as number)) throw new VcpuStop();
      if (ctl === (RunCtl.Audit as number)) {
        this.kvm.vcpuStats[this.id * ST_STRIDE + ST_TLB_AUDIT] = this.tlbAudit();
        astore(v, r + VCPU_STATE, VcpuState.Audited);
        Atomics.notify(v, r + VCPU_STATE);
        if (!schedHookInstalled()) Atomics.wait(v, r + VCPU_RUN, ctl, 100);
        continue;
      }
      this.publishStats();
      astore(v, r + VCPU_STATE, VcpuState.Paused);
      Atomics.notify(v, r + VCPU_STATE);
      if (!schedHookInstalled()) Atomics.wait(v, r + VCPU_RUN, ctl, 100);
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
    astore(this.v, this.row + VCPU_CR3, cr3);
    this.pagingMiss = this.shadow || cr3 !== 0;
    this.tlb.flush();
    if (this.shadow) {
      this.exitGuest();
      try {
        kvm_mmu_load_cr3(this.kvm, this.row, cr3);
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
   * miss goes to src/vcpu/paging.ts; true means "emulate this write" (shadow mode only).
   */
  private miss(gfn: number, write: boolean): boolean {
    this.tlbMisses++;
    this.safePoint();
    if (this.pagingMiss) return paging_miss(this, this.paging, gfn, write, this.shadow);
    let sp = aload(this.ctl, CTL_ROOT);
    let present = false;
    if (sp !== 0) {
      for (let level = PT64_ROOT_LEVEL; level >= 1; level--) {
        const s = aload(this.spt, sp * PT64_ENT_PER_PAGE + ((gfn >>> ((level - 1) * 9)) & 511));
        if (!is_shadow_present_pte(s)) break;
        if (is_last_spte(s, level)) {
          present = true;
          const writable = (s & 2) !== 0;
          if (write && !writable) break;
          const pfn = spte_to_pfn(s) + (level === 2 ? gfn & 511 : 0);
          this.tlb.fill(gfn, pfn, writable);
          return false;
        }
        sp = s >>> 8;
      }
    }
    this.exitGuest();
    tdp_page_fault(this.kvm, this.row, gfn, write, present, this.fault);
    this.enterGuest();
    return false;
  }

  /**
   * The TLB part of the MMU audit (reference §13; the TLB is private to this thread, so the vCPU
   * audits it itself, parked, when the owner asks with everything quiesced): once every flush
   * request has been honoured, no entry may allow a write that the spte does not — present,
   * writable, same frame. A pending KVM_REQ_TLB_FLUSH empties the TLB before its next use, so
   * then nothing is stale. TDP without guest paging only (elsewhere entries are keyed by gva).
   * Returns the number of bad entries.
   */
  tlbAudit(): number {
    if (this.pagingMiss) return 0;
    if ((aload(this.v, this.row + VCPU_REQUESTS) & KVM_REQ_TLB_FLUSH) !== 0) return 0;
    let bad = 0;
    for (const { gfn, pfn } of this.tlb.writableEntries()) {
      let sp = aload(this.ctl, CTL_ROOT);
      let ok = false;
      for (let level = PT64_ROOT_LEVEL; level >= 1 && sp !== 0; level--) {
        const s = aload(this.spt, sp * PT64_ENT_PER_PAGE + ((gfn >>> ((level - 1) * 9)) & 511));
        if (!is_shadow_present_pte(s)) break;
        if (is_last_spte(s, level)) {
          ok = (s & 2) !== 0 && spte_to_pfn(s) + (level === 2 ? gfn & 511 : 0) === pfn;
          break;
        }
        sp = s >>> 8;
      }
      if (!ok) bad++;
    }
    return bad;
  }

  publishStats(): void {
    const s = this.kvm.vcpuStats;
    const b = this.id * ST_STRIDE;
    const lock = this.kvm.mmu_lock.stats;
    s[b + ST_WRITES] = this.writes;
    s[b + ST_READS] = this.reads;
    s[b + ST_FAST_PF] = this.fault.fast;
    s[b + ST_SLOW_PF] = this.fault.slow;
    s[b + ST_RETRIES] = this.fault.retries;
    s[b + ST_TLB_MISS] = this.tlbMisses;
    s[b + ST_LOCK_WAIT_NS] = lock.waitNs;
    s[b + ST_LOCK_HOLD_NS] = lock.holdNs;
    s[b + ST_LOCK_ACQ] = lock.acquisitions;
    s[b + ST_FLUSHES_HANDLED] = this.tlb.flushes;
    const p = this.paging;
    s[b + ST_GUEST_WALKS] = p.guestWalks;
    s[b + ST_GUEST_PF] = p.guestFaults;
    s[b + ST_EMULATED] = p.emulated;
    if (this.shadow) {
      s[b + ST_FAST_PF] = this.fault.fast + p.stats.fast;
      s[b + ST_SLOW_PF] = this.fault.slow + p.stats.slow;
      s[b + ST_RETRIES] = this.fault.retries + p.stats.retries;
    }
  }

  passDone(): void {
    Atomics.add(this.v, this.row + VCPU_PASSES, 1);
  }
}

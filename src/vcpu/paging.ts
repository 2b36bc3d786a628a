/**
 * TLB misses of a vCPU whose guest has paging on (a CR3 is loaded), or of any vCPU in shadow
 * mode. The TLB is then keyed by guest virtual page (vpn) instead of gfn. Vcpu.miss dispatches
 * here once, on a flag; the TDP path with paging off (every existing workload) is untouched.
 *
 * shadow mode: the "hardware" walks the vCPU's shadow root (VCPU_ROOT) locklessly in guest mode,
 *   exactly as it walks the TDP root; on a miss the vCPU leaves guest mode and takes the shadow
 *   MMU's fault (src/mmu/shadow.ts), which walks the guest tables (walk_addr, setting A/D) and
 *   builds the shadow path. A write to a shadowed guest page table comes back as "emulate".
 * TDP mode with paging: the two-dimensional walk of EPT hardware. Each guest table is reached
 *   through the TDP tables (a missing or read-only TDP entry is an EPT violation: tdp_page_fault,
 *   then the walk restarts); A/D bits are set with cmpxchg on guest memory, which needs a
 *   writable TDP entry for the table's page (so setting them dirties it while logging).
 *
 * A guest page fault is delivered to the guest program as a GuestPageFault exception, thrown in
 * guest mode.
 */
import { CTL_ROOT, Kvm, PAGE_WORDS, VCPU_ROOT } from "../kvm_host.js";
import { acas, aload } from "../sync/atomic.js";
import { tdp_page_fault } from "../mmu/tdp_fault.js";
import {
  is_last_spte,
  is_shadow_present_pte,
  PT64_ENT_PER_PAGE,
  PT64_ROOT_LEVEL,
  spte_to_pfn,
  PT_WRITABLE_MASK,
} from "../mmu/spte.js";
import {
  ACC_ALL,
  ACC_WRITE_MASK,
  gpt_index,
  gpte_access,
  gpte_gfn,
  GPTE_A,
  GPTE_D,
  GPTE_P,
  GuestPageFault,
  is_last_gpte,
} from "../mmu/guest_pt.js";
import {
  emulate_guest_write,
  GuestWalker,
  SHADOW_EMULATE,
  shadow_page_fault,
  ShadowFaultStats,
  ShadowVcpuCtx,
} from "../mmu/shadow.js";
import type { Vcpu } from "./vcpu.js";

/** Per-vCPU state of guest paging. */
export class PagingState {
  readonly walker = new GuestWalker();
  readonly stats = new ShadowFaultStats();
  /** What the shadow fault path gets (one object per vCPU, updated per fault). */
  readonly ctx: ShadowVcpuCtx = { row: 0, cr3: 0, walker: this.walker, stats: this.stats };
  /** The gfn of the write to emulate after a SHADOW_EMULATE miss. */
  emulGfn = 0;
  guestWalks = 0;
  guestFaults = 0;
  emulated = 0;
}

/**
 * The lockless walk of TDP tables from CTL_ROOT for gfn, in guest mode. Returns
 * (pfn << 1) | writable, -1 if not present.
 */
function ept_lookup(kvm: Kvm, gfn: number): number {
  let sp = aload(kvm.ctl, CTL_ROOT);
  if (sp === 0) return -1;
  for (let level = PT64_ROOT_LEVEL; level >= 1; level--) {
    const s = aload(kvm.spt, sp * PT64_ENT_PER_PAGE + ((gfn >>> ((level - 1) * 9)) & 511));
    if (!is_shadow_present_pte(s)) return -1;
    if (is_last_spte(s, level)) {
      const pfn = spte_to_pfn(s) + (level === 2 ? gfn & 511 : 0);
      return (pfn << 1) | ((s & PT_WRITABLE_MASK) !== 0 ? 1 : 0);
    }
    sp = s >>> 8;
  }
  return -1;
}

/** An EPT violation on the way: take the TDP fault outside guest mode. */
function ept_violation(v: Vcpu, gfn: number, write: boolean, present: boolean): void {
  v.exitGuest();
  try {
    tdp_page_fault(v.kvm, v.row, gfn, write, present, v.fault);
  } finally {
    v.enterGuest();
  }
}

/** The 2D walk (TDP mode, guest paging on). Returns false (never emulates). */
function tdp_paging_miss(v: Vcpu, ps: PagingState, vpn: number, write: boolean): boolean {
  const kvm = v.kvm;
  const mem = kvm.mem;
  ps.guestWalks++;
  for (let attempt = 0; ; attempt++) {
    if (attempt > 100000) throw new Error(`2D walk of gva 0x${(vpn * 4096).toString(16)}: no progress`);
    if (attempt > 0) v.safePoint();
    let table = v.cr3;
    let access = ACC_ALL;
    let gfn = -1;
    let leafLo = 0;
    let restart = false;
    for (let level = PT64_ROOT_LEVEL; level >= 1; level--) {
      const t = ept_lookup(kvm, table);
      if (t < 0) {
        ept_violation(v, table, false, false);
        restart = true;
        break;
      }
      const idx = gpt_index(vpn, level);
      let lo = aload(mem, (t >>> 1) * PAGE_WORDS + idx * 2);
      const hi = aload(mem, (t >>> 1) * PAGE_WORDS + idx * 2 + 1);
      if ((lo & GPTE_P) === 0) {
        ps.guestFaults++;
        throw new GuestPageFault(vpn, write, false);
      }
      const leaf = is_last_gpte(lo, level);
      const need = GPTE_A | (leaf && write && (access & gpte_access(lo) & ACC_WRITE_MASK) !== 0 ? GPTE_D : 0);
      if ((lo & need) !== need) {
        // The MMU's locked cmpxchg of A/D: a write to the table's page through TDP.
        if ((t & 1) === 0) {
          ept_violation(v, table, true, true);
          restart = true;
          break;
        }
        if (acas(mem, (t >>> 1) * PAGE_WORDS + idx * 2, lo, lo | need) !== lo) {
          restart = true;
          break;
        }
        lo |= need;
      }
      access &= gpte_access(lo);
      if (leaf) {
        const g = gpte_gfn(lo, hi);
        gfn = level === 2 ? g - (g & 511) + (vpn & 511) : g;
        leafLo = lo;
        break;
      }
      table = gpte_gfn(lo, hi);
    }
    if (restart) continue;
    if (write && (access & ACC_WRITE_MASK) === 0) {
      ps.guestFaults++;
      throw new GuestPageFault(vpn, write, true);
    }
    const t = ept_lookup(kvm, gfn);
    if (t < 0 || (write && (t & 1) === 0)) {
      ept_violation(v, gfn, write, t >= 0);
      continue;
    }
    const writable = (access & ACC_WRITE_MASK) !== 0 && (leafLo & GPTE_D) !== 0 && (t & 1) !== 0;
    v.tlb.fill(vpn, t >>> 1, writable);
    return false;
  }
}

/** Shadow mode: walk the shadow root in guest mode, else fault. Returns true to emulate a write. */
function shadow_miss(v: Vcpu, ps: PagingState, vpn: number, write: boolean): boolean {
  const kvm = v.kvm;
  let present = false;
  let sp = aload(kvm.vcpu, v.row + VCPU_ROOT);
  if (sp !== 0) {
    for (let level = PT64_ROOT_LEVEL; level >= 1; level--) {
      const s = aload(kvm.spt, sp * PT64_ENT_PER_PAGE + ((vpn >>> ((level - 1) * 9)) & 511));
      if (!is_shadow_present_pte(s)) break;
      if (is_last_spte(s, level)) {
        present = true;
        const writable = (s & PT_WRITABLE_MASK) !== 0;
        if (write && !writable) break;
        v.tlb.fill(vpn, spte_to_pfn(s) + (level === 2 ? vpn & 511 : 0), writable);
        return false;
      }
      sp = s >>> 8;
    }
  }
  v.exitGuest();
  let r: number;
  try {
    if (v.cr3 !== 0) ps.guestWalks++;
    const ctx = ps.ctx;
    ctx.row = v.row;
    ctx.cr3 = v.cr3;
    r = shadow_page_fault(kvm, ctx, vpn, write, present);
  } catch (e) {
    v.enterGuest();
    if (e instanceof GuestPageFault) ps.guestFaults++;
    throw e;
  }
  v.enterGuest();
  if (r === SHADOW_EMULATE) {
    ps.emulGfn = ps.walker.gfn;
    return true;
  }
  return false;
}

/** Vcpu.miss with guest paging or in shadow mode. True: the write must be emulated. */
export function paging_miss(v: Vcpu, ps: PagingState, vpn: number, write: boolean, shadow: boolean): boolean {
  return shadow ? shadow_miss(v, ps, vpn, write) : tdp_paging_miss(v, ps, vpn, write);
}

/** The emulated store (outside guest mode), for a SHADOW_EMULATE miss. */
export function paging_emulate_write(
  v: Vcpu,
  ps: PagingState,
  w: number,
  lo: number,
  hi: number,
  words: number,
): void {
  ps.emulated++;
  v.exitGuest();
  try {
    if (emulate_guest_write(v.kvm, ps.emulGfn, w, lo, hi, words)) v.tlb.flush(); // kvm_mmu_flush_tlb
  } finally {
    v.enterGuest();
  }
}

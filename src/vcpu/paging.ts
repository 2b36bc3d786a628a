/**
 * TLB misses of a vCPU whose guest has paging on (a CR3 is loaded), or of any vCPU in shadow
 * mode. The TLB is then keyed by guest virtual page (vpn) instead of gfn. Vcpu.miss dispatches
 * here once, on a flag; the TDP path with paging off (every existing workload) is untouched.
 *
 * shadow mode: the "hardware" walks the vCPU's shadow root (VCPU.root) locklessly in guest mode,
 *   exactly as it walks the TDP root; on a miss the vCPU leaves guest mode and takes the shadow
 *   MMU's fault (src/mmu/paging_tmpl.ts), which walks the guest tables (walk_addr, setting A/D) and
 *   builds the shadow path. A write to a shadowed guest page table comes back as "emulate".
 * TDP mode with paging: the two-dimensional walk of EPT hardware. Each guest table is reached
 *   through the TDP tables (a missing or read-only TDP entry is an EPT violation: tdp_page_fault,
 *   then the walk restarts); A/D bits are set with cmpxchg on guest memory, which needs a
 *   writable TDP entry for the table's page (so setting them dirties it while logging).
 *
 * A guest page fault is delivered to the guest program as a GuestPageFault exception, thrown in
 * guest mode.
 */
import { CTL, Kvm, PAGE_WORDS, VCPU } from "../kvm_host.js";
import { acas, aload } from "../sync/atomic.js";
import { KvmPageFault, ShadowWalkIterator, walk_shadow_page_lockless } from "../mmu/mmu.js";
import { PFERR_PRESENT_MASK, PFERR_WRITE_MASK, RET_PF_EMULATE } from "../mmu/kvm_mmu.js";
import { is_shadow_present_pte, is_writable_pte, PT64_ROOT_LEVEL, spte_leaf_pfn } from "../mmu/spte.js";
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
import { emulate_guest_write } from "../mmu/pte_write.js";
import type { SoftTlb } from "./tlb.js";

/** What the miss paths need of a vCPU (the Vcpu class; an interface keeps vcpu.ts above this file). */
export interface PagingVcpu {
  readonly kvm: Kvm;
  readonly id: number;
  readonly tlb: SoftTlb;
  /** The vCPU's fault record (its walker has the last shadow fault's guest walk). */
  readonly pf: KvmPageFault;
  readonly cr3: number;
  /** Vcpu.pageFault: the one call into the MMU (leaves and re-enters guest mode). */
  pageFault(addr: number, errorCode: number): number;
  exitGuest(): void;
  enterGuest(): void;
  enterGuestAfter(first: unknown): void;
  safePoint(): void;
}

/** Per-vCPU state of guest paging. */
export class PagingState {
  /** The lockless walks of the miss paths. */
  readonly it = new ShadowWalkIterator();
  /** The gfn of the write to emulate after a SHADOW_EMULATE miss. */
  emulGfn = 0;
  guestWalks = 0;
  guestFaults = 0;
  emulated = 0;
}

/** The lockless walk of TDP tables from CTL.root for gfn, in guest mode: the leaf, or not present. */
function ept_lookup(kvm: Kvm, it: ShadowWalkIterator, gfn: number): number {
  return walk_shadow_page_lockless(kvm, aload(kvm.ctl, CTL.root), gfn, it);
}

/** An EPT violation on the way: take the TDP fault outside guest mode. */
function ept_violation(v: PagingVcpu, gfn: number, write: boolean, present: boolean): void {
  v.pageFault(gfn, (present ? PFERR_PRESENT_MASK : 0) | (write ? PFERR_WRITE_MASK : 0));
}

/** The 2D walk (TDP mode, guest paging on). Returns false (never emulates). */
function tdp_paging_miss(v: PagingVcpu, ps: PagingState, vpn: number, write: boolean): boolean {
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
      const t = ept_lookup(kvm, ps.it, table);
      if (!is_shadow_present_pte(t)) {
        ept_violation(v, table, false, false);
        restart = true;
        break;
      }
      const idx = gpt_index(vpn, level);
      const tw = spte_leaf_pfn(t, ps.it.level, table) * PAGE_WORDS + idx * 2;
      let lo = aload(mem, tw);
      const hi = aload(mem, tw + 1);
      if ((lo & GPTE_P) === 0) {
        ps.guestFaults++;
        throw new GuestPageFault(vpn, write, false);
      }
      const leaf = is_last_gpte(lo, level);
      const need = GPTE_A | (leaf && write && (access & gpte_access(lo) & ACC_WRITE_MASK) !== 0 ? GPTE_D : 0);
      if ((lo & need) !== need) {
        // The MMU's locked cmpxchg of A/D: a write to the table's page through TDP.
        if (!is_writable_pte(t)) {
          ept_violation(v, table, true, true);
          restart = true;
          break;
        }
        if (acas(mem, tw, lo, lo | need) !== lo) {
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
    const t = ept_lookup(kvm, ps.it, gfn);
    if (!is_shadow_present_pte(t) || (write && !is_writable_pte(t))) {
      ept_violation(v, gfn, write, is_shadow_present_pte(t));
      continue;
    }
    const writable = (access & ACC_WRITE_MASK) !== 0 && (leafLo & GPTE_D) !== 0 && is_writable_pte(t);
    v.tlb.fill(vpn, spte_leaf_pfn(t, ps.it.level, gfn), writable);
    return false;
  }
}

/** Shadow mode: walk the shadow root in guest mode, else fault. Returns true to emulate a write. */
function shadow_miss(v: PagingVcpu, ps: PagingState, vpn: number, write: boolean): boolean {
  const kvm = v.kvm;
  const s = walk_shadow_page_lockless(kvm, aload(kvm.vcpu, VCPU.root(v.id)), vpn, ps.it);
  const present = is_shadow_present_pte(s);
  if (present) {
    const writable = is_writable_pte(s);
    if (!write || writable) {
      v.tlb.fill(vpn, spte_leaf_pfn(s, ps.it.level, vpn), writable);
      return false;
    }
  }
  if (v.cr3 !== 0) ps.guestWalks++;
  let r: number;
  try {
    r = v.pageFault(vpn, (present ? PFERR_PRESENT_MASK : 0) | (write ? PFERR_WRITE_MASK : 0));
  } catch (e) {
    if (e instanceof GuestPageFault) ps.guestFaults++;
    throw e;
  }
  if (r === RET_PF_EMULATE) {
    ps.emulGfn = v.pf.walker.gfn;
    return true;
  }
  return false;
}

/** Vcpu.miss with guest paging or in shadow mode. True: the write must be emulated. */
export function paging_miss(
  v: PagingVcpu,
  ps: PagingState,
  vpn: number,
  write: boolean,
  shadow: boolean,
): boolean {
  return shadow ? shadow_miss(v, ps, vpn, write) : tdp_paging_miss(v, ps, vpn, write);
}

/** The emulated store (outside guest mode), for a SHADOW_EMULATE miss. */
export function paging_emulate_write(
  v: PagingVcpu,
  ps: PagingState,
  w: number,
  lo: number,
  hi: number,
  words: number,
): void {
  ps.emulated++;
  v.exitGuest();
  try {
    if (emulate_guest_write(v.kvm, v.pf, ps.emulGfn, w, lo, hi, words)) v.tlb.flush(); // kvm_mmu_flush_tlb
  } catch (e) {
    v.enterGuestAfter(e);
    throw e;
  }
  v.enterGuest();
}

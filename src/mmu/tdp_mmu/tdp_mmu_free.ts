/**
 * TDP MMU page tables: allocation from the vCPU's memory cache (tdp_mmu_alloc_sp) and freeing
 * after a grace period (handle_removed_pt in tdp_mmu_spte.ts queues, tdp_mmu_commit_free frees).
 *
 * A table unlinked under the read lock may still be walked by: other read-lock holders (faults,
 * zaps), vCPUs in guest mode (their TLB-miss walks), fast_page_fault (no lock,
 * READING_SHADOW_PAGE_TABLES) and RCU readers outside vCPU context. KVM frees it with call_rcu;
 * here the grace period is the three things that end each kind of reader:
 *   1. a remote TLB flush after the unlink (vCPUs in guest mode or in a lockless walk ack it),
 *   2. an RCU epoch (kvm.rcu) for the non-vCPU readers,
 *   3. reuse only under mmu_lock held for write (sp_pool_pop), which no read holder shares.
 * handle_removed_pt queues the table on this thread's list; tdp_mmu_commit_free, called by every
 * entry point before it drops mmu_lock, does 1 and 2 and puts the tables on the pending list,
 * from which the pool reclaims them under the write lock (3).
 *
 * The children of a removed table are frozen (FROZEN_SPTE), never cleared: a thread that read a
 * child before the unlink and cmpxchg's it now fails instead of writing into a dead table. A
 * table is zeroed when it is allocated again.
 */
import { CTL, Kvm, SP, VCPU } from "../../kvm_host.js";
import { aadd, acas, aload } from "../../sync/atomic.js";
import { kvm_flush_remote_tlbs } from "../../kvm/requests.js";
import { KVM_NR_PAGE_SIZES, PT64_ENT_PER_PAGE } from "../spte.js";
import { tdp_mmu_state } from "./tdp_mmu_state.js";
import { trace_kvm_mmu_get_page } from "../mmutrace.js";
import { sp_init } from "../mmu_page.js";

/**
 * tdp_mmu_alloc_sp + tdp_mmu_init_sp: a zeroed table for [gfn, ...) at `level` from the memory
 * cache of vCPU `vcpuId` (filled under the write lock by mmu_topup_memory_caches before the
 * fault took the read lock), or from this thread's stash (tdp_mmu_state). -1 when both are
 * empty (the caller retries). Only the owning vCPU pops its cache, so under the read lock the
 * list words need no atomics; the shared counters do.
 */
export function tdp_mmu_alloc_sp(kvm: Kvm, vcpuId: number, gfn: number, level: number): number {
  let sp = -1;
  if (vcpuId >= 0) {
    const head = kvm.vcpu[VCPU.sp_cache(vcpuId)];
    if (head !== 0) {
      sp = head - 1;
      kvm.vcpu[VCPU.sp_cache(vcpuId)] = kvm.spHdr[SP.next(sp)];
      kvm.vcpu[VCPU.sp_cache_n(vcpuId)]--;
      aadd(kvm.ctl, CTL.sp_cached, -1);
    }
  }
  if (sp < 0) {
    const st = tdp_mmu_state(kvm);
    if (st.stash.length === 0) return -1;
    sp = st.stash.pop()!;
  }
  aadd(kvm.ctl, CTL.sp_used, 1);
  sp_init(kvm, sp, gfn, level);
  // The table is private until a cmpxchg links it; that seq-cst write publishes these.
  kvm.spt.fill(0, sp * PT64_ENT_PER_PAGE, (sp + 1) * PT64_ENT_PER_PAGE);
  if (kvm.trace.on) trace_kvm_mmu_get_page(kvm, sp, true);
  return sp;
}

/** tdp_mmu_free_sp for a table that was never linked: back where it came from. */
export function tdp_mmu_unalloc_sp(kvm: Kvm, vcpuId: number, sp: number): void {
  aadd(kvm.ctl, CTL.sp_used, -1);
  if (vcpuId < 0) {
    tdp_mmu_state(kvm).stash.push(sp);
    return;
  }
  kvm.spHdr[SP.next(sp)] = kvm.vcpu[VCPU.sp_cache(vcpuId)];
  kvm.vcpu[VCPU.sp_cache(vcpuId)] = sp + 1;
  kvm.vcpu[VCPU.sp_cache_n(vcpuId)]++;
  aadd(kvm.ctl, CTL.sp_cached, 1);
}

/**
 * The call_rcu of every table this thread removed since its last commit: a remote flush (vCPU
 * walkers), an RCU epoch (other lockless readers), then onto the pending list that the pool
 * reclaims under the write lock (tdp_mmu_free_sp_rcu_callback's kfree). Returns true if it
 * flushed. mmu_lock held in either mode; several read holders may push at once (cmpxchg).
 */
export function tdp_mmu_commit_free(kvm: Kvm): boolean {
  const pend = tdp_mmu_state(kvm).rcuPending;
  if (pend.length === 0) return false;
  kvm_flush_remote_tlbs(kvm);
  const epoch = kvm.rcu.retireEpoch();
  const h = kvm.spHdr;
  for (const sp of pend) {
    h[SP.retire_epoch(sp)] = epoch;
    for (;;) {
      const head = aload(kvm.ctl, CTL.sp_pending);
      h[SP.next(sp)] = head;
      if (acas(kvm.ctl, CTL.sp_pending, head, sp + 1) === head) break;
    }
    aadd(kvm.ctl, CTL.sp_used, -1);
  }
  tdp_mmu_state(kvm).freed += pend.length;
  pend.length = 0;
  return true;
}

/** Levels a table can have below the root: the most tables one fault allocates. */
export const TDP_MMU_MAX_NEW_TABLES = KVM_NR_PAGE_SIZES;

/**
 * What the TDP MMU keeps per thread and VM (a Kvm object is private to one thread): the tables
 * this thread removed and has not yet handed to the grace period, pages it took from the pool
 * for work outside vCPU context (eager splitting), counters, and the tests' yield knob.
 */
import { Kvm } from "../../kvm_host.js";

export class TdpMmuState {
  /** Tables removed by handle_removed_pt, waiting for tdp_mmu_commit_free. */
  readonly rcuPending: number[] = [];
  /** Pages taken from the pool under the write lock for splits outside a vCPU (zeroed on use). */
  readonly stash: number[] = [];
  /** Tables handed to the grace period (statistic). */
  freed = 0;
  /** Yields taken by tdp_mmu_iter_cond_resched (statistic). */
  yields = 0;
  /** Flushes done before a yield (statistic). */
  yieldFlushes = 0;
  /** Huge pages split (eager and in faults) (statistic). */
  splits = 0;
  /**
   * Tests: yield every n-th time tdp_mmu_iter_cond_resched could (0: only when mmu_lock is
   * contended, as rwlock_needbreak). Stands for need_resched().
   */
  forceYieldEvery = 0;
  resched = 0;
}

const states = new WeakMap<Kvm, TdpMmuState>();

export function tdp_mmu_state(kvm: Kvm): TdpMmuState {
  let s = states.get(kvm);
  if (s === undefined) {
    s = new TdpMmuState();
    states.set(kvm, s);
  }
  return s;
}

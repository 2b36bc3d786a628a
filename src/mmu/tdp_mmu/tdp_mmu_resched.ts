/**
 * tdp_mmu_iter_cond_resched: where a long walk may yield mmu_lock.
 *
 * A long walk drops mmu_lock when a waiter needs it (rwlock_needbreak) or the scheduler wants the
 * CPU (need_resched(): the tests' knob in tdp_mmu_state, and under the explorer a choice of the
 * schedule, sched_preempted_at). Three rules, each a bug KVM fixed:
 *  - yield only after forward progress (next_last_level_gfn moved since the last yield), or two
 *    threads can take turns yielding forever;
 *  - flush a pending TLB flush before dropping the lock (a835429cda91: another thread could
 *    otherwise see the zapped spte, skip its own flush, and free the page while a vCPU still
 *    maps it);
 *  - after the yield the walk restarts from the root (tdp_iter_next sees `yielded`): the tables
 *    it stood on may be gone.
 */
import { CTL, Kvm } from "../../kvm_host.js";
import { spinPoint } from "../../sync/atomic.js";
import { kvm_flush_remote_tlbs } from "../../kvm/requests.js";
import { sched_preempted_at } from "../../sync/sched.js";
import { TdpIter } from "./tdp_iter.js";
import { BUG_TDP } from "./tdp_mmu_bugs.js";
import { tdp_mmu_commit_free } from "./tdp_mmu_free.js";
import { tdp_mmu_state } from "./tdp_mmu_state.js";

/**
 * Returns true when it yielded: the caller's pending flush is done (it clears its `flush`) and
 * its next tdp_iter_next restarts at the root. `shared`: the read lock is held.
 */
export function tdp_mmu_iter_cond_resched(kvm: Kvm, iter: TdpIter, flush: boolean, shared: boolean): boolean {
  // Forward progress first.
  if (iter.next_last_level_gfn === iter.yielded_gfn) return false;
  const st = tdp_mmu_state(kvm);
  // need_resched(): the tests' knob, or, under the explorer, a choice of the schedule.
  const need_resched =
    (st.forceYieldEvery > 0 && ++st.resched % st.forceYieldEvery === 0) ||
    sched_preempted_at(kvm.ctl, CTL.mmu_lock);
  if (!need_resched && !kvm.mmu_lock.needbreak()) return false;
  if (flush && !kvm.bug(BUG_TDP["tdp-zap-yield-noflush"])) {
    kvm_flush_remote_tlbs(kvm);
    st.yieldFlushes++;
  }
  // Removed tables go to their grace period before the lock is dropped (rcu_read_unlock).
  tdp_mmu_commit_free(kvm);
  if (shared) {
    kvm.mmu_lock.read_unlock();
    spinPoint(kvm.ctl, CTL.mmu_lock);
    kvm.mmu_lock.read_lock();
  } else {
    kvm.mmu_lock.write_unlock();
    spinPoint(kvm.ctl, CTL.mmu_lock);
    kvm.mmu_lock.write_lock();
  }
  st.yields++;
  iter.yielded = true;
  return true;
}

/** A fresh iterator carrying the VM's bug switch for 3a0f64de479c. */
export function tdp_iter_for(kvm: Kvm): TdpIter {
  const it = new TdpIter();
  it.skipAfterRestart = kvm.bug(BUG_TDP["tdp-iter-skip"]);
  return it;
}

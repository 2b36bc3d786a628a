/**
 * struct tdp_iter (KVM's tdp_iter.c/.h): a pre-order walk of the TDP tables under one root over
 * [start, end) gfns, down to min_level. The walk holds no reference into the tables between
 * steps other than pt_path (the table of each level on the current path): the tables it stands
 * on stay allocated while the walker holds mmu_lock (a freed table is reused only under the
 * write lock, tdp_mmu_free.ts) or, for the lockless walkers, until the flush after their removal.
 *
 * try_step_down re-reads the spte (another thread may have changed it since the iterator read
 * old_spte: a table zapped under the read lock must not be entered). After a yield the walk
 * restarts from the root at next_last_level_gfn instead of advancing (3a0f64de479c: advancing
 * after the restart skipped sptes).
 */
import { Kvm, KVM_PAGES_PER_HPAGE } from "../../kvm_host.js";
import { aload, aread } from "../../sync/atomic.js";
import {
  is_last_spte,
  is_shadow_present_pte,
  PT64_ENT_PER_PAGE,
  PT64_INDEX,
  PT64_ROOT_LEVEL,
  spte_to_child_sp,
} from "../spte.js";

/** Bug 3a0f64de479c: tdp_iter_next steps on after a restart (set per iterator by the caller). */
export class TdpIter {
  /** The gfn the walk continues from at level 1: the restart point after a yield. */
  next_last_level_gfn = 0;
  /** next_last_level_gfn when the walk last yielded: a yield needs progress past it. */
  yielded_gfn = 0;
  /** pt_path[level - 1]: the shadow page of the table at `level` on the current path. */
  readonly pt_path = new Int32Array(PT64_ROOT_LEVEL);
  /** Index in kvm.spt of the current spte. */
  sptep = -1;
  /** The first gfn the current spte maps. */
  gfn = 0;
  root_level = PT64_ROOT_LEVEL;
  min_level = 1;
  level = PT64_ROOT_LEVEL;
  /** The spte's value as the iterator last read it (cmpxchg's expected value). */
  old_spte = 0;
  /** False once the walk has passed the end of the address space or had no root. */
  valid = false;
  /** The walk dropped mmu_lock (tdp_mmu_iter_cond_resched): the next step restarts at the root. */
  yielded = false;
  /** Bug "tdp-iter-skip" (3a0f64de479c): after a restart the next step also advances. */
  skipAfterRestart = false;
  /** Steps taken (statistic; tests count them). */
  steps = 0;
}

function round_gfn_for_level(gfn: number, level: number): number {
  return gfn - (gfn % KVM_PAGES_PER_HPAGE(level));
}

function tdp_iter_refresh_sptep(kvm: Kvm, iter: TdpIter): void {
  iter.sptep = iter.pt_path[iter.level - 1] * PT64_ENT_PER_PAGE + PT64_INDEX(iter.gfn, iter.level);
  iter.old_spte = aload(kvm.spt, iter.sptep);
}

/** tdp_iter_restart: back to the root, at next_last_level_gfn. */
export function tdp_iter_restart(kvm: Kvm, iter: TdpIter): void {
  iter.yielded = false;
  iter.yielded_gfn = iter.next_last_level_gfn;
  iter.level = iter.root_level;
  iter.gfn = round_gfn_for_level(iter.next_last_level_gfn, iter.level);
  tdp_iter_refresh_sptep(kvm, iter);
  iter.valid = true;
}

/** tdp_iter_start: a walk of `root` (0: none, the walk is empty) from gfn `start`. */
export function tdp_iter_start(kvm: Kvm, iter: TdpIter, root: number, minLevel: number, start: number): void {
  iter.valid = false;
  iter.yielded = false;
  iter.steps = 0;
  if (root === 0) return;
  iter.root_level = PT64_ROOT_LEVEL;
  iter.min_level = minLevel;
  iter.next_last_level_gfn = start;
  iter.pt_path[iter.root_level - 1] = root;
  tdp_iter_restart(kvm, iter);
}

/** Steps into the table the current spte links to, re-reading the spte first. */
function try_step_down(kvm: Kvm, iter: TdpIter): boolean {
  if (iter.level === iter.min_level) return false;
  // The spte may have changed since old_spte was read (a zap under the read lock).
  iter.old_spte = aload(kvm.spt, iter.sptep);
  if (!is_shadow_present_pte(iter.old_spte) || is_last_spte(iter.old_spte, iter.level)) return false;
  iter.level--;
  iter.pt_path[iter.level - 1] = spte_to_child_sp(iter.old_spte);
  iter.gfn = round_gfn_for_level(iter.next_last_level_gfn, iter.level);
  tdp_iter_refresh_sptep(kvm, iter);
  return true;
}

/** The next spte of the same table, if the current one is not its last. */
function try_step_side(kvm: Kvm, iter: TdpIter): boolean {
  if (PT64_INDEX(iter.gfn, iter.level) === PT64_ENT_PER_PAGE - 1) return false;
  iter.gfn += KVM_PAGES_PER_HPAGE(iter.level);
  iter.next_last_level_gfn = iter.gfn;
  iter.sptep++;
  // READ_ONCE: every user validates the value by the atomic that changes the spte, or, under
  // the write lock, changes only sptes no lockless writer touches without one (the hot step of
  // every walk: Atomics.load is a builtin call).
  iter.old_spte = aread(kvm.spt, iter.sptep);
  return true;
}

function try_step_up(kvm: Kvm, iter: TdpIter): boolean {
  if (iter.level === iter.root_level) return false;
  iter.level++;
  iter.gfn = round_gfn_for_level(iter.gfn, iter.level);
  tdp_iter_refresh_sptep(kvm, iter);
  return true;
}

/**
 * tdp_iter_next: pre-order. After a yield the walk restarts at the root and goes no further
 * this step: the spte at next_last_level_gfn has not been visited yet.
 */
export function tdp_iter_next(kvm: Kvm, iter: TdpIter): void {
  iter.steps++;
  if (iter.yielded) {
    tdp_iter_restart(kvm, iter);
    if (!iter.skipAfterRestart) return;
    // Bug 3a0f64de479c: the step below moves past the spte the restart landed on.
  }
  if (try_step_down(kvm, iter)) return;
  do {
    if (try_step_side(kvm, iter)) return;
  } while (try_step_up(kvm, iter));
  iter.valid = false;
}

/** for_each_tdp_pte_min_level's condition: the walk is on an spte below `end`. */
export function tdp_iter_in_range(iter: TdpIter, end: number): boolean {
  return iter.valid && iter.gfn < end;
}

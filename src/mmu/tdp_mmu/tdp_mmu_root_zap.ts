/**
 * Tearing a TDP MMU root down (tdp_mmu.c's tdp_mmu_zap_root, kvm_tdp_mmu_put_root,
 * kvm_tdp_mmu_invalidate_all_roots) and walking the VM's root with a reference held
 * (for_each_tdp_mmu_root_yield_safe).
 *
 * Whoever drops a root's last reference zaps the root's own entries in a walk that may yield
 * mmu_lock (each zapped link takes its table and the tables below it: handle_removed_pt), and
 * only then frees the root table itself; a table left linked from it is never freed (leaked, and
 * its leaves keep mapping pages nobody will tell KVM about). The root is invalid and unreachable
 * by vCPUs by then (the invalidation flushed), so the walk owes no TLB flush.
 */
import { CTL, Kvm, ROLE_INVALID, SP } from "../../kvm_host.js";
import { lockdep_assert_held, lockdep_assert_held_write } from "../../kvm/lockdep.js";
import { aadd, aload, aor, astore } from "../../sync/atomic.js";
import { kvm_flush_remote_tlbs } from "../../kvm/requests.js";
import { is_shadow_present_pte, PT64_ROOT_LEVEL } from "../spte.js";
import { tdp_iter_in_range, tdp_iter_next, tdp_iter_start } from "./tdp_iter.js";
import { tdp_mmu_commit_free } from "./tdp_mmu_free.js";
import { tdp_iter_for, tdp_mmu_iter_cond_resched } from "./tdp_mmu_resched.js";
import { kvm_tdp_mmu_get_root } from "./tdp_mmu_root.js";
import { tdp_mmu_iter_set_spte, tdp_mmu_set_spte_atomic } from "./tdp_mmu_spte.js";
import { tdp_mmu_state } from "./tdp_mmu_state.js";

/** tdp_mmu_max_gfn_exclusive: the end of the 43-bit guest-physical space (set_memslot.ts). */
export const TDP_MMU_MAX_GFN_EXCLUSIVE = 2 ** 31;

/**
 * __tdp_mmu_zap_root: one pass over the whole root (for_each_tdp_pte_min_level_all) zapping every
 * present spte at zap_level (a link takes its table with it: handle_removed_pt). Yields where
 * tdp_mmu_iter_cond_resched says; after a yield the walk restarts at the root, at the gfn it had
 * reached (3a0f64de479c: the iterator must not also advance, or a root-level pass skips an entry).
 */
function __tdp_mmu_zap_root(kvm: Kvm, root: number, shared: boolean, zap_level: number): void {
  const iter = tdp_iter_for(kvm);
  for (
    tdp_iter_start(kvm, iter, root, zap_level, 0);
    tdp_iter_in_range(iter, TDP_MMU_MAX_GFN_EXCLUSIVE);
    tdp_iter_next(kvm, iter)
  ) {
    // retry:
    for (;;) {
      if (tdp_mmu_iter_cond_resched(kvm, iter, false, shared)) break;
      if (!is_shadow_present_pte(iter.old_spte) || iter.level > zap_level) break;
      if (!shared) {
        tdp_mmu_iter_set_spte(kvm, iter, 0);
        break;
      }
      if (tdp_mmu_set_spte_atomic(kvm, iter, 0) === 0) break;
    }
  }
}

/**
 * tdp_mmu_zap_root: one pass at the root level, as 5.16's zap_gfn_range did when zapping all
 * (min_level = the root's level: "zapping the top-level non-leaf SPTEs will recurse on their
 * children"). 6.x runs passes at 4 KiB, 2 MiB and 1 GiB first, only to yield sooner inside a
 * big subtree; its last pass is this one, the walk 3a0f64de479c is about.
 */
export function tdp_mmu_zap_root(kvm: Kvm, root: number, shared: boolean): void {
  lockdep_assert_held(kvm);
  __tdp_mmu_zap_root(kvm, root, shared, PT64_ROOT_LEVEL);
}

/**
 * kvm_tdp_mmu_put_root: drops a reference; the last one zaps the root (tdp_mmu_zap_root, which
 * may yield) and frees its table after the grace period (tdp_mmu_free_sp_rcu_callback: the root
 * alone, its entries are all zapped). `shared`: the read lock is held.
 */
export function kvm_tdp_mmu_put_root(kvm: Kvm, root: number, shared: boolean): void {
  lockdep_assert_held(kvm);
  if (aadd(kvm.spHdr, SP.root_count(root), -1) !== 1) return;
  tdp_mmu_zap_root(kvm, root, shared);
  tdp_mmu_state(kvm).rcuPending.push(root);
  tdp_mmu_commit_free(kvm);
}

/**
 * for_each_tdp_mmu_root_yield_safe: runs fn on the VM's valid root with a reference held, so
 * that fn may yield. Returns fn's result (false without a root).
 */
export function tdp_mmu_with_root(kvm: Kvm, shared: boolean, fn: (root: number) => boolean): boolean {
  const root = aload(kvm.ctl, CTL.root);
  if (!kvm_tdp_mmu_get_root(kvm, root)) return false;
  try {
    return fn(root);
  } finally {
    kvm_tdp_mmu_put_root(kvm, root, shared);
  }
}

/**
 * kvm_tdp_mmu_invalidate_all_roots: the current root becomes invalid and unused (CTL.root = 0;
 * the next fault builds a new one); the flush makes every vCPU drop translations through it; the
 * VM's reference is dropped, so the root is zapped now (the zap may yield mmu_lock) or by its
 * last walker. mmu_lock held for write (KVM: or slots_lock with no vCPU running).
 */
export function kvm_tdp_mmu_invalidate_all_roots(kvm: Kvm): boolean {
  lockdep_assert_held_write(kvm);
  const root = kvm.ctl[CTL.root];
  if (root === 0) return false;
  aor(kvm.spHdr, SP.role(root), ROLE_INVALID);
  astore(kvm.ctl, CTL.root, 0);
  kvm_flush_remote_tlbs(kvm);
  kvm_tdp_mmu_put_root(kvm, root, false);
  return true;
}

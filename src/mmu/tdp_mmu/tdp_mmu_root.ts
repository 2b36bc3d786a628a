/**
 * TDP MMU roots (tdp_mmu.c's kvm_tdp_mmu_get_vcpu_root_hpa, kvm_tdp_mmu_get_root; putting and
 * invalidating them: tdp_mmu_root_zap.ts).
 *
 * The VM's current root is CTL.root (the vCPUs' walks load it: every vCPU of a TDP VM shares one
 * root, as KVM's vCPUs of one role do). SP.root_count is its refcount: the VM holds one reference
 * while CTL.root names it, and every walk of a root (for_each_tdp_mmu_root_yield_safe) holds
 * another while it may drop mmu_lock. ROLE_INVALID is the invalid flag: an invalidated root gets
 * no new references, and whoever drops its last one zaps it and frees its tables.
 */
import { CTL, Kvm, ROLE_INVALID, SP } from "../../kvm_host.js";
import { lockdep_assert_held_write } from "../../kvm/lockdep.js";
import { acas, aload, astore } from "../../sync/atomic.js";
import { PT64_ROOT_LEVEL } from "../spte.js";
import { tdp_mmu_alloc_sp } from "./tdp_mmu_free.js";

export function is_invalid_root(kvm: Kvm, root: number): boolean {
  return (aload(kvm.spHdr, SP.role(root)) & ROLE_INVALID) !== 0;
}

/**
 * kvm_tdp_mmu_get_root: a reference on `root` unless its count already reached 0
 * (refcount_inc_not_zero) or it is invalid. mmu_lock held in either mode.
 */
export function kvm_tdp_mmu_get_root(kvm: Kvm, root: number): boolean {
  if (root === 0) return false;
  for (;;) {
    const c = aload(kvm.spHdr, SP.root_count(root));
    if (c === 0 || is_invalid_root(kvm, root)) return false;
    if (acas(kvm.spHdr, SP.root_count(root), c, c + 1) === c) return true;
  }
}

/**
 * kvm_tdp_mmu_get_vcpu_root_hpa (mmu_alloc_direct_roots): the VM's root, created on the first
 * fault with a page from vCPU `vcpuId`'s cache. mmu_lock held for write. 0 if the cache is
 * empty (the fault retries after its top-up).
 */
export function kvm_tdp_mmu_get_vcpu_root_hpa(kvm: Kvm, vcpuId: number): number {
  lockdep_assert_held_write(kvm);
  let root = kvm.ctl[CTL.root];
  if (root !== 0) return root;
  root = tdp_mmu_alloc_sp(kvm, vcpuId, 0, PT64_ROOT_LEVEL);
  if (root < 0) return 0;
  kvm.spHdr[SP.root_count(root)] = 1; // the VM's reference
  astore(kvm.ctl, CTL.root, root);
  return root;
}

/** tdp_mmu_zap_spte_atomic plus the commit an entry point does before it drops the lock. */
import { Kvm } from "../../../src/kvm_host.js";
import type { TdpIter } from "../../../src/mmu/tdp_mmu/tdp_iter.js";
import { tdp_mmu_zap_spte_atomic } from "../../../src/mmu/tdp_mmu/tdp_mmu_zap.js";
import { tdp_mmu_commit_free } from "../../../src/mmu/tdp_mmu/tdp_mmu_free.js";

export function kvm_tdp_mmu_zap_spte_atomic_for_test(kvm: Kvm, it: TdpIter): number {
  const r = tdp_mmu_zap_spte_atomic(kvm, it);
  tdp_mmu_commit_free(kvm);
  return r;
}

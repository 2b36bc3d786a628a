/**
 * The spte update primitives. Sptes that can change outside mmu_lock
 * (fast_page_fault sets W, the lockless protector clears it) are "volatile" and are only
 * replaced with xchg, so the caller learns the value it really replaced.
 */
import { KF, kfunc_enter, kfunc_ret } from "../sync/kfunc.js";
import { BUG, Kvm } from "../kvm_host.js";
import { aload, aread, astore, axchg } from "../sync/atomic.js";
import {
  is_shadow_present_pte,
  is_writable_pte,
  spte_has_volatile_bits,
  spte_is_locklessly_modifiable,
} from "./spte.js";

/** non-present -> present (leaf or link). */
export function mmu_spte_set(kvm: Kvm, sptep: number, s: number): void {
  astore(kvm.spt, sptep, s);
}

/**
 * present -> present with the same pfn. Returns true when a remote TLB flush is needed: the old
 * spte could be writable (HOST_W and MMU_W: fast_page_fault may have set W) and the new is not
 * (patch 3; 3.11 tested W only).
 */
export function mmu_spte_update(kvm: Kvm, sptep: number, s: number): boolean {
  const kfd = kfunc_enter(KF.mmu_spte_update);
  // mmu_lock held: only W can change behind us, and the volatility test does not read W.
  let old = aread(kvm.spt, sptep);
  if (!is_shadow_present_pte(old)) {
    mmu_spte_set(kvm, sptep, s);
    return kfunc_ret(kfd, false);
  }
  if (!spte_has_volatile_bits(old) || kvm.bug(BUG["plain-clear"])) astore(kvm.spt, sptep, s);
  else old = axchg(kvm.spt, sptep, s);
  return kfunc_ret(kfd, spte_is_locklessly_modifiable(old) && !is_writable_pte(s));
}

/** leaf present -> 0. Returns the old value (the caller rmap_removes if it was present). */
export function mmu_spte_clear_track_bits(kvm: Kvm, sptep: number): number {
  let old = aload(kvm.spt, sptep);
  if (!spte_has_volatile_bits(old) || kvm.bug(BUG["plain-clear"])) astore(kvm.spt, sptep, 0);
  else old = axchg(kvm.spt, sptep, 0);
  return old;
}

/** link -> 0: link sptes never change outside mmu_lock. */
export function mmu_spte_clear_no_track(kvm: Kvm, sptep: number): void {
  astore(kvm.spt, sptep, 0);
}

/** mmu_spte_get_lockless. */
export function mmu_spte_get_lockless(kvm: Kvm, sptep: number): number {
  return aload(kvm.spt, sptep);
}

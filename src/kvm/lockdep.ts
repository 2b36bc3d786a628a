/**
 * lockdep for mmu_lock: the assertions KVM's MMU makes of the lock's mode (lockdep_assert_held*),
 * checked when the VM was created with lockdep on (tests, the explorer). Ownership is the
 * RwLock's, per thread (src/sync/rwlock.ts).
 */
import type { Kvm } from "../kvm_host.js";
import { RwHeld } from "../sync/rwlock.js";

/** lockdep_assert_held_write(&kvm->mmu_lock): throws unless this thread holds it for write. */
export function lockdep_assert_held_write(kvm: Kvm): void {
  if (kvm.lockdep && kvm.mmu_lock.held() !== RwHeld.Write) lockdepFail(kvm, "write");
}

/** lockdep_assert_held_read(&kvm->mmu_lock). */
export function lockdep_assert_held_read(kvm: Kvm): void {
  if (kvm.lockdep && kvm.mmu_lock.held() !== RwHeld.Read) lockdepFail(kvm, "read");
}

/** lockdep_assert_held(&kvm->mmu_lock): held in either mode. */
export function lockdep_assert_held(kvm: Kvm): void {
  if (kvm.lockdep && kvm.mmu_lock.held() === RwHeld.None) lockdepFail(kvm, "read or write");
}

function lockdepFail(kvm: Kvm, want: string): never {
  const held = ["nothing", "read", "write"][kvm.mmu_lock.held()];
  throw new LockdepError(`mmu_lock must be held for ${want} (this thread holds ${held})`);
}

/** A lock assertion failed: a kernel would print a lockdep splat. A bug, never bad input. */
export class LockdepError extends Error {
  constructor(message: string) {
    super(`lockdep: ${message}`);
    this.name = "LockdepError";
  }
}

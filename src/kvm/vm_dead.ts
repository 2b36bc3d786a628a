/**
 * kvm_vm_dead() and the soft-lockup check. A VM whose thread failed is dead (CTL.vm_state 2):
 * from then on no thread waits for a lock or an acknowledgement of it, since the thread that
 * would release it may be gone. A vCPU (or the host thread) that holds mmu_lock longer than
 * the bound (KvmConfig.lockHoldTimeoutMs) is a soft lockup, as the kernel's watchdog reports
 * one: the VM fails with a SoftLockupError naming the holder and the lock.
 *
 * Every thread that runs the VM's code names itself (kvm_watch_locks): its mmu_lock holds are
 * then published in shared memory (src/sync/rwlock.ts track), and its lock waits check, before
 * each sleep, whether the VM died or the holder is stuck.
 */
import { CTL, Kvm, KVM_MAX_VCPUS, VCPU } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { rwlock_readers, rwlock_writer } from "../sync/rwlock.js";

/** The bound when KvmConfig.lockHoldTimeoutMs is not given. */
export const DEFAULT_LOCK_HOLD_TIMEOUT_MS = 5000;

/** Holder ids published in mmu_lock: vCPU n is n + 1; then the owner (VMM) and the host thread. */
export const HOLDER_OWNER = KVM_MAX_VCPUS + 1;
export const HOLDER_HOST = KVM_MAX_VCPUS + 2;

/** A wait abandoned because the VM is dead: its cause is the VM's error (vm.error). */
export class VmDeadError extends KvmError {
  constructor(what: string) {
    super("EIO", `${what}: the VM is dead (one of its threads failed)`);
    this.name = "VmDeadError";
  }
}

/** A thread held a lock past the bound: who (a vCPU id, or -1 for the host thread) and how long. */
export class SoftLockupError extends KvmError {
  readonly vcpu: number;
  readonly lock: string;
  readonly heldMs: number;
  readonly boundMs: number;
  constructor(vcpu: number, lock: string, heldMs: number, boundMs: number) {
    const who = vcpu >= 0 ? `vcpu ${vcpu}` : "host thread";
    super("ETIMEDOUT", `${who}: soft lockup: held ${lock} for ${heldMs} ms (bound ${boundMs} ms)`);
    this.name = "SoftLockupError";
    this.vcpu = vcpu;
    this.lock = lock;
    this.heldMs = heldMs;
    this.boundMs = boundMs;
  }

  /** What a worker posts, so that the owner rebuilds this error (postMessage drops the class). */
  report(): { vcpu: number; lock: string; heldMs: number; boundMs: number } {
    return { vcpu: this.vcpu, lock: this.lock, heldMs: this.heldMs, boundMs: this.boundMs };
  }
}

export function kvm_lock_bound_ms(kvm: Kvm): number {
  return kvm.shared.config.lockHoldTimeoutMs ?? DEFAULT_LOCK_HOLD_TIMEOUT_MS;
}

/** performance.now() plus this, in any thread: ms since the VM's creation (the shared clock). */
function clock_origin(kvm: Kvm): number {
  return performance.timeOrigin - kvm.shared.epochMs;
}

export function kvm_vm_dead(kvm: Kvm): boolean {
  return Atomics.load(kvm.ctl, CTL.vm_state) === 2;
}

/** kvm_vm_dead(): marks the VM dead; the threads waiting on its locks give up at their next check. */
export function kvm_mark_vm_dead(kvm: Kvm): void {
  Atomics.store(kvm.ctl, CTL.vm_state, 2);
}

/** The holder of mmu_lock past the bound, if any (the owner thread's holds are not bounded). */
export function kvm_find_lockup(kvm: Kvm): SoftLockupError | null {
  const bound = kvm_lock_bound_ms(kvm);
  const now = (performance.now() + clock_origin(kvm)) | 0;
  const w = rwlock_writer(kvm.ctl, CTL.mmu_lock);
  if (w !== null && w.id !== 0 && w.id !== HOLDER_OWNER && w.since !== 0) {
    const held = (now - w.since) | 0;
    if (held > bound)
      return new SoftLockupError(w.id === HOLDER_HOST ? -1 : w.id - 1, "mmu_lock", held, bound);
  }
  if (rwlock_readers(kvm.ctl, CTL.mmu_lock) === 0) return null;
  const n = Atomics.load(kvm.ctl, CTL.nr_vcpus);
  for (let i = 0; i < n; i++) {
    const since = Atomics.load(kvm.vcpu, VCPU.mmu_lock_since(i));
    const held = (now - since) | 0;
    if (since !== 0 && held > bound) return new SoftLockupError(i, "mmu_lock (read)", held, bound);
  }
  return null;
}

/**
 * Names this thread (`holder`: vCPU id + 1, HOLDER_OWNER or HOLDER_HOST) to the VM's locks: its
 * mmu_lock holds are published, and a wait on mmu_lock or mm_lock gives up with VmDeadError once
 * the VM is dead, or with a SoftLockupError (the VM then dead) once mmu_lock's holder is stuck.
 */
export function kvm_watch_locks(kvm: Kvm, holder: number): void {
  const vcpu = holder >= 1 && holder <= KVM_MAX_VCPUS ? holder - 1 : -1;
  kvm.mmu_lock.track(
    holder,
    clock_origin(kvm),
    vcpu >= 0 ? { words: kvm.vcpu, index: VCPU.mmu_lock_since(vcpu) } : null,
  );
  kvm.mmu_lock.onWait = () => {
    if (kvm_vm_dead(kvm)) throw new VmDeadError("mmu_lock");
    const e = kvm_find_lockup(kvm);
    if (e === null) return;
    kvm_mark_vm_dead(kvm);
    throw e;
  };
  kvm.mm_lock.onWait = () => {
    if (kvm_vm_dead(kvm)) throw new VmDeadError("mm_lock");
  };
}

/**
 * The VM's worker threads as the owner watches them: a worker's reported error, crash or
 * unexpected exit fails the VM; a vCPU worker gone without saying so is marked Dead so that no
 * flusher waits for it.
 */
import type { Worker } from "node:worker_threads";
import { OUTSIDE_GUEST_MODE, VCPU } from "../kvm_host.js";
import { Errno, KvmError } from "../errors.js";
import { VcpuState } from "../kvm/requests.js";
import { vm_fail, VmState } from "./state.js";
import { SoftLockupError } from "../kvm/vm_dead.js";

/** A worker's error report (vcpu_worker.ts, host_worker.ts). */
interface ErrorMessage {
  type: string;
  message: string;
  code?: string;
  /** A soft lockup the worker found while it waited for mmu_lock: who holds it. */
  lockup?: { vcpu: number; lock: string; heldMs: number; boundMs: number };
}

const ERRNOS: readonly Errno[] = [
  "EINVAL",
  "EEXIST",
  "ENOENT",
  "ENOMEM",
  "EBUSY",
  "EFAULT",
  "ETIMEDOUT",
  "EIO",
  "ENXIO",
  "E2BIG",
  "ENOSYS",
];

/** Fails the VM on the worker's error; `vcpuId` >= 0: a vCPU worker, also watched for its exit. */
export function vm_watch(st: VmState, w: Worker, who: string, vcpuId = -1): void {
  w.on("message", (m: ErrorMessage) => {
    if (m.type === "error" && m.lockup) {
      const l = m.lockup;
      vm_fail(st, new SoftLockupError(l.vcpu, l.lock, l.heldMs, l.boundMs));
    } else if (m.type === "error") {
      // A guest module's own error may carry any code; only an errno is passed on.
      const code = ERRNOS.includes(m.code as Errno) ? (m.code as Errno) : "EIO";
      vm_fail(st, new KvmError(code, `${who}: ${m.message}`));
    }
  });
  w.on("error", (e) => vm_fail(st, new KvmError("EIO", `${who}: ${e.message}`)));
  if (vcpuId < 0) return;
  // A worker gone without saying Stopped or Dead (terminated, crashed): no flusher may wait for it.
  w.on("exit", () => {
    const v = st.kvm.vcpu;
    const s = Atomics.load(v, VCPU.state(vcpuId));
    if (s === (VcpuState.Stopped as number) || s === (VcpuState.Dead as number)) return;
    Atomics.store(v, VCPU.mode(vcpuId), OUTSIDE_GUEST_MODE);
    Atomics.store(v, VCPU.state(vcpuId), VcpuState.Dead);
    Atomics.notify(v, VCPU.state(vcpuId));
    Atomics.notify(v, VCPU.mode(vcpuId));
    if (!st.stopping) vm_fail(st, new KvmError("EIO", `${who}: the worker exited`));
  });
}

/** The vCPU threads' host identity: their thread ids and pinning to host CPUs. */
import os from "node:os";
import { KVM_MAX_VCPUS, VCPU } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { sched_setaffinity } from "../sync/affinity.js";
import { isInt, VmState } from "./state.js";

/** Vm.vcpuTid: the kernel thread id of vCPU `id`'s worker (gettid), 0 before it has started. */
export function vm_vcpu_tid(st: VmState, id: number): number {
  return st.created.has(id) ? Atomics.load(st.kvm.vcpu, VCPU.tid(id)) : 0;
}

/** Vm.pinVcpu: see there. */
export function vm_pin_vcpu(st: VmState, id: number, cpu: number): void {
  if (!isInt(id) || id < 0 || id >= KVM_MAX_VCPUS)
    throw einval("id", `must be 0..${KVM_MAX_VCPUS - 1}, got ${String(id)}`);
  if (!isInt(cpu) || cpu < 0 || cpu >= os.cpus().length)
    throw einval("cpu", `must be 0..${os.cpus().length - 1}, got ${String(cpu)}`);
  const tid = vm_vcpu_tid(st, id);
  if (tid === 0) throw new KvmError("ENOENT", `id: vCPU ${id} has no running thread`);
  sched_setaffinity(tid, cpu);
}

/**
 * Entry point of a vCPU worker thread. It attaches to the VM's shared memory, runs its guest
 * program until told to stop, and reports any error to the owner instead of dying silently:
 * its state becomes Dead first, so no flusher waits for it.
 */
import { parentPort, workerData } from "node:worker_threads";
import {
  Kvm,
  KvmShared,
  OUTSIDE_GUEST_MODE,
  VCPU_MODE,
  VCPU_STATE,
  VCPU_STRIDE,
  CTL_VM_STATE,
} from "../kvm_host.js";
import { Vcpu, VcpuStop } from "../vcpu/vcpu.js";
import { VcpuState } from "../kvm/requests.js";
import { GuestArgs, runGuest } from "./guest.js";

interface VcpuWorkerData {
  shared: KvmShared;
  vcpuId: number;
  guest: GuestArgs;
  tlbBits: number;
}

const data = workerData as VcpuWorkerData;
const kvm = new Kvm(data.shared);
const row = data.vcpuId * VCPU_STRIDE;
const vcpu = new Vcpu(kvm, data.vcpuId, data.tlbBits);
try {
  Atomics.store(kvm.vcpu, row + VCPU_STATE, VcpuState.Running);
  vcpu.enterGuest();
  vcpu.safePoint();
  runGuest(vcpu, data.guest);
} catch (e) {
  vcpu.publishStats();
  if (e instanceof VcpuStop) {
    Atomics.store(kvm.vcpu, row + VCPU_STATE, VcpuState.Stopped);
  } else {
    Atomics.store(kvm.vcpu, row + VCPU_MODE, OUTSIDE_GUEST_MODE);
    Atomics.store(kvm.vcpu, row + VCPU_STATE, VcpuState.Dead);
    Atomics.store(kvm.ctl, CTL_VM_STATE, 2);
    const err = e as Error & { code?: string };
    parentPort?.postMessage({
      type: "error",
      vcpu: data.vcpuId,
      message: err.message,
      code: err.code,
      stack: err.stack,
    });
  }
  Atomics.notify(kvm.vcpu, row + VCPU_STATE);
  Atomics.notify(kvm.vcpu, row + VCPU_MODE);
}

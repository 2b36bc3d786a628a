/**
 * The internal entry point to a Vm's kernel state, for tests, benchmarks, the verifier and
 * the migration code inside this repository: not public API (src/index.ts does not export it,
 * and the package's exports map does not reach it). What it returns may change in any version.
 */
import type { Kvm, KvmShared } from "../kvm_host.js";
import type { Vm } from "./vm.js";
import { VM_STATES, VmState } from "./state.js";

export type { VmState };

/** The whole state of `vm` (src/vm/state.ts). */
export function vmInternals(vm: Vm): VmState {
  const st = VM_STATES.get(vm);
  if (st === undefined) throw new TypeError("vmInternals: not a Vm");
  return st;
}

/** The kernel's struct kvm of `vm`: its shared memory as the MMU sees it (take its locks with care). */
export function vmKvm(vm: Vm): Kvm {
  return vmInternals(vm).kvm;
}

/** The shared buffers `vm` was created with (what a worker attaches to). */
export function vmShared(vm: Vm): KvmShared {
  return vmInternals(vm).shared;
}

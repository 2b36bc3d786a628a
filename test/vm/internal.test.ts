/**
 * The VM's kernel state is not on the public object: only the internal entry point
 * (src/vm/internal.ts) reaches it, and the package's entry point does not export that.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SLOT } from "../../src/kvm_host.js";
import * as pkg from "../../src/index.js";
import { Vm } from "../../src/vm.js";
import { vmInternals, vmKvm, vmShared } from "../../src/vm/internal.js";

test("internal: Vm has no public kvm or shared; vmKvm and vmShared reach the VM's state", () => {
  const vm = Vm.create({ memory: 4 << 20, wp: "locked" });
  // @ts-expect-error the Vm type has no kvm
  assert.equal(vm.kvm, undefined);
  // @ts-expect-error nor shared
  assert.equal(vm.shared, undefined);
  assert.deepEqual(Object.keys(vm), []);
  const hva = vm.mmap(1 << 20);
  vm.setUserMemoryRegion({ slot: 3, flags: 0, guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: hva });
  const kvm = vmKvm(vm);
  assert.equal(kvm.slots[SLOT.active(3)], 1);
  assert.equal(kvm.slots[SLOT.npages(3)], 256);
  assert.equal(vmShared(vm), vmInternals(vm).shared);
  assert.equal(vmInternals(vm).kvm, kvm);
  assert.throws(() => vmInternals({} as Vm), TypeError);
});

test("internal: the package's entry point exports none of the internals", () => {
  for (const name of ["vmInternals", "vmKvm", "vmShared", "VM_STATES", "kvm_create_vm"])
    assert.equal(Object.hasOwn(pkg, name), false, name);
  assert.equal(typeof pkg.Vm.create, "function");
});

/** The `kernel` design joins the registry only where the device is usable. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { designBackend, designNames, isDesign, unregisterDesign } from "../../src/mmu/design.js";
import { registerKernelDesign } from "../../src/kernel/register.js";
import { kvmDeviceProblem } from "../../src/kernel/kvm_dev.js";
import { Vm } from "../../src/vm.js";

test("register: no device, no kernel design (the registry stays the models)", () => {
  const before = designNames();
  const why = registerKernelDesign("/nonexistent/kvm");
  assert.ok(why !== null);
  assert.equal(why.code, "ENODEV");
  assert.match(why.message, /\/nonexistent\/kvm/);
  assert.deepEqual(designNames(), before);
  assert.equal(isDesign("kernel"), kvmDeviceProblem() === null && before.includes("kernel"));
});

test("register: with a usable device, `kernel` is a kernel-backend design a model Vm refuses", (t) => {
  // A plain file stands in for the device: registration only checks that it opens read-write.
  const path = new URL(import.meta.url).pathname;
  if (isDesign("kernel")) unregisterDesign("kernel");
  assert.equal(registerKernelDesign(path), null);
  try {
    assert.ok(isDesign("kernel"));
    assert.equal(designBackend("kernel"), "kernel");
    assert.equal(designBackend("locked"), "model");
    assert.throws(() => Vm.create({ memory: 1 << 20, wp: "kernel" }), { code: "ENOSYS" });
  } finally {
    unregisterDesign("kernel");
  }
  void t;
});

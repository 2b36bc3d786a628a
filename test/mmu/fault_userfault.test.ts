/**
 * Both MMUs' page faults ask userfault before they map a page of a registered slot: a page placed
 * by UFFDIO_COPY reads back its bytes, and a page still missing once the page source has gone
 * fails EFAULT instead of being mapped (with its zeroed frame). One vCPU in this thread.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PAGE_SIZE } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { Vm } from "../../src/vm.js";
import { vmKvm } from "../../src/vm/internal.js";

const PAGES = 64;

for (const mode of ["shadow", "tdp"] as const)
  test(`${mode}: a fault on a registered slot waits for its page; a page whose source has gone fails EFAULT`, () => {
    const vm = Vm.create({ memory: 2 * PAGES * PAGE_SIZE, wp: "lockless", mode, maxVcpus: 1 });
    const hva = vm.mmap(PAGES * PAGE_SIZE, { thp: false });
    vm.setUserMemoryRegion({
      slot: 0,
      flags: 0,
      guestPhysAddr: 0,
      memorySize: PAGES * PAGE_SIZE,
      userspaceAddr: hva,
    });
    vm.createVcpu(0);
    vm.userfaultRegister(0);
    assert.equal(vm.userfaultDiscard(Uint32Array.of((1 << 3) | (1 << 5), 0)), 2);
    const page = new Uint8Array(PAGE_SIZE);
    new DataView(page.buffer).setUint32(0, 0xc0ffee, true);
    assert.ok(vm.userfaultCopy(5 * PAGE_SIZE, page));
    const v = new Vcpu(vmKvm(vm), 0);
    v.enterGuest();
    try {
      assert.equal(v.read32(5, 0), 0xc0ffee, "the placed page");
      assert.equal(v.read32(7, 0), 0, "a page never discarded");
      vm.userfaultClose();
      assert.throws(
        () => v.read32(3, 0),
        (e: unknown) => e instanceof KvmError && e.code === "EFAULT" && e.message.includes("post-copy"),
        "a missing page whose source has gone is not mapped",
      );
    } finally {
      v.exitGuest();
    }
  });

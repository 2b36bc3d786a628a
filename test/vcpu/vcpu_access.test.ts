/**
 * Guest accesses land on the word asked for, through the TLB-hit path as through the slow one,
 * in both forms a Vcpu takes: the plain one and the *Sched one (chosen when the thread has a
 * scheduling hook, as the explorer's threads do).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PAGE_SIZE } from "../../src/kvm_host.js";
import { Vm } from "../../src/index.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { setSchedHook } from "../../src/sync/atomic.js";
import { vmKvm } from "../../src/vm/internal.js";

for (const sched of [false, true])
  test(`vCPU accesses at word w reach word w, TLB hit and miss (${sched ? "scheduled" : "plain"} form)`, () => {
    const vm = Vm.create({ memory: 16 << 20, wp: "lockless", maxVcpus: 1 });
    const hva = vm.mmap(16 * PAGE_SIZE, { thp: false });
    vm.setUserMemoryRegion({
      slot: 0,
      guestPhysAddr: 0,
      memorySize: 16 * PAGE_SIZE,
      userspaceAddr: hva,
      flags: 0,
    });
    vm.createVcpu(0);
    if (sched) setSchedHook(() => {});
    try {
      const v = new Vcpu(vmKvm(vm), 0, 4);
      const gfn = 5;
      v.enterGuest();
      v.write64(gfn, 6, 0x11, 0x22); // a miss: the slow path fills the TLB
      v.write64(gfn, 10, 0x33, 0x44); // hits from here on
      v.write32(gfn, 20, 0x55);
      assert.equal(v.read32(gfn, 10), 0x33);
      assert.equal(v.read32(gfn, 11), 0x44);
      v.exitGuest();
      const at = (w: number): [number, number] => vm.readGuestU64(gfn * PAGE_SIZE + w * 4);
      assert.deepEqual(at(6), [0x11, 0x22]);
      assert.deepEqual(at(10), [0x33, 0x44]);
      assert.equal(at(20)[0], 0x55);
      assert.deepEqual(at(0), [0, 0], "nothing written below the words asked for");
    } finally {
      setSchedHook(null);
    }
  });

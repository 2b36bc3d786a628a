/**
 * PML: the vCPU logs the first write through a D-clear spte, the buffer reaches the log at every
 * exit in the order written (37c3ddfe5238), a full buffer is a PML-full exit; write protection
 * is the fallback (pml: false), with a fault per page where PML has none.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, SLOT } from "../../../src/kvm_host.js";
import { Vm } from "../../../src/vm.js";
import { Vcpu } from "../../../src/vcpu/vcpu.js";
import { kvm_dirty_ring_used, kvm_set_running_vcpu } from "../../../src/mem/dirty_ring.js";
import { makeTdpVm, NPAGES, reported, setLogging, writePages } from "./helpers.js";
import { vmKvm } from "../../../src/vm/internal.js";

function ringVm(): Vm {
  const vm = Vm.create({ memory: 16 << 20, wp: "tdp-mmu", maxVcpus: 1 });
  vm.enableDirtyRing(4096);
  const hva = vm.mmap(NPAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: NPAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  return vm;
}

test("PML: the buffer reaches the dirty ring in the order the vCPU wrote it", () => {
  const vm = ringVm();
  kvm_set_running_vcpu(vmKvm(vm), 0);
  try {
    const all = Array.from({ length: NPAGES }, (_, g) => g);
    const v = writePages(vm, all, 1);
    const hva = vmKvm(vm).slots[SLOT.hva_page(0)] * PAGE_SIZE;
    vm.setUserMemoryRegion({
      slot: 0,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: NPAGES * PAGE_SIZE,
      userspaceAddr: hva,
    });
    const order = [517, 3, 900, 1, 64, 2];
    const slow0 = v.fault.slow + v.fault.fast;
    v.tlb.flush(); // as the enable's remote flush would have
    v.enterGuest();
    for (const g of order) v.write32(g, 0, 2);
    for (const g of order) v.write32(g, 1, 3); // D already set: not logged again
    assert.equal(v.pmlStats.logged, order.length);
    assert.equal(v.fault.slow + v.fault.fast, slow0, "PML: no write fault");
    // (Not through harvestDirtyRing: it kicks the vCPUs, and this thread runs vCPU 0.)
    assert.equal(kvm_dirty_ring_used(vmKvm(vm), 0), 0, "nothing in the ring before the exit");
    v.exitGuest();
    assert.deepEqual(
      vm.harvestDirtyRing(0).map((e) => e.offset),
      order,
    );
  } finally {
    kvm_set_running_vcpu(vmKvm(vm), -1);
  }
});

test("PML: a full buffer is a PML-full exit; nothing is lost or reordered", () => {
  const vm = ringVm();
  kvm_set_running_vcpu(vmKvm(vm), 0);
  try {
    const all = Array.from({ length: NPAGES }, (_, g) => g);
    const v = writePages(vm, all, 1);
    const hva = vmKvm(vm).slots[SLOT.hva_page(0)] * PAGE_SIZE;
    vm.setUserMemoryRegion({
      slot: 0,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: NPAGES * PAGE_SIZE,
      userspaceAddr: hva,
    });
    v.tlb.flush();
    const order = all.slice(0, 700).reverse();
    v.enterGuest();
    for (const g of order) v.write32(g, 0, 2);
    assert.equal(v.pmlStats.fullExits, 1);
    v.exitGuest();
    const got: number[] = [];
    for (let e = vm.harvestDirtyRing(0); e.length > 0; e = vm.harvestDirtyRing(0))
      got.push(...e.map((x) => x.offset));
    assert.deepEqual(got, order);
  } finally {
    kvm_set_running_vcpu(vmKvm(vm), -1);
  }
});

for (const pml of [true, false]) {
  test(`dirty logging with ${pml ? "PML" : "write protection"}: faults per dirty page per pass`, () => {
    const vm = makeTdpVm({ pml, thp: false });
    const all = Array.from({ length: NPAGES }, (_, g) => g);
    const v = new Vcpu(vmKvm(vm), 0, 12);
    writePages(vm, all, 1, v);
    setLogging(vm, true);
    v.tlb.flush();
    for (let pass = 0; pass < 3; pass++) {
      const f0 = v.fault.slow + v.fault.fast;
      writePages(vm, all, pass + 2, v);
      const faults = v.fault.slow + v.fault.fast - f0;
      if (pml) assert.equal(faults, 0, `pass ${pass}`);
      else assert.equal(faults, NPAGES, `pass ${pass}: one write-protect fault per page`);
      assert.equal(reported(vm.getDirtyLog(0)).length, NPAGES, `pass ${pass}: every page reported`);
      v.tlb.flush(); // the GET's remote flush reached this in-thread vCPU's request word
    }
  });
}

test("PML: the bitmap flush reports exactly the pages written (scattered order, many bitmap words, a full exit)", () => {
  const vm = makeTdpVm({ thp: false });
  const all = Array.from({ length: NPAGES }, (_, g) => g);
  const v = new Vcpu(vmKvm(vm), 0, 12);
  writePages(vm, all, 1, v);
  setLogging(vm, true);
  vm.getDirtyLog(0); // re-arms every page
  v.tlb.flush();
  // A permutation of the slot (7919 is odd, NPAGES a power of 2), three pages in five kept.
  const order = all.map((k) => (k * 7919) % NPAGES).filter((g) => g % 5 < 3);
  assert.ok(order.length > 512, "more entries than one buffer");
  const full0 = v.pmlStats.fullExits;
  v.enterGuest();
  for (const g of order) v.write32(g, 0, 7);
  v.exitGuest();
  assert.equal(v.pmlStats.fullExits - full0, 1);
  assert.deepEqual(
    reported(vm.getDirtyLog(0)),
    [...order].sort((a, b) => a - b),
  );
});

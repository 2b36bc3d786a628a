/**
 * kvm_flush_pml_buffers called by a thread that runs a vCPU in guest mode (a harvest between two
 * guest accesses): that vCPU's buffer is flushed by the caller and the caller does not wait for
 * its own acknowledgement (it could never come), as KVM's kick sends no IPI to the current CPU.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { EXITING_GUEST_MODE, IN_GUEST_MODE, KVM_REQ_TLB_FLUSH, PAGE_SIZE, VCPU } from "../../src/kvm_host.js";
import { KVM_MEM_LOG_DIRTY_PAGES, Vm } from "../../src/index.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { kvm_set_running_vcpu } from "../../src/mem/dirty_ring.js";
import { kvm_flush_remote_tlbs, make_all_cpus_request } from "../../src/kvm/requests.js";
import { vmKvm } from "../../src/vm/internal.js";

const NPAGES = 64;

function pmlVm(ring: boolean): { vm: Vm; v: Vcpu } {
  const vm = Vm.create({ memory: 16 << 20, wp: "tdp-mmu", maxVcpus: 1, pml: true });
  if (ring) vm.enableDirtyRing(4096);
  const hva = vm.mmap(NPAGES * PAGE_SIZE, { thp: false });
  const region = { slot: 0, guestPhysAddr: 0, memorySize: NPAGES * PAGE_SIZE, userspaceAddr: hva };
  vm.setUserMemoryRegion({ ...region, flags: 0 });
  vm.createVcpu(0);
  const v = new Vcpu(vmKvm(vm), 0, 4);
  v.enterGuest();
  for (let g = 0; g < NPAGES; g++) v.write32(g, 0, 1);
  v.exitGuest();
  vm.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES });
  v.tlb.flush(); // as the enable's remote flush would have
  return { vm, v };
}

const mode = (vm: Vm): number => Atomics.load(vmKvm(vm).vcpu, VCPU.mode(0));

test("harvestDirtyRing from the thread of a vCPU in guest mode: its PML buffer, in order, no wait on itself", () => {
  const { vm, v } = pmlVm(true);
  kvm_set_running_vcpu(vmKvm(vm), 0);
  try {
    v.enterGuest();
    const order = [7, 3, 40, 1];
    for (const g of order) v.write32(g, 0, 2);
    assert.equal(v.pmlStats.logged, order.length);
    assert.equal(mode(vm), IN_GUEST_MODE);
    const got = vm.harvestDirtyRing(0).map((e) => e.offset);
    assert.deepEqual(got, order);
    assert.equal(mode(vm), IN_GUEST_MODE, "no kick: nothing for the vCPU to serve");
    v.write32(9, 0, 3);
    v.exitGuest();
    assert.deepEqual(
      vm.harvestDirtyRing(0).map((e) => e.offset),
      [9],
    );
  } finally {
    kvm_set_running_vcpu(vmKvm(vm), -1);
  }
});

test("getDirtyLog from the thread of a vCPU in guest mode reports its buffered writes", () => {
  const { vm, v } = pmlVm(false);
  kvm_set_running_vcpu(vmKvm(vm), 0);
  try {
    v.enterGuest();
    for (const g of [5, 6, 33]) v.write32(g, 0, 2);
    const bm = vm.getDirtyLog(0);
    assert.deepEqual(Array.from(bm.slice(0, 2)), [(1 << 5) | (1 << 6), 1 << 1]);
    v.exitGuest();
  } finally {
    kvm_set_running_vcpu(vmKvm(vm), -1);
  }
});

test("a remote TLB flush from the thread of a vCPU in guest mode kicks it without waiting", () => {
  const { vm, v } = pmlVm(false);
  const kvm = vmKvm(vm);
  kvm_set_running_vcpu(vmKvm(vm), 0);
  try {
    v.enterGuest();
    assert.equal(make_all_cpus_request(kvm, 0), false, "nothing to wait for");
    assert.equal(mode(vm), IN_GUEST_MODE);
    kvm_flush_remote_tlbs(kvm);
    assert.equal(mode(vm), EXITING_GUEST_MODE, "kicked: its next access takes the safe point");
    assert.equal(Atomics.load(kvm.vcpu, VCPU.requests(0)) & KVM_REQ_TLB_FLUSH, KVM_REQ_TLB_FLUSH);
    v.safePoint();
    assert.equal(mode(vm), IN_GUEST_MODE);
    assert.equal(Atomics.load(kvm.vcpu, VCPU.requests(0)), 0, "the flush request was served");
    v.exitGuest();
  } finally {
    kvm_set_running_vcpu(vmKvm(vm), -1);
  }
});

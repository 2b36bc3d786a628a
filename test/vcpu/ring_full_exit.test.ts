/**
 * A vCPU driven on the caller's thread (the tests' in-thread vCPU) whose dirty ring becomes
 * soft-full: KVM_RUN returns KVM_EXIT_DIRTY_RING_FULL to the caller (VcpuExit) instead of
 * waiting for a reset that only the caller could make; the caller harvests, resets, enters
 * again and retries the access, as a VMM's vCPU thread does.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, Vm } from "../../src/index.js";
import { KVM_EXIT_DIRTY_RING_FULL, Vcpu, VcpuExit } from "../../src/vcpu/vcpu.js";
import {
  kvm_dirty_ring_push,
  kvm_dirty_ring_soft_full,
  kvm_set_running_vcpu,
} from "../../src/mem/dirty_ring.js";
import { vmKvm } from "../../src/vm/internal.js";
import { KvmError } from "../../src/errors.js";

const NPAGES = 512;
const RING = 256; // soft-full at 256 - 64 reserved entries

/** A 1-vCPU VM with a RING-entry dirty ring and one logged slot of NPAGES; vCPU 0 running here. */
function ringVm() {
  const vm = Vm.create({ memory: 16 << 20, wp: "lockless", maxVcpus: 1 });
  vm.enableDirtyRing(RING);
  const hva = vm.mmap(NPAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    guestPhysAddr: 0,
    memorySize: NPAGES * PAGE_SIZE,
    userspaceAddr: hva,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
  });
  vm.createVcpu(0);
  const kvm = vmKvm(vm);
  kvm_set_running_vcpu(kvm, 0);
  return { vm, kvm };
}

test("in-thread vCPU: a soft-full ring returns KVM_EXIT_DIRTY_RING_FULL to the caller, who resets and goes on", () => {
  const { vm, kvm } = ringVm();
  try {
    const v = new Vcpu(kvm, 0, 4);
    const harvested: number[] = [];
    let exits = 0;
    v.enterGuest();
    for (let g = 0; g < NPAGES; g++)
      for (;;)
        try {
          v.write32(g, 0, g + 1);
          break;
        } catch (e) {
          if (!(e instanceof VcpuExit)) throw e;
          assert.equal(e.exitReason, KVM_EXIT_DIRTY_RING_FULL);
          exits++;
          // Entering again before the reset exits again: the request stays armed.
          assert.throws(() => v.enterGuest(), VcpuExit);
          exits++;
          harvested.push(...vm.harvestDirtyRing(0).map((x) => x.offset));
          vm.resetDirtyRings();
          v.enterGuest();
        }
    v.exitGuest();
    harvested.push(...vm.harvestDirtyRing(0).map((x) => x.offset));
    // Every page logged, in order; the page whose write filled the ring is logged again after
    // the reset (the reset write-protected it before the access was retried), as in KVM.
    assert.deepEqual(
      [...new Set(harvested)],
      Array.from({ length: NPAGES }, (_, g) => g),
    );
    assert.equal(harvested.length, NPAGES + exits / 2);
    for (let g = 0; g < NPAGES; g++)
      assert.equal(Buffer.from(vm.readGuest(g * PAGE_SIZE, 4)).readUInt32LE(0), g + 1);
    // 192 entries fill the ring: pages 0-191, then 191-381; two exits each (the access's, and
    // the re-entry's before the reset).
    assert.equal(exits, 4);
    assert.equal(vm.dirtyRingStats(0).fullExits, exits);
  } finally {
    kvm_set_running_vcpu(kvm, -1);
    void vm.stop();
  }
});

test("in-thread vCPU: a fault that throws keeps its error when the re-entry exits; the exit comes at the next access", () => {
  const { vm, kvm } = ringVm();
  try {
    const v = new Vcpu(kvm, 0, 4);
    v.enterGuest();
    v.write32(0, 0, 1); // page 0 mapped, writable in the TLB
    // The ring fills to its soft limit while the vCPU is in guest mode: its next entry exits.
    for (let g = 1; !kvm_dirty_ring_soft_full(kvm, 0); g++) kvm_dirty_ring_push(kvm, 0, 0, g);
    // A write outside every memslot: the fault throws EFAULT, then the re-entry exits.
    assert.throws(
      () => v.write32(NPAGES + 8, 0, 1),
      (e: unknown) => e instanceof KvmError && e.code === "EFAULT" && e.cause instanceof VcpuExit,
    );
    // The exit is not lost, and the vCPU is not in guest mode meanwhile: the next access, even
    // one its TLB could serve, enters first and takes the exit.
    assert.throws(() => v.write32(0, 0, 2), VcpuExit);
    assert.equal(Buffer.from(vm.readGuest(0, 4)).readUInt32LE(0), 1);
    vm.harvestDirtyRing(0);
    vm.resetDirtyRings();
    v.enterGuest();
    v.write32(0, 0, 2);
    v.exitGuest();
    assert.equal(Buffer.from(vm.readGuest(0, 4)).readUInt32LE(0), 2);
  } finally {
    kvm_set_running_vcpu(kvm, -1);
    void vm.stop();
  }
});

/**
 * KVM_RESET_DIRTY_RINGS' coalescing (kvm_reset_dirty_gfns): typed arrays in, one mask per run
 * of nearby offsets out, its state an Int32Array carried from one batch to the next (no object
 * per entry); and a reset longer than one batch re-protects every page.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm } from "../../src/vm.js";
import { Kvm, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../../src/kvm_host.js";
import { kvm_reset_dirty_gfns, RC, RESET_BATCH } from "../../src/mmu/dirty_ring.js";
import { WriteProtectDesign } from "../../src/mmu/write_protect.js";
import { kvm_set_running_vcpu } from "../../src/mem/dirty_ring.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { vmKvm } from "../../src/vm/internal.js";

const NPAGES = 2048;

function ringVm(entries: number, bugs: "reset-coalesce-backward"[] = []): Vm {
  const vm = Vm.create({ memory: 16 << 20, wp: "locked", maxVcpus: 1, maxSlotPages: NPAGES, bugs });
  vm.enableDirtyRing(entries);
  vm.setUserMemoryRegion({
    slot: 2,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: NPAGES * PAGE_SIZE,
    userspaceAddr: vm.mmap(NPAGES * PAGE_SIZE, { thp: false }),
  });
  vm.createVcpu(0);
  return vm;
}

/** A design that records each protectMasked(slot, word, mask) instead of protecting. */
function recorder(): { design: WriteProtectDesign; calls: [number, number, number][] } {
  const calls: [number, number, number][] = [];
  const design = {
    protectMasked: (_kvm: Kvm, slot: number, w: number, mask: number) => (
      calls.push([slot, w, mask >>> 0]),
      true
    ),
  } as unknown as WriteProtectDesign;
  return { design, calls };
}

const coalesce = (kvm: Kvm, offsets: number[], batches: number[]): [number, number, number][] => {
  const { design, calls } = recorder();
  const c = new Int32Array(RC.words);
  let at = 0;
  for (const n of batches) {
    const o = Int32Array.from(offsets.slice(at, at + n));
    kvm_reset_dirty_gfns(kvm, design, new Int32Array(n).fill(2), o, n, c);
    at += n;
  }
  // What is left in the state, as reset_flush would protect it.
  calls.push([c[RC.slot], c[RC.offset], c[RC.lo] >>> 0]);
  return calls;
};

test("kvm_reset_dirty_gfns: forwards, backwards within 64 and jumps give KVM's masks, from typed arrays", () => {
  const kvm = vmKvm(ringVm(256));
  const offsets = [10, 9, 8, 40, 80, 79, 12, 299];
  assert.deepEqual(coalesce(kvm, offsets, [offsets.length]), [
    // 8..10 and 40: one mask at offset 8 (bits 0-2 and 32), as two bitmap words.
    [2, 0, 0x700],
    [2, 1, 0x100],
    // 80 then 79: the mask moves down to 79 (words 2, bits 15-16).
    [2, 2, 0x18000],
    // 12: 67 pages below 79, a mask of its own.
    [2, 0, 0x1000],
    // 299 stays in the state for the caller's flush: slot, offset, mask.
    [2, 299, 1],
  ]);
});

test("kvm_reset_dirty_gfns: the state carries across batches, so any split protects the same masks", () => {
  const kvm = vmKvm(ringVm(256));
  let seed = 7;
  const rnd = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };
  const offsets: number[] = [];
  for (let p = 500, i = 0; i < 300; i++) {
    offsets.push(p);
    p = Math.min(NPAGES - 1, Math.max(0, p + [1, -1, 31, -33, 64, -65, 2][rnd(7)]));
  }
  const whole = coalesce(kvm, offsets, [offsets.length]);
  assert.ok(whole.length > 10 && whole.length < offsets.length, `coalesced into ${whole.length} calls`);
  for (const split of [[1, 299], [150, 150], [7, 93, 100, 100], Array<number>(300).fill(1)])
    assert.deepEqual(coalesce(kvm, offsets, split), whole, `batches ${split.length}`);
});

test("the catalog's reset-coalesce-backward drops the new lowest page of a backward step", () => {
  const kvm = vmKvm(ringVm(256, ["reset-coalesce-backward"]));
  assert.deepEqual(coalesce(kvm, [10, 9], [2]), [[2, 9, 0b10]]);
});

test("a reset of more entries than one batch re-protects every page", () => {
  const vm = ringVm(4096);
  const pages = Array.from({ length: 3 * RESET_BATCH + 17 }, (_, k) => (k * 5) % NPAGES);
  const write = (x: number): void => {
    const v = new Vcpu(vmKvm(vm), 0);
    kvm_set_running_vcpu(vmKvm(vm), 0);
    try {
      v.enterGuest();
      for (const p of pages) v.write64(p, 0, x, 0);
      v.exitGuest();
    } finally {
      kvm_set_running_vcpu(vmKvm(vm), -1);
    }
  };
  const harvest = (): number[] => {
    const s = new Int32Array(4096);
    const o = new Int32Array(4096);
    return [...o.subarray(0, vm.harvestDirtyRingInto(0, s, o))];
  };
  write(1);
  assert.deepEqual(harvest(), pages);
  assert.equal(vm.resetDirtyRings(), pages.length);
  write(2);
  assert.deepEqual(harvest(), pages, "every page written again was logged again");
});

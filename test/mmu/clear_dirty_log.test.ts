/**
 * KVM_CLEAR_DIRTY_LOG's count and its effect on the bitmap and the sptes, word by word: the
 * slot's last word (exactly 32 pages left), a partial word, bits past what GET reported. The
 * explorer checks that no dirty page is lost; this checks the pages CLEAR reports and
 * re-protects (over-reporting is invisible to the lost-page invariant).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../../src/kvm_host.js";
import { Vm } from "../../src/vm.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { kvm_set_running_vcpu } from "../../src/mem/dirty_ring.js";
import { designNames } from "../../src/mmu/design.js";
import { vmKvm } from "../../src/vm/internal.js";

const PAGES = 1024;

function setup(wp: string, pages = PAGES): { vm: Vm; write: (gfns: number[]) => void } {
  const vm = Vm.create({ memory: 8 << 20, wp: wp, maxVcpus: 1, maxSlotPages: PAGES });
  vm.enableManualDirtyLogProtect(1);
  const hva = vm.mmap(pages * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: pages * PAGE_SIZE,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  const write = (gfns: number[]): void => {
    const v = new Vcpu(vmKvm(vm), 0);
    kvm_set_running_vcpu(vmKvm(vm), 0);
    v.enterGuest();
    for (const g of gfns) v.write64(g, 0, g + 1, 0);
    v.exitGuest();
    kvm_set_running_vcpu(vmKvm(vm), -1);
  };
  return { vm, write };
}

const bits = (bm: Uint32Array): number[] => {
  const out: number[] = [];
  for (let g = 0; g < bm.length * 32; g++) if ((bm[g >>> 5] >>> (g & 31)) & 1) out.push(g);
  return out;
};

for (const wp of designNames())
  test(`${wp}: CLEAR counts and re-protects exactly the pages it clears, to the slot's last word`, () => {
    const { vm, write } = setup(wp);
    const dirty = [0, 5, 31, 32, 100, 992, 1000, 1023];
    write(dirty);
    assert.deepEqual(bits(vm.getDirtyLog(0)), dirty);
    // The last word of the slot (gfns 992..1023: exactly 32 pages left) and one bit not dirty.
    const last = new Uint32Array(1);
    last[0] = (1 << 0) | (1 << 8) | (1 << 31) | (1 << 4);
    assert.equal(vm.clearDirtyLog(0, 960, 64, new Uint32Array([0, last[0]])), 3);
    assert.deepEqual(bits(vm.getDirtyLog(0)), [0, 5, 31, 32, 100]);
    // A CLEAR of the first 64 pages with a mask of everything: 4 were dirty.
    assert.equal(vm.clearDirtyLog(0, 0, 64, new Uint32Array([-1, -1])), 4);
    assert.deepEqual(bits(vm.getDirtyLog(0)), [100]);
    // Cleared pages were protected again: writing them sets their bits again, no others.
    write([1023, 0, 5]);
    assert.deepEqual(bits(vm.getDirtyLog(0)), [0, 5, 100, 1023]);
    assert.equal(vm.clearDirtyLog(0, 64, 64, new Uint32Array([-1, -1])), 1);
    assert.equal(vm.clearDirtyLog(0, 64, 64, new Uint32Array([-1, -1])), 0, "nothing left to clear");
  });

for (const wp of designNames())
  test(`${wp}: a slot ending inside a bitmap word: CLEAR of its last, partial word clears just the asked pages`, () => {
    const { vm, write } = setup(wp, 1000); // the last word holds gfns 992..999
    write([960, 970, 995, 999]);
    assert.deepEqual(bits(vm.getDirtyLog(0)), [960, 970, 995, 999]);
    // Ask for 960 and 999 (bits 0 and 39 of the range from 960), not 970 or 995.
    assert.equal(vm.clearDirtyLog(0, 960, 40, new Uint32Array([1, 1 << 7])), 2);
    assert.deepEqual(bits(vm.getDirtyLog(0)), [970, 995]);
  });

/**
 * kvm_tdp_mmu_clear_dirty_pt_masked with the walk a harvest section keeps between masks: the
 * pages re-armed are exactly those of the masks, whatever their order (ascending in one leaf
 * table, across tables, backwards), as with a walk from the root per mask.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { is_writable_pte, SPTE_DIRTY } from "../../../src/mmu/spte.js";
import {
  kvm_tdp_mmu_clear_dirty_pt_masked,
  tdp_mmu_harvest_walk_reset,
  tdp_mmu_new_harvest_walk,
} from "../../../src/mmu/tdp_mmu/tdp_mmu_dirty.js";
import { vmKvm } from "../../../src/vm/internal.js";
import { Vm } from "../../../src/vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, SLOT } from "../../../src/kvm_host.js";
import { leaves, makeTdpVm, NPAGES, setLogging, writePages } from "./helpers.js";

/** [word, mask] pairs: same table ascending, a gap, the next table, back to the first. */
const MASKS: [number, number][] = [
  [0, 0b1011],
  [1, 1 << 31],
  [3, -1],
  [15, 1],
  [16, 0x00ff0000],
  [25, 0x80000001],
  [2, 0x10],
  [17, 1],
];

function expected(): Set<number> {
  const out = new Set<number>();
  for (const [w, m] of MASKS) for (let b = 0; b < 32; b++) if ((m & (1 << b)) !== 0) out.add(w * 32 + b);
  return out;
}

for (const pml of [true, false]) {
  for (const kept of [true, false]) {
    test(`clear_dirty_pt_masked (${pml ? "D bit" : "W bit"}, ${kept ? "kept walk" : "walk from the root"}) re-arms exactly the masked pages`, () => {
      const vm = makeTdpVm({ pml, thp: false, eager: false });
      const kvm = vmKvm(vm);
      const all = Array.from({ length: NPAGES }, (_, g) => g);
      writePages(vm, all, 1);
      setLogging(vm, true);
      writePages(vm, all, 2);
      const armed = (s: number): boolean => (pml ? (s & SPTE_DIRTY) === 0 : !is_writable_pte(s));
      for (const [g, [s]] of leaves(kvm)) assert.ok(!armed(s), `gfn ${g} armed before the clear`);
      const walk = tdp_mmu_new_harvest_walk(kvm);
      kvm.mmu_lock.write_lock();
      try {
        for (const [w, m] of MASKS) {
          const flush = kvm_tdp_mmu_clear_dirty_pt_masked(kvm, 0, w * 32, m, !pml, kept ? walk : undefined);
          assert.equal(flush, true, `word ${w}: its pages were dirty`);
        }
        tdp_mmu_harvest_walk_reset(walk);
      } finally {
        kvm.mmu_lock.write_unlock();
      }
      const want = expected();
      const got = [...leaves(kvm)].filter(([, [s]]) => armed(s)).map(([g]) => g);
      assert.deepEqual(
        got,
        [...want].sort((a, b) => a - b),
      );
    });
  }
}

test("clear_dirty_pt_masked on a slot whose bitmap words straddle leaf tables (base gfn 16) re-arms exactly the masked pages", () => {
  const vm = Vm.create({ memory: 16 << 20, wp: "tdp-mmu", maxVcpus: 1, eager_page_split: false });
  const base = 16;
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: base * 4096,
    memorySize: NPAGES * 4096,
    userspaceAddr: vm.mmap(NPAGES * 4096, { thp: false }),
  });
  vm.createVcpu(0);
  const kvm = vmKvm(vm);
  const all = Array.from({ length: NPAGES }, (_, g) => base + g);
  writePages(vm, all, 1);
  const hva = kvm.slots[SLOT.hva_page(0)] * 4096;
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: base * 4096,
    memorySize: NPAGES * 4096,
    userspaceAddr: hva,
  });
  writePages(vm, all, 2);
  // Word 15 covers gfns 496..527: the first leaf table's last 16 entries and the next one's first 16.
  const masks: [number, number][] = [
    [15, -1],
    [14, 0x80000001],
    [31, 0x0000ff00],
  ];
  const walk = tdp_mmu_new_harvest_walk(kvm);
  kvm.mmu_lock.write_lock();
  try {
    for (const [w, m] of masks)
      assert.equal(kvm_tdp_mmu_clear_dirty_pt_masked(kvm, 0, base + w * 32, m, false, walk), true);
    tdp_mmu_harvest_walk_reset(walk);
  } finally {
    kvm.mmu_lock.write_unlock();
  }
  const want: number[] = [];
  for (const [w, m] of masks)
    for (let b = 0; b < 32; b++) if ((m & (1 << b)) !== 0) want.push(base + w * 32 + b);
  const got = [...leaves(kvm)].filter(([, [s]]) => (s & SPTE_DIRTY) === 0).map(([g]) => g);
  assert.deepEqual(
    got,
    want.sort((a, b) => a - b),
  );
});

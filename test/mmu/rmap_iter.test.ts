/**
 * rmap.ts as the owner of the head: for_each_rmap_spte (and its restart rule), rmap_single_spte,
 * rmap_add/rmap_remove, and __rmap_write_protect's restart after dropping a large spte.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  for_each_rmap_spte,
  pte_list_add,
  pte_list_count,
  pte_list_remove,
  pte_list_walk,
  rmap_add,
  rmap_get_first,
  rmap_remove,
  RMAP_RESTART,
  rmap_single_spte,
  RmapCorrupt,
} from "../../src/mmu/rmap.js";
import { gfn_to_rmap } from "../../src/mem/memslot.js";
import { kvm_mmu_get_page } from "../../src/mmu/mmu_page.js";
import { __rmap_write_protect } from "../../src/mmu/wp_locked.js";
import {
  PT_PAGE_SIZE_MASK,
  PT_PRESENT_MASK,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  SPTE_HOST_WRITEABLE,
  SPTE_MMU_WRITEABLE,
  SPTE_PFN_SHIFT,
} from "../../src/mmu/spte.js";
import { Vm } from "../../src/vm.js";
import { makeKvm, range, sorted } from "../helpers/kvm.js";
import { vmKvm } from "../../src/vm/internal.js";

function listOf(n: number): { kvm: ReturnType<typeof makeKvm>; heads: Int32Array } {
  const kvm = makeKvm();
  const heads = new Int32Array(new SharedArrayBuffer(64));
  for (const e of range(1, n + 1)) pte_list_add(kvm, heads, 0, 0, e);
  return { kvm, heads };
}

test("rmap: for_each_rmap_spte visits every entry once (empty, single, chains)", () => {
  for (const n of [0, 1, 2, 3, 4, 7, 10]) {
    const { kvm, heads } = listOf(n);
    const seen: number[] = [];
    const acc = for_each_rmap_spte(kvm, heads, 0, (_k, s) => {
      seen.push(s);
      return 4;
    });
    assert.deepEqual(sorted(seen), range(0, n), `${n} entries`);
    assert.equal(acc, n === 0 ? 0 : 4, "returns the OR of the callback results");
  }
});

test("rmap: for_each_rmap_spte restarts after a drop, and every entry is dropped", () => {
  for (const n of [1, 3, 4, 7, 10]) {
    const { kvm, heads } = listOf(n);
    const dropped: number[] = [];
    for_each_rmap_spte(kvm, heads, 0, (k, s) => {
      pte_list_remove(k, heads, 0, s + 1);
      dropped.push(s);
      return RMAP_RESTART;
    });
    assert.deepEqual(sorted(dropped), range(0, n), `${n} entries`);
    assert.equal(heads[0], 0, "the list is empty");
  }
});

test("rmap: for_each_rmap_spte drops only some entries; the others are all visited", () => {
  const { kvm, heads } = listOf(10);
  const visits = new Map<number, number>();
  for_each_rmap_spte(kvm, heads, 0, (k, s) => {
    visits.set(s, (visits.get(s) ?? 0) + 1);
    if (s % 2 === 0) {
      pte_list_remove(k, heads, 0, s + 1);
      return RMAP_RESTART;
    }
    return 0;
  });
  assert.deepEqual(sorted(visits.keys()), range(0, 10));
  const left: number[] = [];
  pte_list_walk(kvm, heads, 0, (s) => left.push(s));
  assert.deepEqual(sorted(left), [1, 3, 5, 7, 9]);
});

test("rmap: without the restart a drop hides an entry (why the rule exists)", () => {
  // One descriptor [0, 1, 2] (spte indices): removing index 0 moves 2 into slot 0, behind the walk.
  const { kvm, heads } = listOf(3);
  const dropped: number[] = [];
  for_each_rmap_spte(kvm, heads, 0, (k, s) => {
    pte_list_remove(k, heads, 0, s + 1);
    dropped.push(s);
    return 0; // wrong: the list changed
  });
  assert.ok(dropped.length < 3, `dropped ${dropped.join(",")}`);
  assert.notEqual(heads[0], 0, "an entry was left behind");
});

test("rmap: rmap_single_spte decodes a single-entry head only", () => {
  const { kvm, heads } = listOf(0);
  assert.equal(rmap_single_spte(heads[0]), -1, "empty");
  pte_list_add(kvm, heads, 0, 0, 42);
  assert.equal(rmap_single_spte(heads[0]), 41, "single entry: the spte index");
  pte_list_add(kvm, heads, 0, 0, 43);
  assert.equal(rmap_single_spte(heads[0]), -1, "a chain");
  pte_list_remove(kvm, heads, 0, 42);
  assert.equal(rmap_single_spte(heads[0]), -1, "one entry left in a descriptor is still a chain");
  assert.equal(rmap_get_first(kvm, heads, 0), 42);
});

function smallVm(): { vm: Vm; hva: number } {
  const vm = Vm.create({ memory: 16 << 20, wp: "locked", maxVcpus: 1 });
  const hva = vm.mmap(4 << 20, { thp: false });
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 4 << 20, userspaceAddr: hva });
  return { vm, hva };
}

test("rmap: rmap_add / rmap_remove link an spte into the rmap of (gfn, level)", () => {
  const { vm } = smallVm();
  const kvm = vmKvm(vm);
  const hi1 = gfn_to_rmap(kvm, 0, 700, 1);
  const hi2 = gfn_to_rmap(kvm, 0, 700, 2);
  assert.equal(rmap_add(kvm, 5000, 700, 1), 0, "no entry before");
  assert.equal(rmap_add(kvm, 5001, 700, 1), 1);
  assert.equal(rmap_add(kvm, 6000, 700, 2), 0);
  assert.equal(pte_list_count(kvm, kvm.rmapPool, hi1), 2);
  assert.equal(rmap_get_first(kvm, kvm.rmapPool, hi2), 6000);
  rmap_remove(kvm, 5000, 700, 1);
  assert.equal(rmap_get_first(kvm, kvm.rmapPool, hi1), 5001);
  assert.equal(rmap_single_spte(kvm.rmapPool[hi2]), 6000, "a single-entry head");
  assert.throws(() => rmap_remove(kvm, 5000, 700, 1), RmapCorrupt, "not on the list any more");
  assert.throws(() => rmap_add(kvm, 1, 1 << 20, 1), RmapCorrupt, "a gfn in no memslot");
  assert.throws(() => rmap_remove(kvm, 1, 1 << 20, 1), RmapCorrupt);
  rmap_remove(kvm, 5001, 700, 1);
  rmap_remove(kvm, 6000, 700, 2);
  assert.equal(kvm.rmapPool[hi1], 0);
  assert.equal(kvm.rmapPool[hi2], 0);
});

test("rmap: __rmap_write_protect drops every writable large spte of a chain (restart after each drop)", () => {
  const { vm } = smallVm();
  const kvm = vmKvm(vm);
  // Five level-2 pages all claiming gfn 512: their index-0 sptes share the rmap of (512, 2).
  const large =
    PT_PRESENT_MASK |
    PT_WRITABLE_MASK |
    PT_PAGE_SIZE_MASK |
    SPTE_HOST_WRITEABLE |
    SPTE_MMU_WRITEABLE |
    (7 << SPTE_PFN_SHIFT);
  const hi = gfn_to_rmap(kvm, 0, 512, 2);
  const sptes: number[] = [];
  kvm.mmu_lock.lock();
  try {
    for (let k = 0; k < 5; k++) {
      const sp = kvm_mmu_get_page(kvm, 512, 2);
      const sptep = sp * PT64_ENT_PER_PAGE;
      kvm.spt[sptep] = large;
      rmap_add(kvm, sptep, 512, 2);
      sptes.push(sptep);
    }
    assert.equal(pte_list_count(kvm, kvm.rmapPool, hi), 5);
    assert.equal(__rmap_write_protect(kvm, hi), true, "a flush is needed");
  } finally {
    kvm.mmu_lock.unlock();
  }
  assert.equal(kvm.rmapPool[hi], 0, "every large spte left the rmap");
  for (const s of sptes) assert.equal(kvm.spt[s], 0, `spte ${s} dropped`);
});

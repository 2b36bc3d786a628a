import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL, DESC } from "../../src/kvm_host.js";
import { descLinkBase, mmu_alloc_pte_list_desc, mmu_free_pte_list_desc } from "../../src/alloc/slab.js";
import { KvmError } from "../../src/errors.js";
import { pte_list_add, pte_list_remove } from "../../src/mmu/rmap.js";
import { makeKvm, range, Rng, viewList } from "../helpers/kvm.js";

test("slab: fresh descriptors come in order, with counters", () => {
  const kvm = makeKvm({ maxDesc: 8 });
  for (let i = 0; i < 8; i++) {
    assert.equal(mmu_alloc_pte_list_desc(kvm), i);
    assert.equal(kvm.ctl[CTL.desc_high], i + 1);
    assert.equal(kvm.ctl[CTL.desc_used], i + 1);
    assert.equal(kvm.ctl[CTL.desc_allocs], i + 1);
  }
  assert.ok(descLinkBase(kvm) >= DESC.row(8), "free-list links live beside the descriptors");
  assert.ok(descLinkBase(kvm) + 8 <= kvm.desc.length, "room for one link per descriptor");
});

test("slab: exhaustion throws ENOMEM without changing the slab", () => {
  const kvm = makeKvm({ maxDesc: 4 });
  for (let i = 0; i < 4; i++) mmu_alloc_pte_list_desc(kvm);
  assert.throws(
    () => mmu_alloc_pte_list_desc(kvm),
    (e: unknown) => e instanceof KvmError && e.code === "ENOMEM" && /maxDesc/.test(e.message),
  );
  assert.equal(kvm.ctl[CTL.desc_used], 4);
  assert.equal(kvm.ctl[CTL.desc_high], 4);
  mmu_free_pte_list_desc(kvm, 2);
  assert.equal(mmu_alloc_pte_list_desc(kvm), 2, "a freed descriptor makes room again");
});

test("slab: a freed descriptor is handed out again (LIFO), with more == 0 right after alloc", () => {
  const kvm = makeKvm({ maxDesc: 16 });
  const ds = range(0, 6).map(() => mmu_alloc_pte_list_desc(kvm));
  // give them chain-like contents
  for (const d of ds) {
    for (let w = 0; w < DESC.STRIDE; w++) kvm.desc[DESC.row(d) + w] = 1000 + d * 10 + w;
  }
  mmu_free_pte_list_desc(kvm, ds[1]);
  mmu_free_pte_list_desc(kvm, ds[4]);
  assert.equal(kvm.ctl[CTL.desc_used], 4);
  // SLAB_DESTROY_BY_RCU: a freed descriptor keeps its last contents for walkers still on it
  for (const d of [ds[1], ds[4]])
    for (let w = 0; w < DESC.STRIDE; w++) assert.equal(kvm.desc[DESC.row(d) + w], 1000 + d * 10 + w);
  const a = mmu_alloc_pte_list_desc(kvm);
  assert.equal(a, ds[4], "last freed, first reused");
  assert.equal(kvm.desc[DESC.more(a)], 0, "`more` is 0 (under construction) after alloc");
  const b = mmu_alloc_pte_list_desc(kvm);
  assert.equal(b, ds[1]);
  assert.equal(kvm.desc[DESC.more(b)], 0);
  assert.equal(mmu_alloc_pte_list_desc(kvm), 6, "free list empty: the next never-used descriptor");
  assert.equal(kvm.ctl[CTL.desc_allocs], 9);
  assert.equal(kvm.ctl[CTL.desc_used], 7);
  // the other descriptors were not touched
  for (const d of [ds[0], ds[2], ds[3], ds[5]])
    for (let w = 0; w < DESC.STRIDE; w++) assert.equal(kvm.desc[DESC.row(d) + w], 1000 + d * 10 + w);
});

test("slab: descriptors freed by one rmap head are reused by another; the high-water mark stays bounded", () => {
  const kvm = makeKvm({ maxDesc: 64 });
  const heads = kvm.rmapPool;
  const rng = new Rng(5);
  let high = 0;
  for (let round = 0; round < 50; round++) {
    const hi = round % 4;
    const entries = rng.shuffle(range(1, 31));
    for (const e of entries) pte_list_add(kvm, heads, hi, hi, e);
    high = Math.max(high, kvm.ctl[CTL.desc_high]);
    for (const e of rng.shuffle(entries)) pte_list_remove(kvm, heads, hi, e);
    assert.equal(heads[hi], 0);
    assert.equal(kvm.ctl[CTL.desc_used], 0);
  }
  // 30 entries need 10 descriptors; 50 rounds x 10 allocations all came from the same 10
  assert.equal(high, 10);
  assert.equal(kvm.ctl[CTL.desc_high], 10);
  assert.ok(kvm.ctl[CTL.desc_allocs] >= 500);
  // a chain built from recycled descriptors is well formed
  for (const e of range(1, 11)) pte_list_add(kvm, heads, 7, 7, e);
  const v = viewList(kvm, heads, 7);
  assert.equal(v.kind, "chain");
  assert.ok(v.descs.every((d) => d < 10));
});

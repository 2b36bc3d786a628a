import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm } from "../../src/vm.js";
import { vmKvm } from "../../src/vm/internal.js";
import { SCENARIOS } from "../../src/verify/scenarios.js";
import { withDesign } from "../../src/verify/explore_design.js";
import {
  ARR_BITMAP,
  ARR_CTL,
  ARR_DESC,
  ARR_HPT,
  ARR_MEM,
  ARR_RING,
  ARR_RMAP,
  ARR_SPHDR,
  ARR_SPT,
  ARR_VCPU,
  locationName,
} from "../../src/verify/trace_names.js";
import { CTL, DESC, Kvm, RING_GFN, RING_HDR, SLOT, SP, VCPU, ROLE_LEVEL_MASK } from "../../src/kvm_host.js";
import { gfn_to_rmap } from "../../src/mem/memslot.js";
import { ring_base } from "../../src/mem/dirty_ring.js";
import { kvm_mmu_page_get_gfn } from "../../src/mmu/mmu_page.js";
import { hva_to_pfn } from "../../src/mem/host_memory.js";

/** A scenario's VM as its setup leaves it (the explorer's starting point). */
function scenarioKvm(name: string, mode: "tdp" | "shadow" = "tdp"): Kvm {
  const s = SCENARIOS[name];
  const vm = Vm.create(withDesign(s.vmOptions([], mode), s.onlyDesign));
  s.setup(vm, new Int32Array(s.scratchWords));
  return vmKvm(vm);
}

/** Every spte of every page in use names the gfn kvm_mmu_page_get_gfn gives it, its level and its place. */
function checkSptes(kvm: Kvm): number {
  let n = 0;
  for (let sp = 0; sp < kvm.spHdr.length / SP.STRIDE; sp++) {
    const level = kvm.spHdr[SP.role(sp)] & ROLE_LEVEL_MASK;
    if (level === 0) continue;
    for (const i of [0, 100, 511]) {
      const sptep = sp * 512 + i;
      const gfn = kvm_mmu_page_get_gfn(kvm, sptep);
      assert.equal(
        locationName(kvm, ARR_SPT, sptep),
        `spte gfn 0x${gfn.toString(16)} level ${level} (sp ${sp} index ${i})`,
      );
      n++;
    }
  }
  return n;
}

test("names: sptes of the rmap MMU's and the TDP MMU's page tables, and of shadow pages", () => {
  assert.ok(
    checkSptes(scenarioKvm("skip-flush")) >= 4 * 3,
    "the skip-flush VM maps gfn 0x64 through four levels",
  );
  assert.ok(checkSptes(scenarioKvm("tdp-zap-yield-noflush")) >= 3, "the TDP MMU's tables");
  assert.ok(checkSptes(scenarioKvm("skip-flush", "shadow")) >= 3, "shadow mode");
  const kvm = scenarioKvm("skip-flush");
  const root = kvm.ctl[CTL.root];
  assert.equal(locationName(kvm, ARR_SPT, root * 512), `spte gfn 0x0 level 4 (sp ${root} index 0)`);
  // A page not in use has no gfn to give.
  const free = kvm.spHdr.length / SP.STRIDE - 1;
  assert.equal(locationName(kvm, ARR_SPT, free * 512 + 3), `spte (sp ${free} index 3, sp not in use)`);
});

test("names: rmap heads, pte_list_desc entries, dirty bitmap words", () => {
  const kvm = scenarioKvm("skip-flush");
  assert.equal(
    locationName(kvm, ARR_RMAP, gfn_to_rmap(kvm, 0, 0x64, 1)),
    "rmap head gfn 0x64 level 1 slot 0",
  );
  assert.equal(
    locationName(kvm, ARR_RMAP, gfn_to_rmap(kvm, 0, 0x234, 2)),
    "rmap head gfn 0x200 level 2 slot 0",
  );
  assert.equal(locationName(kvm, ARR_DESC, DESC.sptes(91) + 2), "pte_list_desc 91 entry 2");
  assert.equal(locationName(kvm, ARR_DESC, DESC.more(91)), "pte_list_desc 91 more");
  const b = kvm.slots[SLOT.bitmap_base(0)];
  const words = kvm.slots[SLOT.bitmap_words(0)];
  assert.equal(locationName(kvm, ARR_BITMAP, b + 3), "dirty_bitmap slot 0 word 3 (gfns 0x60-0x7f)");
  assert.equal(
    locationName(kvm, ARR_BITMAP, b + words + 1),
    "dirty_bitmap snapshot slot 0 word 1 (gfns 0x20-0x3f)",
  );
});

test("names: mmu_lock and the other control words, vcpu words, sp headers", () => {
  const kvm = scenarioKvm("skip-flush");
  assert.equal(locationName(kvm, ARR_CTL, CTL.mmu_lock), "mmu_lock");
  assert.equal(locationName(kvm, ARR_CTL, CTL.mmu_lock + 2), "mmu_lock.owner");
  assert.equal(locationName(kvm, ARR_CTL, CTL.slots_lock + 1), "slots_lock.owner");
  assert.equal(locationName(kvm, ARR_CTL, CTL.notifier_seq), "notifier_seq");
  assert.equal(locationName(kvm, ARR_CTL, CTL.rcu + 1), "rcu reader 0");
  assert.equal(locationName(kvm, ARR_VCPU, VCPU.mode(1)), "vcpu 1 mode");
  assert.equal(locationName(kvm, ARR_VCPU, VCPU.requests(0)), "vcpu 0 requests");
  assert.equal(locationName(kvm, ARR_SPHDR, SP.root_count(7)), "sp 7 root_count");
});

test("names: guest memory and host ptes by the gfn that maps them", () => {
  const kvm = scenarioKvm("skip-flush");
  const hva = kvm.slots[SLOT.hva_page(0)] + 0x64;
  const pfn = hva_to_pfn(kvm, hva);
  assert.ok(pfn >= 0, "gfn 0x64 is backed");
  assert.equal(
    locationName(kvm, ARR_MEM, pfn * 1024 + 2),
    `guest memory gfn 0x64 slot 0 offset 0x8 (pfn 0x${pfn.toString(16)})`,
  );
  assert.equal(locationName(kvm, ARR_HPT, hva), `host pte hva page 0x${hva.toString(16)} (gfn 0x64 slot 0)`);
});

test("names: dirty ring headers and entries", () => {
  const kvm = scenarioKvm("ring-flags-before-entry");
  assert.ok(kvm.ctl[CTL.dirty_ring_size] > 17, "a ring VM");
  const b = ring_base(kvm, 0);
  assert.equal(locationName(kvm, ARR_RING, b + RING_GFN.flags(17)), "dirty ring vcpu 0 entry 17 flags");
  assert.equal(locationName(kvm, ARR_RING, b + RING_GFN.offset_lo(3)), "dirty ring vcpu 0 entry 3 offset_lo");
  assert.equal(locationName(kvm, ARR_RING, b + RING_HDR.dirty_index), "dirty ring vcpu 0 dirty_index");
  if (kvm.ctl[CTL.nr_vcpus] > 1)
    assert.equal(
      locationName(kvm, ARR_RING, ring_base(kvm, 1) + RING_HDR.reset_index),
      "dirty ring vcpu 1 reset_index",
    );
});

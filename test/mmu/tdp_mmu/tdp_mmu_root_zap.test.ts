/**
 * tdp_mmu_zap_root (the teardown of a root that lost its last reference): a walk of the root's
 * entries that may yield. Every table is freed whatever the yields; with bug tdp-iter-skip
 * (3a0f64de479c) a yield skips the next top-level spte and its tables leak.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL } from "../../../src/kvm_host.js";
import { Vm } from "../../../src/vm.js";
import { vmKvm } from "../../../src/vm/internal.js";
import { audit } from "../../../src/verify/audit.js";
import { tdp_mmu_state } from "../../../src/mmu/tdp_mmu/tdp_mmu_state.js";
import { writePages } from "./helpers.js";

/** A VM whose root has two present entries (gfn 0 and 2^27), torn down yielding every step. */
function tearDown(bugs: "tdp-iter-skip"[]): {
  before: number;
  after: number;
  yields: number;
  audit: string[];
} {
  const vm = Vm.create({ memory: 16 << 20, wp: "tdp-mmu", maxVcpus: 1, bugs });
  for (const [slot, gpa] of [
    [0, 0],
    [1, 2 ** 39],
  ])
    vm.setUserMemoryRegion({
      slot,
      flags: 0,
      guestPhysAddr: gpa,
      memorySize: 1 << 20,
      userspaceAddr: vm.mmap(1 << 20),
    });
  vm.createVcpu(0);
  writePages(vm, [0, 2 ** 27 + 1], 1);
  const kvm = vmKvm(vm);
  const before = kvm.ctl[CTL.sp_used];
  const st = tdp_mmu_state(kvm);
  st.forceYieldEvery = 1;
  kvm.mmu_lock.write_lock();
  try {
    assert.equal(kvm.ops.zap_all?.(kvm), true);
  } finally {
    kvm.mmu_lock.write_unlock();
    st.forceYieldEvery = 0;
  }
  const r = { before, after: kvm.ctl[CTL.sp_used], yields: st.yields, audit: audit(kvm, 3) };
  return r;
}

test("zap_all tears the root down with yields and frees all its tables; bug tdp-iter-skip leaks the skipped entry's", () => {
  const ok = tearDown([]);
  assert.equal(ok.before, 7, "root + 3 tables under each of its two entries");
  assert.ok(ok.yields > 0);
  assert.equal(ok.after, 0);
  assert.deepEqual(ok.audit, []);
  const bad = tearDown(["tdp-iter-skip"]);
  assert.equal(bad.after, 3, "the second entry's three tables are never freed");
  assert.match(bad.audit.join("; "), /3 tables in use but 0 reachable from the root: tables leaked/);
});

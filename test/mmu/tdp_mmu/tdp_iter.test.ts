/**
 * tdp_iter and tdp_mmu_iter_cond_resched: a walk that yields restarts at the root and visits
 * every spte; with the 3a0f64de479c bug (advance after the restart) a yield loses sptes.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL } from "../../../src/kvm_host.js";
import { tdp_iter_in_range, tdp_iter_next, tdp_iter_start } from "../../../src/mmu/tdp_mmu/tdp_iter.js";
import { tdp_iter_for, tdp_mmu_iter_cond_resched } from "../../../src/mmu/tdp_mmu/tdp_mmu_resched.js";
import { tdp_mmu_state } from "../../../src/mmu/tdp_mmu/tdp_mmu_state.js";
import { BUG_TDP } from "../../../src/mmu/tdp_mmu/tdp_mmu_bugs.js";
import { Vm } from "../../../src/vm.js";
import { is_last_spte, is_shadow_present_pte } from "../../../src/mmu/spte.js";
import { makeTdpVm, NPAGES, writePages } from "./helpers.js";
import { Kvm } from "../../../src/kvm_host.js";
import { vmKvm } from "../../../src/vm/internal.js";

/** The leaf gfns a (possibly yielding) walk of the whole slot visits, in order. */
function walkLeaves(kvm: Kvm, yieldEvery: number, bug = false): { gfns: number[]; yields: number } {
  const st = tdp_mmu_state(kvm);
  st.forceYieldEvery = yieldEvery;
  const y0 = st.yields;
  const it = tdp_iter_for(kvm);
  it.skipAfterRestart = bug;
  const gfns: number[] = [];
  kvm.mmu_lock.read_lock();
  try {
    for (
      tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 1, 0);
      tdp_iter_in_range(it, NPAGES);
      tdp_iter_next(kvm, it)
    ) {
      if (tdp_mmu_iter_cond_resched(kvm, it, false, true)) continue;
      if (is_shadow_present_pte(it.old_spte) && is_last_spte(it.old_spte, it.level)) gfns.push(it.gfn);
    }
  } finally {
    kvm.mmu_lock.read_unlock();
    st.forceYieldEvery = 0;
  }
  return { gfns, yields: st.yields - y0 };
}

function mapped4k(): Vm {
  const vm = makeTdpVm({ thp: false });
  writePages(
    vm,
    Array.from({ length: NPAGES }, (_, g) => g),
    1,
  );
  return vm;
}

test("tdp_iter: pre-order walk visits every 4 KiB leaf once, in gfn order", () => {
  const vm = mapped4k();
  const { gfns, yields } = walkLeaves(vmKvm(vm), 0);
  assert.equal(yields, 0);
  assert.deepEqual(
    gfns,
    Array.from({ length: NPAGES }, (_, g) => g),
  );
});

test("tdp_iter: a walk that yields restarts at the root and skips no spte", () => {
  const vm = mapped4k();
  const { gfns, yields } = walkLeaves(vmKvm(vm), 7);
  assert.ok(yields > 100, `yields ${yields}`);
  assert.deepEqual(
    gfns,
    Array.from({ length: NPAGES }, (_, g) => g),
  );
});

test("tdp_iter: yields only after forward progress (two in a row at one gfn: one yield)", () => {
  const vm = mapped4k();
  const kvm = vmKvm(vm);
  const st = tdp_mmu_state(kvm);
  st.forceYieldEvery = 1;
  const it = tdp_iter_for(kvm);
  kvm.mmu_lock.read_lock();
  try {
    tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 1, 100);
    assert.equal(tdp_mmu_iter_cond_resched(kvm, it, false, true), false, "no progress since the start");
    for (let i = 0; i < 4; i++) tdp_iter_next(kvm, it);
    assert.equal(tdp_mmu_iter_cond_resched(kvm, it, false, true), true);
    tdp_iter_next(kvm, it); // the restart
    assert.equal(it.level, it.root_level, "restarted at the root");
    assert.equal(tdp_mmu_iter_cond_resched(kvm, it, false, true), false, "no progress since the yield");
  } finally {
    kvm.mmu_lock.read_unlock();
    st.forceYieldEvery = 0;
  }
});

test("tdp_iter: a yield with a flush pending flushes before dropping the lock", () => {
  const vm = mapped4k();
  const kvm = vmKvm(vm);
  const st = tdp_mmu_state(kvm);
  st.forceYieldEvery = 1;
  const it = tdp_iter_for(kvm);
  const f0 = kvm.ctl[CTL.remote_flushes];
  kvm.mmu_lock.write_lock();
  try {
    tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 1, 0);
    for (let i = 0; i < 5; i++) tdp_iter_next(kvm, it);
    assert.equal(tdp_mmu_iter_cond_resched(kvm, it, true, false), true);
  } finally {
    kvm.mmu_lock.write_unlock();
    st.forceYieldEvery = 0;
  }
  assert.equal(kvm.ctl[CTL.remote_flushes] - f0, 1);
  assert.equal(st.yieldFlushes, 1);
});

/** Top-level sptes a walk at the root level visits, yielding at every chance. */
function walkTop(kvm: Kvm, bug: boolean): number[] {
  const st = tdp_mmu_state(kvm);
  st.forceYieldEvery = 1;
  const it = tdp_iter_for(kvm);
  it.skipAfterRestart = bug;
  const seen: number[] = [];
  kvm.mmu_lock.read_lock();
  try {
    for (
      tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 4, 0);
      tdp_iter_in_range(it, 2 ** 31);
      tdp_iter_next(kvm, it)
    ) {
      if (tdp_mmu_iter_cond_resched(kvm, it, false, true)) continue;
      if (is_shadow_present_pte(it.old_spte)) seen.push(it.gfn / 2 ** 27);
    }
  } finally {
    kvm.mmu_lock.read_unlock();
    st.forceYieldEvery = 0;
  }
  return seen;
}

test("tdp_iter at the root level: a yield before the next top-level spte does not skip it; bug tdp-iter-skip (3a0f64de479c) does", () => {
  const vm = makeTdpVm({ thp: false });
  // A second slot 512 GiB up: the second top-level spte.
  const hva = vm.mmap(1 << 20);
  vm.setUserMemoryRegion({
    slot: 1,
    flags: 0,
    guestPhysAddr: 2 ** 39,
    memorySize: 1 << 20,
    userspaceAddr: hva,
  });
  writePages(vm, [0, 2 ** 27, 2 ** 27 + 1], 1);
  assert.equal(vmKvm(vm).bug(BUG_TDP["tdp-iter-skip"]), false);
  assert.deepEqual(walkTop(vmKvm(vm), false), [0, 1]);
  assert.deepEqual(walkTop(vmKvm(vm), true), [0], "the bug skips the top-level spte it restarted at");
});

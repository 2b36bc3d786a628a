/**
 * The frozen-spte protocol and freeing after the grace period: a removed table's children are
 * frozen (a cmpxchg from a value read before the removal fails), the table goes to the pending
 * list only with a flush and an RCU epoch, and is reused only once that epoch is over, under the
 * write lock. Lock-mode assertions on every entry point.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL, ROLE_INVALID, SP } from "../../../src/kvm_host.js";
import { LockdepError } from "../../../src/kvm/lockdep.js";
import { PT64_ENT_PER_PAGE, spte_to_child_sp } from "../../../src/mmu/spte.js";
import { TdpIter, tdp_iter_next, tdp_iter_start } from "../../../src/mmu/tdp_mmu/tdp_iter.js";
import {
  EBUSY,
  FROZEN_SPTE,
  kvm_tdp_mmu_write_spte,
  tdp_mmu_set_spte_atomic,
} from "../../../src/mmu/tdp_mmu/tdp_mmu_spte.js";
import { tdp_mmu_state } from "../../../src/mmu/tdp_mmu/tdp_mmu_state.js";
import { kvm_tdp_mmu_zap_spte_atomic_for_test } from "./zap_helper.js";
import { sp_pool_pop } from "../../../src/mmu/mmu_page.js";
import {
  kvm_tdp_mmu_clear_dirty_pt_masked,
  kvm_tdp_mmu_wrprot_slot,
} from "../../../src/mmu/tdp_mmu/tdp_mmu_dirty.js";
import { kvm_tdp_mmu_unmap_hva_range } from "../../../src/mmu/tdp_mmu/tdp_mmu_zap.js";
import { Vm } from "../../../src/vm.js";
import { makeTdpVm, NPAGES, writePages } from "./helpers.js";
import { vmKvm } from "../../../src/vm/internal.js";

/** A 4 KiB-mapped VM and an iterator standing on the level-2 link spte of gfn 0. */
function atLevel2(): { vm: Vm; it: TdpIter } {
  const vm = makeTdpVm({ thp: false });
  writePages(vm, [0, 1, 2, 600], 1);
  const kvm = vmKvm(vm);
  const it = new TdpIter();
  tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 2, 0);
  while (it.level > 2) tdp_iter_next(kvm, it);
  return { vm, it };
}

test("frozen: set_spte_atomic on a frozen spte is EBUSY; a lost cmpxchg reports the winner", () => {
  const { vm, it } = atLevel2();
  const kvm = vmKvm(vm);
  kvm.mmu_lock.read_lock();
  try {
    const seen = it.old_spte;
    kvm.spt[it.sptep] = FROZEN_SPTE;
    assert.equal(tdp_mmu_set_spte_atomic(kvm, it, 0), EBUSY, "stale expected value");
    assert.equal(it.old_spte, FROZEN_SPTE, "the iterator learns the value that won");
    assert.equal(tdp_mmu_set_spte_atomic(kvm, it, 0), EBUSY, "frozen: no try");
    assert.equal(kvm.spt[it.sptep], FROZEN_SPTE);
    kvm.spt[it.sptep] = seen;
  } finally {
    kvm.mmu_lock.read_unlock();
  }
});

test("frozen: zapping a table under the read lock freezes its 512 children, then frees it after the grace period", () => {
  const { vm, it } = atLevel2();
  const kvm = vmKvm(vm);
  const child = spte_to_child_sp(it.old_spte);
  const leafBefore = kvm.spt[child * PT64_ENT_PER_PAGE + 1];
  const f0 = kvm.ctl[CTL.remote_flushes];
  const used0 = kvm.ctl[CTL.sp_used];
  // An RCU reader (the ioctl thread's slot) holds on: the table must outlive it.
  kvm.rcu.readLock(3);
  kvm.mmu_lock.read_lock();
  try {
    assert.equal(kvm_tdp_mmu_zap_spte_atomic_for_test(kvm, it), 0);
  } finally {
    kvm.mmu_lock.read_unlock();
  }
  assert.equal(kvm.spt[it.sptep], 0, "the link is gone");
  for (let i = 0; i < PT64_ENT_PER_PAGE; i++)
    assert.equal(kvm.spt[child * PT64_ENT_PER_PAGE + i], FROZEN_SPTE, `child ${i} frozen`);
  assert.ok((kvm.spHdr[SP.role(child)] & ROLE_INVALID) !== 0);
  // A thread that read a child before the removal cannot write into the dead table.
  const stale = new TdpIter();
  stale.sptep = child * PT64_ENT_PER_PAGE + 1;
  stale.old_spte = leafBefore;
  kvm.mmu_lock.read_lock();
  try {
    assert.equal(tdp_mmu_set_spte_atomic(kvm, stale, 0), EBUSY);
  } finally {
    kvm.mmu_lock.read_unlock();
  }
  assert.ok(kvm.ctl[CTL.remote_flushes] - f0 >= 1, "flushed before the table was handed to RCU");
  assert.equal(kvm.ctl[CTL.sp_used], used0 - 1);
  assert.equal(kvm.ctl[CTL.sp_pending], child + 1, "on the pending list");
  assert.equal(tdp_mmu_state(kvm).freed, 1);
  // Not reusable while the reader is inside its section...
  kvm.mmu_lock.write_lock();
  const got: number[] = [];
  try {
    kvm.ctl[CTL.sp_free] = 0;
    kvm.ctl[CTL.sp_high] = kvm.shared.config.maxSp; // only retired pages are left
    for (let sp = sp_pool_pop(kvm); sp >= 0; sp = sp_pool_pop(kvm)) got.push(sp);
    assert.ok(!got.includes(child), "reused inside the grace period");
    kvm.rcu.readUnlock(3);
    const again = sp_pool_pop(kvm);
    assert.equal(again, child, "reusable once the reader left");
  } finally {
    kvm.mmu_lock.write_unlock();
  }
});

test("write_spte: an spte with volatile bits is replaced by xchg (a D set meanwhile is seen)", () => {
  const { vm } = atLevel2();
  const kvm = vmKvm(vm);
  const it = new TdpIter();
  tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 1, 1);
  while (it.level > 1) tdp_iter_next(kvm, it);
  const read = it.old_spte;
  kvm.spt[it.sptep] = read | 16; // the vCPU sets something after the read
  kvm.mmu_lock.write_lock();
  try {
    assert.equal(
      kvm_tdp_mmu_write_spte(kvm, it.sptep, read, 0, 1),
      read | 16,
      "the caller learns the real old value",
    );
  } finally {
    kvm.mmu_lock.write_unlock();
  }
});

test("lockdep: each entry point asserts its mmu_lock mode", () => {
  const vm = makeTdpVm({ thp: false });
  writePages(vm, [0], 1);
  const kvm = vmKvm(vm);
  assert.throws(() => kvm_tdp_mmu_clear_dirty_pt_masked(kvm, 0, 0, 1, true), LockdepError);
  kvm.mmu_lock.read_lock();
  try {
    assert.throws(
      () => kvm_tdp_mmu_clear_dirty_pt_masked(kvm, 0, 0, 1, true),
      LockdepError,
      "write-lock only",
    );
    assert.throws(() => kvm_tdp_mmu_unmap_hva_range(kvm, 0, 1 << 20), LockdepError, "write-lock only");
  } finally {
    kvm.mmu_lock.read_unlock();
  }
  kvm.mmu_lock.write_lock();
  try {
    assert.throws(() => kvm_tdp_mmu_wrprot_slot(kvm, 0, 1), LockdepError, "read-lock only");
    const it = new TdpIter();
    tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 1, 0);
    assert.throws(
      () => tdp_mmu_set_spte_atomic(kvm, it, 0),
      LockdepError,
      "atomic updates are the read side's",
    );
  } finally {
    kvm.mmu_lock.write_unlock();
  }
  assert.deepEqual(kvm.ops.lock, {
    page_fault: "read",
    fast_page_fault: "none",
    protectMasked: "write",
    slotRemoveWriteAccess: "read",
    zap_gfn_range: "write",
  });
  assert.ok(NPAGES > 0);
});

test("bug tdp-wrong-lock (47b0c2e4c220): a write-lock-only helper in the read-locked fault is caught", () => {
  const vm = Vm.create({ memory: 16 << 20, wp: "tdp-mmu", maxVcpus: 1, bugs: ["tdp-wrong-lock"] });
  const hva = vm.mmap(1 << 20);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 1 << 20, userspaceAddr: hva });
  vm.createVcpu(0);
  assert.throws(() => writePages(vm, [0], 1), LockdepError);
  const ok = makeTdpVm();
  assert.doesNotThrow(() => writePages(ok, [0], 1));
});

/**
 * lockdep on mmu_lock: each MMU op declares the mode in which it holds mmu_lock, and the ops
 * that run inside their caller's section assert it at entry. A call without the lock it
 * declares is caught; with KvmConfig.lockdep off the assertions are skipped.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvmError } from "../../src/errors.js";
import {
  LockdepError,
  lockdep_assert_held,
  lockdep_assert_held_read,
  lockdep_assert_held_write,
} from "../../src/kvm/lockdep.js";
import { kvm_mmu_assert_lock } from "../../src/mmu/kvm_mmu.js";
import { newDirtyLogTimes } from "../../src/mmu/dirty_log.js";
import { designNames, designOps } from "../../src/mmu/design.js";
import { MmuMode } from "../../src/kvm_host.js";
import { makeKvm } from "../helpers/kvm.js";

test("lockdep: protectMasked of locked without mmu_lock is caught; inside harvestBegin/End it runs", () => {
  const kvm = makeKvm({ wp: "locked" });
  assert.equal(kvm.ops.lock.protectMasked, "write");
  assert.throws(() => kvm.ops.protectMasked(kvm, 0, 0, 1), LockdepError);
  kvm.mmu_lock.read_lock();
  assert.throws(() => kvm.ops.protectMasked(kvm, 0, 0, 1), /held for write \(this thread holds read\)/);
  kvm.mmu_lock.read_unlock();
  const t = newDirtyLogTimes();
  kvm.ops.harvestBegin(kvm, t);
  assert.equal(kvm.ops.protectMasked(kvm, 0, 0, 1), false);
  kvm.ops.harvestEnd(kvm, false, t);
  assert.ok(!kvm.mmu_lock.isLocked());
});

test("lockdep: the notifier's zap without mmu_lock is caught", () => {
  for (const wp of designNames()) {
    const kvm = makeKvm({ wp });
    assert.throws(() => kvm.ops.zap_gfn_range(kvm, 0, 1), LockdepError, wp);
    kvm.mmu_lock.write_lock();
    assert.equal(kvm.ops.zap_gfn_range(kvm, 0, 1), false);
    kvm.mmu_lock.write_unlock();
  }
});

test("lockdep: the assertions follow this thread's holds; off with KvmConfig.lockdep = false", () => {
  const kvm = makeKvm();
  assert.throws(() => lockdep_assert_held(kvm), LockdepError);
  kvm.mmu_lock.read_lock();
  lockdep_assert_held(kvm);
  lockdep_assert_held_read(kvm);
  assert.throws(() => lockdep_assert_held_write(kvm), LockdepError);
  kvm.mmu_lock.read_unlock();
  kvm.mmu_lock.write_lock();
  lockdep_assert_held(kvm);
  lockdep_assert_held_write(kvm);
  assert.throws(() => lockdep_assert_held_read(kvm), LockdepError);
  kvm_mmu_assert_lock(kvm, "zap_gfn_range");
  kvm.mmu_lock.write_unlock();
  const off = makeKvm({ wp: "locked", lockdep: false });
  assert.equal(off.lockdep, false);
  assert.equal(off.ops.protectMasked(off, 0, 0, 1), false, "not asserted");
});

test("lockdep: every design declares a lock mode for each op, in both paging modes", () => {
  for (const wp of designNames())
    for (const mode of [MmuMode.Tdp, MmuMode.Shadow]) {
      let ops;
      try {
        ops = designOps(wp, mode);
      } catch (e) {
        // A design may refuse a paging mode (the TDP MMU refuses shadow paging), with a KvmError.
        if (e instanceof KvmError && mode === MmuMode.Shadow) continue;
        throw e;
      }
      for (const op of [
        "page_fault",
        "fast_page_fault",
        "protectMasked",
        "slotRemoveWriteAccess",
        "zap_gfn_range",
      ] as const)
        assert.ok(["read", "write", "none"].includes(ops.lock[op]), `${wp} ${op}`);
      if (wp === "locked" || wp === "lockless")
        assert.equal(ops.lock.page_fault, "write", "the rmap MMU's designs fault under the write lock");
    }
});

test("lockdep: lockdep_assert_held without mmu_lock names both modes", () => {
  const kvm = makeKvm();
  assert.throws(
    () => lockdep_assert_held(kvm),
    (e: unknown) =>
      e instanceof LockdepError &&
      e.message === "lockdep: mmu_lock must be held for read or write (this thread holds nothing)",
  );
  kvm.mmu_lock.read_lock();
  lockdep_assert_held(kvm);
  kvm.mmu_lock.read_unlock();
});

/**
 * kvm_watch_locks and kvm_find_lockup on one VM in this thread, with the test's own clock
 * (performance.now stubbed): which thread's read holds of mmu_lock are published, and where the
 * soft-lockup bound lies.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  HOLDER_HOST,
  HOLDER_OWNER,
  kvm_find_lockup,
  kvm_lock_bound_ms,
  kvm_watch_locks,
  SoftLockupError,
} from "../../src/kvm/vm_dead.js";
import { CTL, KVM_MAX_VCPUS, VCPU } from "../../src/kvm_host.js";
import { rwlock_writer } from "../../src/sync/rwlock.js";
import { makeKvm } from "../helpers/kvm.js";

test("a vCPU's read hold of mmu_lock is published in its own word, vCPU 0 and the last one included", () => {
  for (const holder of [1, 2, KVM_MAX_VCPUS]) {
    const kvm = makeKvm({ maxVcpus: KVM_MAX_VCPUS });
    kvm_watch_locks(kvm, holder);
    kvm.mmu_lock.read_lock();
    for (let v = 0; v < KVM_MAX_VCPUS; v++)
      assert.equal(
        Atomics.load(kvm.vcpu, VCPU.mmu_lock_since(v)) !== 0,
        v === holder - 1,
        `holder ${holder}, vcpu ${v}`,
      );
    kvm.mmu_lock.read_unlock();
  }
});

test("the owner's and the host thread's read holds touch no vCPU's word", () => {
  for (const holder of [HOLDER_OWNER, HOLDER_HOST]) {
    const kvm = makeKvm({ maxVcpus: KVM_MAX_VCPUS });
    const before = Int32Array.from(kvm.vcpu);
    kvm_watch_locks(kvm, holder);
    kvm.mmu_lock.read_lock();
    assert.deepEqual(Int32Array.from(kvm.vcpu), before, `holder ${holder}`);
    kvm.mmu_lock.read_unlock();
  }
});

test("a write hold is a soft lockup past the bound, not at it", (t) => {
  const kvm = makeKvm({ lockHoldTimeoutMs: 1000 });
  kvm_watch_locks(kvm, 1);
  kvm.mmu_lock.write_lock();
  const w = rwlock_writer(kvm.ctl, CTL.mmu_lock);
  assert.ok(w !== null && w.id === 1 && w.since !== 0);
  const bound = kvm_lock_bound_ms(kvm);
  assert.equal(bound, 1000);
  // The shared clock is (performance.now() + origin) | 0: choose now() to land on since + held.
  const origin = performance.timeOrigin - kvm.shared.epochMs;
  let held = 0;
  t.mock.method(performance, "now", () => w.since + held - origin + 0.5);
  held = bound;
  assert.equal(kvm_find_lockup(kvm), null);
  held = bound + 1;
  const e = kvm_find_lockup(kvm);
  assert.ok(e instanceof SoftLockupError);
  assert.deepEqual([e.vcpu, e.lock, e.heldMs, e.boundMs], [0, "mmu_lock", bound + 1, bound]);
  t.mock.restoreAll();
  kvm.mmu_lock.write_unlock();
});

/**
 * Eager page splitting: enabling logging on a slot mapped with 2 MiB pages splits them under the
 * read lock, so the first pass of writes takes no fault; without it the pass faults on every
 * huge page (and, without PML, on every 4 KiB page). With INITIALLY_SET the split waits for CLEAR.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE } from "../../../src/kvm_host.js";
import { Vcpu } from "../../../src/vcpu/vcpu.js";
import { tdp_mmu_state } from "../../../src/mmu/tdp_mmu/tdp_mmu_state.js";
import { audit } from "../../../src/verify/audit.js";
import { leaves, makeTdpVm, NPAGES, reported, setLogging, writePages } from "./helpers.js";
import { vmKvm } from "../../../src/vm/internal.js";

const all = Array.from({ length: NPAGES }, (_, g) => g);

function largeLeaves(vm: ReturnType<typeof makeTdpVm>): number {
  return [...leaves(vmKvm(vm)).values()].filter(([, l]) => l > 1).length;
}

for (const eager of [true, false]) {
  test(`eager split ${eager ? "on" : "off"}: first-pass faults after enabling logging (PML)`, () => {
    const vm = makeTdpVm({ eager });
    const v = new Vcpu(vmKvm(vm), 0, 12);
    writePages(vm, all, 1, v);
    assert.equal(largeLeaves(vm), NPAGES / 512);
    const st = tdp_mmu_state(vmKvm(vm));
    const s0 = st.splits;
    setLogging(vm, true);
    v.tlb.flush();
    assert.equal(st.splits - s0, eager ? NPAGES / 512 : 0, "huge pages split at enable time");
    assert.equal(largeLeaves(vm), eager ? 0 : NPAGES / 512);
    const f0 = v.fault.slow + v.fault.fast;
    writePages(vm, all, 2, v);
    const faults = v.fault.slow + v.fault.fast - f0;
    if (eager) assert.equal(faults, 0);
    else assert.equal(faults, NPAGES, "a fault per 4 KiB page: the split leaves the pieces read-only");
    assert.deepEqual(reported(vm.getDirtyLog(0)), all);
    assert.deepEqual(audit(vmKvm(vm)), []);
    setLogging(vm, false);
    writePages(vm, all, 3, v);
    assert.equal(largeLeaves(vm), NPAGES / 512, "huge pages recovered once logging stopped");
  });
}

test("eager split with INITIALLY_SET: nothing split at enable, CLEAR splits the huge pages it covers", () => {
  const vm = makeTdpVm({ eager: true });
  vm.enableManualDirtyLogProtect(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET);
  const v = new Vcpu(vmKvm(vm), 0, 12);
  writePages(vm, all, 1, v);
  const st = tdp_mmu_state(vmKvm(vm));
  const s0 = st.splits;
  setLogging(vm, true);
  assert.equal(st.splits, s0);
  assert.equal(largeLeaves(vm), NPAGES / 512);
  const bm = vm.getDirtyLog(0);
  assert.equal(reported(bm).length, NPAGES, "INITIALLY_SET: everything dirty");
  const first = new Uint32Array(16).fill(0xffffffff); // gfns 0..511: the first huge page
  vm.clearDirtyLog(0, 0, 512, first);
  assert.equal(st.splits - s0, 1, "CLEAR split the huge page under it");
  assert.equal(largeLeaves(vm), NPAGES / 512 - 1);
  v.tlb.flush();
  writePages(vm, [5, 600], 2, v);
  assert.deepEqual(
    reported(vm.getDirtyLog(0)).filter((g) => g < 512),
    [5],
  );
  assert.deepEqual(audit(vmKvm(vm)), []);
});

for (const eager of [true, false]) {
  test(`INITIALLY_SET, eager split ${eager ? "on" : "off"}: enabling protects nothing, the first pass takes no fault, CLEAR protects`, () => {
    const vm = makeTdpVm({ eager });
    vm.enableManualDirtyLogProtect(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET);
    const v = new Vcpu(vmKvm(vm), 0, 12);
    writePages(vm, all, 1, v);
    setLogging(vm, true);
    v.tlb.flush();
    // As 6.x's kvm_mmu_slot_apply_flags: every page is dirty already, so nothing is protected.
    assert.equal(largeLeaves(vm), NPAGES / 512, "huge pages kept");
    const f0 = v.fault.slow + v.fault.fast;
    writePages(vm, all, 2, v);
    assert.equal(v.fault.slow + v.fault.fast - f0, 0, "no fault before the first CLEAR");
    assert.deepEqual(audit(vmKvm(vm)), [], "writable huge leaves whose pages are all dirty");
    const first = new Uint32Array(16).fill(0xffffffff); // gfns 0..511
    vm.clearDirtyLog(0, 0, 512, first);
    assert.equal(largeLeaves(vm), NPAGES / 512 - (eager ? 1 : 0));
    assert.deepEqual(audit(vmKvm(vm)), []);
    const f1 = v.fault.slow + v.fault.fast;
    writePages(vm, [5, 600], 3, v);
    // Lazy: the cleared huge page was write-protected, so its write faults (and splits it).
    assert.equal(v.fault.slow + v.fault.fast - f1, eager ? 0 : 1);
    assert.deepEqual(
      reported(vm.getDirtyLog(0)).filter((g) => g < 512),
      [5],
    );
    assert.deepEqual(audit(vmKvm(vm)), []);
  });
}

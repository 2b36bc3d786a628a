/**
 * kvm_set_pfn_dirty: dirty state (D with PML, W without) that leaves a TDP MMU leaf goes to the
 * host page's dirty flag, so the host writes the page back before dropping it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SLOT } from "../../../src/kvm_host.js";
import { clear_page_dirty_for_io, host_invalidate_range, page_dirty } from "../../../src/mem/host_memory.js";
import {
  kvm_mmu_notifier_invalidate_range_end,
  kvm_mmu_notifier_invalidate_range_start,
} from "../../../src/mmu/mmu_notifier.js";
import { vmKvm } from "../../../src/vm/internal.js";
import { makeTdpVm, setLogging, writePages } from "./helpers.js";

for (const pml of [true, false])
  test(`host page dirty flag (${pml ? "PML" : "write protection"}): set when logging, GET or a zap takes a leaf's dirty state`, () => {
    const vm = makeTdpVm({ pml, thp: false });
    const kvm = vmKvm(vm);
    const hva = kvm.slots[SLOT.hva_page(0)] + 7;
    const notifier = {
      invalidateRangeStart: (s: number, e: number) => kvm_mmu_notifier_invalidate_range_start(kvm, s, e),
      invalidateRangeEnd: () => kvm_mmu_notifier_invalidate_range_end(kvm),
    };
    assert.equal(page_dirty(kvm, hva), false, "a fresh page is clean");
    writePages(vm, [7], 1);
    assert.equal(page_dirty(kvm, hva), false, "a dirty spte owes it, the host page is not told yet");
    setLogging(vm, true); // clears D (PML) or W: the dirty state moves to the host page
    assert.equal(clear_page_dirty_for_io(kvm, hva), true);
    assert.equal(clear_page_dirty_for_io(kvm, hva), false, "writeback cleaned it");
    writePages(vm, [7], 2);
    vm.getDirtyLog(0); // re-arms gfn 7: its dirty state goes to the host page again
    assert.equal(clear_page_dirty_for_io(kvm, hva), true);
    writePages(vm, [7], 3);
    host_invalidate_range(kvm, hva, 1, notifier); // the zap of the dirty leaf
    assert.equal(page_dirty(kvm, hva), true);
    assert.equal(clear_page_dirty_for_io(kvm, hva), true);
    host_invalidate_range(kvm, hva, 1, notifier); // nothing mapped, nothing written: stays clean
    assert.equal(page_dirty(kvm, hva), false);
  });

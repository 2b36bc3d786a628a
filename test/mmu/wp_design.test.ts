/**
 * The write-protect design interface: one design object per VM, chosen by config.wp; both
 * designs leave no writable spte for the pages a harvest reports; begin/protect/end work on
 * their own (as clear-log will call them); per-call times.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Kvm, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, SLOT } from "../../src/kvm_host.js";
import { Vm, WpName } from "../../src/vm.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { gfn_to_rmap } from "../../src/mem/memslot.js";
import { pte_list_walk } from "../../src/mmu/rmap.js";
import { newDirtyLogTimes, wp_design } from "../../src/mmu/dirty_log.js";
import { designNames } from "../../src/mmu/design.js";
import { wp_locked } from "../../src/mmu/wp_locked.js";
import { wp_lockless } from "../../src/mmu/wp_lockless.js";
import { is_large_pte, is_writable_pte } from "../../src/mmu/spte.js";
import { audit } from "../../src/verify/audit.js";
import { vmKvm, vmShared } from "../../src/vm/internal.js";

const BYTES = 4 << 20;
const NPAGES = BYTES / 4096;

function makeVm(wp: WpName): Vm {
  const vm = Vm.create({ memory: 16 << 20, wp, maxVcpus: 1 });
  const hva = vm.mmap(BYTES);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: BYTES, userspaceAddr: hva });
  vm.createVcpu(0);
  return vm;
}

function enableLogging(vm: Vm): void {
  const hva = vmKvm(vm).slots[SLOT.hva_page(0)] * PAGE_SIZE;
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: BYTES,
    userspaceAddr: hva,
  });
}

function writePages(vm: Vm, gfns: number[], x: number): void {
  const v = new Vcpu(vmKvm(vm), 0, 4);
  v.enterGuest();
  for (const g of gfns) v.write32(g, 0, x);
  v.exitGuest();
}

/** The writable sptes that map gfn, at any level. */
function writableSptes(kvm: Kvm, gfn: number): number[] {
  const out: number[] = [];
  for (let level = 1; level <= 3; level++)
    pte_list_walk(kvm, kvm.rmapPool, gfn_to_rmap(kvm, 0, gfn, level), (s) => {
      if (is_writable_pte(kvm.spt[s])) out.push(s);
    });
  return out;
}

function reported(bm: Uint32Array): number[] {
  const out: number[] = [];
  for (let g = 0; g < NPAGES; g++) if ((bm[g >>> 5] & (1 << (g & 31))) !== 0) out.push(g);
  return out;
}

test("wp design: one ops table per design, fixed by config.wp", () => {
  const a = makeVm("locked");
  const b = makeVm("lockless");
  assert.equal(wp_design(vmKvm(a)).protectMasked, wp_locked.protectMasked);
  assert.equal(wp_design(vmKvm(b)).protectMasked, wp_lockless.protectMasked);
  assert.equal(wp_design(vmKvm(a)).name, "locked");
  assert.equal(wp_design(vmKvm(b)).name, "lockless");
  assert.equal(
    wp_design(new Kvm(vmShared(a))),
    wp_design(vmKvm(a)),
    "every Kvm of a design in a thread shares its ops",
  );
  assert.deepEqual(designNames(), ["locked", "lockless", "tdp-mmu"]);
});

for (const wp of ["locked", "lockless"] as const) {
  test(`wp design ${wp}: no reported page is left writable; audit clean; per-call times`, () => {
    const vm = makeVm(wp);
    const kvm = vmKvm(vm);
    const all = Array.from({ length: NPAGES }, (_, g) => g);
    writePages(vm, all, 1); // maps the slot, 2 MiB where the host block is huge
    enableLogging(vm);
    for (const g of all)
      assert.deepEqual(writableSptes(kvm, g), [], `gfn ${g} writable after enabling logging`);
    assert.deepEqual(audit(kvm), []);

    const some = all.filter((g) => g % 3 === 0 || (g >= 600 && g < 700));
    writePages(vm, some, 2);
    assert.ok(
      some.every((g) => writableSptes(kvm, g).length === 1),
      "the writes made the pages writable again",
    );
    const bm = vm.getDirtyLog(0);
    assert.deepEqual(reported(bm), some);
    for (const g of some) assert.deepEqual(writableSptes(kvm, g), [], `gfn ${g} writable after the harvest`);
    for (let l = 2; l <= 3; l++)
      for (let g = 0; g < NPAGES; g += 512)
        pte_list_walk(kvm, kvm.rmapPool, gfn_to_rmap(kvm, 0, g, l), (s) =>
          assert.ok(!is_writable_pte(kvm.spt[s]) || !is_large_pte(kvm.spt[s]), "no writable large spte"),
        );
    assert.deepEqual(audit(kvm), []);

    const t = vm.lastDirtyLogTimes();
    assert.equal(t.dirtyPages, some.length);
    assert.ok(t.protectNs > 0, `protectNs ${t.protectNs}`);
    assert.ok(t.flushNs >= 0 && t.lockWaitNs >= 0);
    if (wp === "lockless") assert.equal(t.lockWaitNs, 0, "the lockless design takes no mmu_lock");
    const sum = vm.dirtyLogTimes();
    vm.getDirtyLog(0);
    assert.equal(vm.lastDirtyLogTimes().dirtyPages, 0, "nothing written since");
    assert.equal(vm.dirtyLogTimes().dirtyPages, sum.dirtyPages, "totals add up the calls");
  });

  test(`wp design ${wp}: harvestBegin / protectMasked / harvestEnd work outside get-dirty-log`, () => {
    const vm = makeVm(wp);
    const kvm = vmKvm(vm);
    const design = wp_design(kvm);
    enableLogging(vm);
    writePages(vm, [64 + 3, 64 + 17], 5);
    assert.equal(writableSptes(kvm, 67).length, 1);
    assert.equal(writableSptes(kvm, 81).length, 1);
    const times = newDirtyLogTimes();
    kvm.slots_lock.lock();
    try {
      design.harvestBegin(kvm, times);
      try {
        design.protectMasked(kvm, 0, 2, 1 << 3); // word 2 = gfns 64..95: gfn 67 only
      } finally {
        design.harvestEnd(kvm, true, times);
      }
    } finally {
      kvm.slots_lock.unlock();
    }
    assert.deepEqual(writableSptes(kvm, 67), [], "the masked page is protected");
    assert.equal(writableSptes(kvm, 81).length, 1, "a page outside the mask is not");
    if (wp === "locked") assert.equal(kvm.mmu_lock.isContended(), false);
  });
}

/**
 * NUMA balancing's scanner (src/mem/numa_balancing.ts) and the vCPU that runs it: one chunk per
 * period, claimed once, the offset walking the VMAs and starting over; the zapped sptes refault;
 * a paused VM does not scan; no dirty page is lost while the vCPUs scan; bad settings refused.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm } from "../../src/vm.js";
import { CTL, PAGE_SIZE, SLOT, ST } from "../../src/kvm_host.js";
import { task_numa_work } from "../../src/mem/numa_balancing.js";
import { kvm_mmu_notifier } from "../../src/mmu/mmu_notifier.js";
import { ShadowWalkIterator, walk_shadow_page_lockless } from "../../src/mmu/mmu.js";
import { is_shadow_present_pte } from "../../src/mmu/spte.js";
import { KvmError } from "../../src/errors.js";
import { dirtyLogTest } from "../../src/verify/dirty_log_test.js";
import { vmKvm } from "../../src/vm/internal.js";

const PAGES = 1024;
const GPA = 1 << 30;

/** A 4 MiB guest whose one vCPU has written every page once, then paused. */
async function populated(tlbBits?: number): Promise<Vm> {
  const vm = Vm.create({ memory: PAGES * PAGE_SIZE, wp: "lockless", maxVcpus: 1, maxSlotPages: PAGES });
  const hva = vm.mmap(PAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: GPA,
    memorySize: PAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  await vm.run(
    () => ({
      kind: "memstress",
      baseGfn: GPA / PAGE_SIZE,
      pages: PAGES,
      writePercent: 100,
      random: false,
      seed: 1,
    }),
    tlbBits === undefined ? {} : { tlbBits },
  );
  await vm.waitPasses(1, { timeoutMs: 60_000 });
  await vm.pause();
  return vm;
}

/** Which of the slot's pages have a present spte. */
function present(vm: Vm): boolean[] {
  const it = new ShadowWalkIterator();
  const root = vmKvm(vm).ctl[CTL.root];
  return Array.from({ length: PAGES }, (_, i) =>
    is_shadow_present_pte(walk_shadow_page_lockless(vmKvm(vm), root, GPA / PAGE_SIZE + i, it)),
  );
}

test("task_numa_work: one chunk per period, claimed once; the offset walks the slot and starts over", async () => {
  const vm = await populated();
  try {
    assert.ok(present(vm).every(Boolean), "populated: every page mapped");
    vm.setNumaBalancing({ scanPeriodMs: 1000, scanBytes: (PAGES / 2) * PAGE_SIZE });
    const n = kvm_mmu_notifier(vmKvm(vm));
    const hva = vmKvm(vm).slots[SLOT.hva_page(0)];
    assert.equal(task_numa_work(vmKvm(vm), 0, n), PAGES / 2, "due at once: the first half");
    let p = present(vm);
    assert.ok(
      p.slice(0, PAGES / 2).every((x) => !x),
      "first half zapped",
    );
    assert.ok(p.slice(PAGES / 2).every(Boolean), "second half untouched");
    assert.equal(vmKvm(vm).ctl[CTL.numa_scan_offset] - hva, PAGES / 2, "the offset moved past the chunk");
    assert.equal(task_numa_work(vmKvm(vm), 999, n), 0, "not due before the period ends");
    assert.equal(task_numa_work(vmKvm(vm), 1000, n), PAGES / 2, "due again: the second half");
    p = present(vm);
    assert.ok(
      p.every((x) => !x),
      "all zapped",
    );
    assert.equal(vmKvm(vm).ctl[CTL.numa_scan_offset], 0, "past the last VMA: start over");
    assert.equal(task_numa_work(vmKvm(vm), 1500, n), 0, "a thread that lost the claim does nothing");
    assert.deepEqual(vm.numaBalancingStats(), { scans: 2, pagesScanned: PAGES });
    vm.setNumaBalancing({ scanPeriodMs: 0 });
    assert.equal(task_numa_work(vmKvm(vm), 1e6, n), 0, "off");
  } finally {
    await vm.stop();
  }
});

test("numaBalancingStats: pages scanned past 2^32 carry into the high word instead of wrapping", async () => {
  const vm = await populated();
  try {
    vm.setNumaBalancing({ scanPeriodMs: 1000, scanBytes: (PAGES / 2) * PAGE_SIZE });
    // As if 2^32 - 10 pages had been scanned before: the next chunk crosses 2^32.
    vmKvm(vm).ctl[CTL.numa_pages_scanned] = (2 ** 32 - 10) | 0;
    assert.equal(task_numa_work(vmKvm(vm), 0, kvm_mmu_notifier(vmKvm(vm))), PAGES / 2);
    assert.deepEqual(vm.numaBalancingStats(), { scans: 1, pagesScanned: 2 ** 32 - 10 + PAGES / 2 });
  } finally {
    await vm.stop();
  }
});

for (const [tlbBits, how] of [
  [6, "a guest that misses its 64-entry TLB on every pass"],
  [undefined, "a guest whose pages all stay in its TLB (scans at its checkpoints)"],
] as const)
  test(`the vCPU runs the scans outside guest mode, refaults what they zapped, and not while paused: ${how}`, async () => {
    const vm = await populated(tlbBits);
    try {
      const slow0 = vmKvm(vm).vcpuStats[ST.slow_pf(0)];
      vm.setNumaBalancing({ scanPeriodMs: 20, scanBytes: PAGES * PAGE_SIZE });
      vm.resume();
      // Three scans and the refaults after them, however long this machine takes (counts, not a
      // time: the bound only ends a hang).
      const refaults = (): number => vmKvm(vm).vcpuStats[ST.slow_pf(0)] - slow0;
      for (let i = 0; i < 3000 && (vm.numaBalancingStats().scans < 3 || refaults() < PAGES); i++)
        await new Promise((r) => setTimeout(r, 10));
      await vm.pause();
      const s = vm.numaBalancingStats();
      assert.ok(s.scans >= 3, `${s.scans} scans, at one per 20 ms of the vCPU's running`);
      assert.equal(s.pagesScanned, s.scans * PAGES);
      const slow = refaults();
      assert.ok(slow >= PAGES, `the guest refaulted the zapped pages (${slow} slow faults)`);
      // Paused: the vCPU does not run, so it does not scan.
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(vm.numaBalancingStats().scans, s.scans, "no scan while paused");
    } finally {
      await vm.stop();
    }
  });

test("setNumaBalancing refuses bad settings with EINVAL naming them, and changes nothing", async () => {
  const vm = Vm.create({ memory: 64 * PAGE_SIZE, wp: "locked" });
  try {
    vm.setNumaBalancing({ scanPeriodMs: 100, scanBytes: 8 * PAGE_SIZE });
    for (const [bad, name] of [
      [{ scanPeriodMs: -1 }, "scanPeriodMs"],
      [{ scanPeriodMs: 1.5 }, "scanPeriodMs"],
      [{ scanBytes: 100 }, "scanBytes"],
      [{ scanBytes: 0 }, "scanBytes"],
    ] as const)
      assert.throws(
        () => vm.setNumaBalancing(bad),
        (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && e.message.includes(name),
      );
    assert.equal(vmKvm(vm).ctl[CTL.numa_scan_period_ms], 100);
    assert.equal(vmKvm(vm).ctl[CTL.numa_scan_pages], 8);
  } finally {
    await vm.stop();
  }
});

test(
  "dirty-log-test with the vCPUs scanning every 5 ms: no dirty page lost, either design",
  { timeout: 120_000 },
  async () => {
    const r = await dirtyLogTest({
      iterations: 4,
      intervalMs: 20,
      vcpus: 2,
      bytesPerVcpu: 2 << 20,
      wp: ["locked", "lockless"],
      oracles: ["kvm", "qemu"],
      thp: false,
      migrateRate: 0,
      invalidateRate: 0,
      numaScanPeriodMs: 5,
      seed: 3,
    });
    assert.deepEqual(r.firstViolations, []);
    assert.equal(r.violations, 0);
    let scans = 0;
    for (const wp of ["locked", "lockless"] as const)
      for (const oracle of ["kvm", "qemu"] as const) scans += r.results[wp]?.[oracle]?.numa?.scans ?? 0;
    assert.ok(scans > 0, "the vCPUs scanned");
  },
);

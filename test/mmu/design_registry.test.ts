/**
 * The design registry: a test registers a fourth design (a renamed copy of `locked`, in
 * locked_copy_design.ts) without touching src/, runs a VM of it (vCPU workers and the host
 * thread each import the registering module before building their Kvm) with dirty logging,
 * and unregistering it leaves the `--wp` choices as they were.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm } from "../../src/vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, VCPU } from "../../src/kvm_host.js";
import {
  designInfo,
  designNames,
  designOps,
  isDesign,
  parseDesignList,
  registerDesign,
  unregisterDesign,
} from "../../src/mmu/design.js";
import { MmuMode } from "../../src/kvm_host.js";
import { dirtyPages } from "../../src/dirty_bitmap.js";
import { audit } from "../../src/verify/audit.js";
import { KvmError } from "../../src/errors.js";
import { vmKvm } from "../../src/vm/internal.js";
import { dirtyLogTest } from "../../src/verify/dirty_log_test.js";
import { dirtyLogPerf } from "../../src/bench/dirty_log_perf.js";
import { explore } from "../../src/verify/explore.js";

const VCPUS = 2;
const PAGES = 256;

async function waitPasses(vm: Vm, n: number): Promise<void> {
  const passes = (): number[] =>
    [...Array(VCPUS).keys()].map((i) => Atomics.load(vmKvm(vm).vcpu, VCPU.passes(i)));
  const p = passes();
  while (passes().some((x, k) => x < p[k] + n)) {
    vm.throwIfFailed();
    await new Promise((r) => setTimeout(r, 2));
  }
}

test("registry: a design registered by a test runs a logged VM (vCPU workers, host thread) and leaves no trace", async () => {
  const before = designNames();
  const allBefore = parseDesignList("--wp", "all");
  assert.ok(!isDesign("locked-copy"));
  await import("./locked_copy_design.js");
  assert.deepEqual(designNames(), [...before, "locked-copy"]);
  assert.deepEqual(parseDesignList("--wp", "all"), [...allBefore, "locked-copy"]);
  assert.deepEqual(parseDesignList("--wp", "locked-copy,locked"), ["locked-copy", "locked"]);
  assert.equal(designInfo("locked-copy").kernel, designInfo("locked").kernel);
  // The ops are locked's, under the new name.
  const ops = designOps("locked-copy", MmuMode.Tdp);
  assert.equal(ops.name, "locked-copy");
  assert.equal(ops.protectMasked, designOps("locked", MmuMode.Tdp).protectMasked);
  assert.deepEqual(ops.lock, designOps("locked", MmuMode.Tdp).lock);

  const vm = Vm.create({ memory: 16 << 20, wp: "locked-copy", maxVcpus: VCPUS });
  try {
    assert.equal(vmKvm(vm).ops.name, "locked-copy");
    const hva = vm.mmap(VCPUS * PAGES * PAGE_SIZE);
    vm.setUserMemoryRegion({
      slot: 0,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: VCPUS * PAGES * PAGE_SIZE,
      userspaceAddr: hva,
    });
    for (let i = 0; i < VCPUS; i++) vm.createVcpu(i);
    await vm.run((id) => ({
      kind: "memstress",
      baseGfn: id * PAGES,
      pages: PAGES,
      writePercent: 100,
      random: false,
      seed: 1,
    }));
    await vm.startHostThread({ migrateRate: 50, invalidateRate: 50 });
    await waitPasses(vm, 1);
    vm.getDirtyLog(0);
    // A whole pass after the harvest: every page was written again, and reported.
    await waitPasses(vm, 2);
    const log = vm.getDirtyLog(0);
    assert.equal(dirtyPages(log).length, VCPUS * PAGES, "every written page is reported");
    await vm.pause();
    await vm.pauseHostThread();
    vm.throwIfFailed();
    assert.deepEqual(audit(vmKvm(vm)), []);
  } finally {
    await vm.stop();
  }

  assert.equal(unregisterDesign("locked-copy"), true);
  assert.deepEqual(designNames(), before);
  assert.deepEqual(parseDesignList("--wp", "all"), allBefore);
  assert.throws(
    () => Vm.create({ memory: 1 << 20, wp: "locked-copy" }),
    (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /wp/.test(e.message),
  );
});

test("registry: names are checked; built-in designs cannot be removed", () => {
  const entry = { kernel: "k", description: "d", mmu: (m: MmuMode) => designOps("locked", m) };
  for (const bad of ["", "all", "Locked", "a,b", "locked"])
    assert.throws(
      () => registerDesign({ name: bad, ...entry }),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /name/.test(e.message),
      bad,
    );
  assert.throws(() => unregisterDesign("locked"), KvmError);
  assert.equal(unregisterDesign("no-such-design"), false);
  // An entry whose ops carry another design's name is refused when resolved.
  registerDesign({ name: "misnamed", ...entry });
  try {
    assert.throws(() => designOps("misnamed", MmuMode.Tdp), /gave the ops of "locked"/);
  } finally {
    unregisterDesign("misnamed");
  }
  assert.deepEqual(designNames(), ["locked", "lockless", "tdp-mmu"]);
});

test("registry: a registered design runs through dirty-log-test, dirty-log-perf (three designs, two ratios) and a catalog bug", async () => {
  const before = designNames();
  (await import("./locked_copy_design.js")).registerLockedCopy();
  try {
    const t = await dirtyLogTest({
      iterations: 3,
      intervalMs: 10,
      vcpus: 2,
      bytesPerVcpu: 4 << 20,
      wp: ["locked-copy"],
      oracles: ["kvm", "qemu"],
      thp: true,
      migrateRate: 100,
      invalidateRate: 20,
      seed: 1,
    });
    assert.equal(t.violations, 0);
    assert.ok(t.results["locked-copy"]?.kvm && t.results["locked-copy"].qemu, "both oracles ran it");
    assert.ok(t.pagesChecked > 0);

    const p = await dirtyLogPerf({
      vcpus: 1,
      bytesPerVcpu: 4 << 20,
      iterations: 2,
      wp: ["locked", "lockless", "locked-copy"],
      contention: "none",
      park: true,
    });
    assert.equal(p.baseline, "locked");
    assert.deepEqual(Object.keys(p.ratios).sort(), ["locked-copy/locked", "lockless/locked"]);
    assert.equal(p.results["locked-copy"]?.getDirtyLog.n, 2);
    assert.ok(p.ratio !== null, "lockless/locked kept beside the ratios");

    // A catalog bug of a locked-design scenario, found on the copy; its fixed code is clean.
    const o = {
      scenario: "reset-coalesce-backward",
      design: "locked-copy",
      strategy: "pct" as const,
      seed: 1,
      all: false,
    };
    const bug = await explore({ ...o, bug: true, schedules: 2000 });
    assert.equal(bug.design, "locked-copy");
    assert.ok(bug.violations > 0, "the bug is found on the registered design");
    const fixed = await explore({ ...o, bug: false, schedules: 300 });
    assert.equal(fixed.violations, 0);
  } finally {
    unregisterDesign("locked-copy");
  }
  assert.deepEqual(designNames(), before);
});

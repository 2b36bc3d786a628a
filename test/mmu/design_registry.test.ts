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

const VCPUS = 2;
const PAGES = 256;

async function waitPasses(vm: Vm, n: number): Promise<void> {
  const passes = (): number[] =>
    [...Array(VCPUS).keys()].map((i) => Atomics.load(vm.kvm.vcpu, VCPU.passes(i)));
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
    assert.equal(vm.kvm.ops.name, "locked-copy");
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
    assert.deepEqual(audit(vm.kvm), []);
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

/**
 * Exhaustion of the MMU pools (shadow pages, pte_list descriptors) while the guest runs: either
 * absorbed by reclaim (the guest finishes its passes) or reported as ENOMEM, promptly, naming the
 * pool; getDirtyLog never waits long on mmu_lock, the VM stays stoppable and the audit is clean.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, SCTL, VCPU } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import { Vm } from "../../src/vm.js";
import { audit } from "../../src/verify/audit.js";
import type { GuestArgs } from "../../src/workload/guest.js";
import { vmKvm } from "../../src/vm/internal.js";

const MiB = 1 << 20;

interface Run {
  passes: boolean;
  error: KvmError | null;
  /** getDirtyLog calls that returned while the pools were being reclaimed. */
  dirtyLogs: number;
}

/**
 * `vcpus` vCPUs run memstress over `pages` pages each in a dirty-logged slot (TDP, or shadow with
 * guest paging), harvesting between passes. Returns whether they finished `passes` passes or the
 * run's ENOMEM; rejects on any other error.
 */
async function exhaust(
  mode: "tdp" | "shadow",
  o: { vcpus: number; pages: number; maxSp: number; maxDesc?: number; passes?: number },
): Promise<{ vm: Vm; run: Run }> {
  const pool = 64;
  const vm = Vm.create({ memory: 64 * MiB, wp: "lockless", mode, maxVcpus: o.vcpus, ...o });
  const hva = vm.mmap(o.vcpus * o.pages * PAGE_SIZE);
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: o.vcpus * o.pages * PAGE_SIZE,
    userspaceAddr: hva,
  });
  const kernelGfn = o.vcpus * o.pages;
  if (mode === "shadow") {
    const khva = vm.mmap(o.vcpus * pool * PAGE_SIZE);
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: kernelGfn * PAGE_SIZE,
      memorySize: o.vcpus * pool * PAGE_SIZE,
      userspaceAddr: khva,
    });
  }
  for (let i = 0; i < o.vcpus; i++) vm.createVcpu(i);
  const kernel = { baseGfn: kernelGfn, pages: o.vcpus * pool };
  const guest = (id: number): GuestArgs => ({
    kind: "memstress",
    baseGfn: id * o.pages,
    pages: o.pages,
    writePercent: 100,
    random: true,
    seed: 7,
    ...(mode === "shadow"
      ? {
          paging: { kernel, poolGfn: kernelGfn + id * pool, poolPages: pool, vpn: 1 << 20 },
        }
      : {}),
  });
  const run: Run = { passes: false, error: null, dirtyLogs: 0 };
  try {
    await vm.run(guest);
    for (let p = 1; p <= (o.passes ?? 3); p++) {
      await vm.waitPasses(p, { timeoutMs: 60_000 });
      vm.getDirtyLog(0);
      run.dirtyLogs++;
    }
    run.passes = true;
  } catch (e) {
    if (!(e instanceof KvmError) || e.code !== "ENOMEM") throw e;
    run.error = e;
  }
  return { vm, run };
}

async function stopAndAudit(vm: Vm): Promise<void> {
  await vm.stop();
  assert.deepEqual(audit(vmKvm(vm)), [], "the audit is clean after reclaim");
  assert.equal(vmKvm(vm).ctl[CTL.sp_cached], 0, "stop() gave the vCPU caches back");
  assert.equal(vmKvm(vm).ctl[CTL.desc_cached], 0, "stop() gave the vCPU caches back");
  for (const id of vm.vcpuIds)
    assert.equal(vmKvm(vm).vcpu[VCPU.sp_cache(id)] + vmKvm(vm).vcpu[VCPU.desc_cache(id)], 0);
}

test("TDP: 4096 pages through 15 shadow pages: the root is reclaimed, the guest finishes", async () => {
  // 8 leaf tables + 3 above them, plus 2 vCPU caches of 4: more than the 15 pages there are.
  const { vm, run } = await exhaust("tdp", { vcpus: 2, pages: 2048, maxSp: 16, maxDesc: 16 });
  assert.equal(run.error, null, String(run.error));
  assert.ok(run.passes);
  assert.ok(vmKvm(vm).ctl[CTL.reclaims] > 0, "top-ups reclaimed");
  assert.equal(run.dirtyLogs, 3, "every pass's getDirtyLog returned");
  await stopAndAudit(vm);
});

for (const [what, pools, pool] of [
  ["maxSp 4", { maxSp: 4 }, "maxSp"],
  ["maxDesc 2", { maxDesc: 2, maxSp: 64 }, "maxDesc"],
] as const) {
  for (const mode of ["tdp", "shadow"] as const) {
    test(`${mode}: pools below one fault's worst case (${what}): ENOMEM naming ${pool}, promptly`, async () => {
      const { vm, run } = await exhaust(mode, { vcpus: 1, pages: 512, ...pools });
      assert.ok(run.error, "the run failed");
      assert.match(run.error.message, new RegExp(`\\b${pool}\\b`));
      // Promptly: at its first fault that needed a page, before any pass completed.
      assert.equal(run.dirtyLogs, 0, "no pass completed before ENOMEM");
      assert.equal(vm.error, run.error, "the VM carries the vCPU's error");
      // No lock is left behind, and the failed VM is dead: a harvest is EIO at once, its cause
      // the vCPU's error (kvm_vm_dead), never a wait.
      assert.equal(vmKvm(vm).mmu_lock.isLocked(), false, "no lock left behind");
      assert.throws(
        () => vm.getDirtyLog(0),
        (e: unknown) => e instanceof KvmError && e.code === "EIO" && e.cause === run.error,
      );
      await stopAndAudit(vm);
    });
  }
}

test("shadow: guest paging through 48 shadow pages and 96 descriptors: absorbed or ENOMEM", async () => {
  const { vm, run } = await exhaust("shadow", { vcpus: 2, pages: 4096, maxSp: 48, maxDesc: 96 });
  if (run.error) {
    assert.match(run.error.message, /\bmax(Sp|Desc)\b/);
  } else {
    assert.ok(run.passes);
    assert.ok(vmKvm(vm).sctl[SCTL.recycled] > 0, "pages were recycled");
  }
  if (run.passes) assert.equal(run.dirtyLogs, 3, "every pass's getDirtyLog returned");
  await stopAndAudit(vm);
});

/** vm.vcpuPasses: the live pass counter that waitPasses compares with, without the guest's help. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import { Vm } from "../../src/vm.js";

test(
  "vcpuPasses counts each vCPU's passes; waitPasses targets can be built from it",
  { timeout: 60_000 },
  async () => {
    const pages = 64;
    const vm = Vm.create({ memory: 8 << 20, wp: "locked", maxVcpus: 2 });
    const hva = vm.mmap(2 * pages * PAGE_SIZE, { thp: false });
    vm.setUserMemoryRegion({
      slot: 0,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: 2 * pages * PAGE_SIZE,
      userspaceAddr: hva,
    });
    vm.createVcpu(0);
    vm.createVcpu(1);
    assert.deepEqual([vm.vcpuPasses(0), vm.vcpuPasses(1)], [0, 0], "no pass before run");
    for (const bad of [2, -1, 0.5, NaN])
      assert.throws(
        () => vm.vcpuPasses(bad),
        (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /\bid\b/.test(e.message),
      );
    try {
      await vm.run((id) => ({
        kind: "memstress",
        baseGfn: id * pages,
        pages,
        writePercent: 100,
        random: false,
        seed: 1,
      }));
      await vm.waitPasses(2);
      await vm.pause();
      const now = vm.vcpuIds.map((id) => vm.vcpuPasses(id));
      for (const p of now) assert.ok(p >= 2, `each vCPU did at least 2 passes (${now.join(",")})`);
      vm.resume();
      // Two more passes each, from where each one is now.
      await vm.waitPasses(now.map((p) => p + 2));
      const later = vm.vcpuIds.map((id) => vm.vcpuPasses(id));
      for (const [k, p] of later.entries()) assert.ok(p >= now[k] + 2, `vcpu ${k}: ${now[k]} -> ${p}`);
    } finally {
      await vm.stop();
    }
  },
);

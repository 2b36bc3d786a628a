/**
 * stop() and pause() of a guest that makes no guest access (a module waiting at an await): the
 * owner's kick message makes it take its safe point, instead of stop() waiting out its grace
 * period and failing the VM with ETIMEDOUT.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { VCPU } from "../../src/kvm_host.js";
import { VcpuState } from "../../src/kvm/requests.js";
import { Vm } from "../../src/vm.js";
import { vmKvm } from "../../src/vm/internal.js";

const idle = new URL("../guest/fixtures/idle_await.js", import.meta.url);

test(
  "an idle async guest is paused, resumed and stopped at once, and the VM has no error",
  { timeout: 60_000 },
  async () => {
    const vm = Vm.create({ memory: 4 << 20, wp: "locked", maxVcpus: 2 });
    vm.createVcpu(0);
    vm.createVcpu(1);
    // A pass every 60 s: within the test, the guests only ever wait at their await.
    await vm.run(() => ({ module: idle, args: { ms: 60_000 } }));
    const kvm = vmKvm(vm);
    try {
      await vm.pause();
      assert.equal(vm.error, null, "pause: no vCPU timed out");
      for (const id of vm.vcpuIds)
        assert.equal(Atomics.load(kvm.vcpu, VCPU.state(id)), VcpuState.Paused, `vcpu ${id} parked`);
      vm.resume();
    } finally {
      await vm.stop();
    }
    assert.equal(vm.error, null, "stop: no vCPU timed out (the kick reached the idle guests)");
    for (const id of vm.vcpuIds)
      assert.equal(Atomics.load(kvm.vcpu, VCPU.state(id)), VcpuState.Stopped, `vcpu ${id} stopped`);
    assert.deepEqual([vm.vcpuPasses(0), vm.vcpuPasses(1)], [0, 0]);
  },
);

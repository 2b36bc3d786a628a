/**
 * stop() of a guest spinning in JavaScript (it never returns to its vCPU, so no kick reaches
 * it): the vCPU, in guest mode with its entry count standing still for `ackTimeoutMs`, is
 * terminated and named in the result; the VM is not failed, the pages its PML buffer held are in
 * the next GET, and the VM runs again. Nothing is timed but a generous bound (the grace a vCPU
 * out of guest mode gets), far above the injected ack time.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvmError, KVM_MEM_LOG_DIRTY_PAGES, Vm } from "../../src/index.js";
import { PAGE_SIZE, PML, VCPU } from "../../src/kvm_host.js";
import { VcpuState } from "../../src/kvm/requests.js";
import { VCPU_WAIT_MS } from "../../src/vm.js";
import { vmKvm } from "../../src/vm/internal.js";
import { GO, SPINS } from "../guest/fixtures/spinner.js";

const spinner = new URL("../guest/fixtures/spinner.js", import.meta.url);
const idle = new URL("../guest/fixtures/idle_await.js", import.meta.url);
const NPAGES = 64;
const ACK_MS = 50;

/** A VM with one slot of NPAGES pages (logging off) and one vCPU. */
function newVm(wp: string): { vm: Vm; enableLogging: () => void } {
  const vm = Vm.create({ memory: 16 << 20, wp, maxVcpus: 1 });
  const hva = vm.mmap(NPAGES * PAGE_SIZE, { thp: false });
  const region = { slot: 0, guestPhysAddr: 0, memorySize: NPAGES * PAGE_SIZE, userspaceAddr: hva };
  vm.setUserMemoryRegion({ ...region, flags: 0 });
  vm.createVcpu(0);
  return { vm, enableLogging: () => vm.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES }) };
}

/** Runs the spinner to its spin: pass 1 unlogged, logging on, pass 2 logged, then the spin. */
async function spinning(vm: Vm, enableLogging: () => void): Promise<Int32Array> {
  const ctl = new SharedArrayBuffer(8);
  const c = new Int32Array(ctl);
  await vm.run(() => ({ module: spinner, args: { ctl, pages: NPAGES } }));
  await vm.waitPasses(1, { timeoutMs: 60_000 });
  enableLogging();
  Atomics.store(c, GO, 1);
  Atomics.notify(c, GO);
  await vm.waitPasses(2, { timeoutMs: 60_000 });
  const spins = Atomics.load(c, SPINS);
  while (Atomics.load(c, SPINS) === spins) await new Promise((r) => setTimeout(r, 1));
  return c;
}

const bits = (bm: Uint32Array): number =>
  Array.from(bm).reduce((n, w) => n + (w.toString(2).match(/1/g)?.length ?? 0), 0);

for (const wp of ["locked", "tdp-mmu"]) {
  test(`${wp}: stop() of a guest spinning in JavaScript terminates it after the ack time, names it, keeps the VM`, async () => {
    const { vm, enableLogging } = newVm(wp);
    const kvm = vmKvm(vm);
    await spinning(vm, enableLogging);
    // tdp-mmu logs with PML: pass 2's writes sit in the vCPU's buffer until it exits (it never will).
    const buffered = kvm.pml.length > 0 ? kvm.pml[PML.row(0) + PML.used(0)] : 0;
    if (wp === "tdp-mmu") assert.equal(buffered, NPAGES, "pass 2's writes are in the PML buffer");
    const r = await vm.stop({ ackTimeoutMs: ACK_MS });
    assert.deepEqual(r, { terminated: [0] });
    // Terminated on the ack time, not the grace: a vCPU that outlives the grace fails the VM
    // (ETIMEDOUT), so a state, not a clock, says which bound ended the wait.
    assert.equal(vm.error, null, "the VM is not failed by a spinning guest");
    assert.equal(Atomics.load(kvm.vcpu, VCPU.state(0)), VcpuState.Dead, "its worker is gone");
    if (wp === "tdp-mmu") assert.equal(kvm.pml[PML.row(0) + PML.used(0)], 0, "flushed on its behalf");
    // Every page pass 2 wrote is in the log, whether it faulted (locked) or was buffered (PML).
    assert.equal(bits(vm.getDirtyLog(0)), NPAGES);
    // The VM runs again, and a guest that acknowledges is stopped, not terminated.
    await vm.run(() => ({ module: idle, args: { ms: 60_000 } }));
    assert.deepEqual(await vm.stop({ ackTimeoutMs: ACK_MS }), { terminated: [] });
    assert.equal(vm.error, null);
    assert.equal(Atomics.load(kvm.vcpu, VCPU.state(0)), VcpuState.Stopped);
  });
}

test("stop() refuses an ackTimeoutMs out of range with EINVAL naming it, and the VM runs on", async () => {
  const { vm } = newVm("locked");
  await vm.run(() => ({ module: idle, args: { ms: 60_000 } }));
  try {
    for (const bad of [0, -1, 1.5, VCPU_WAIT_MS + 1, Number.NaN, "100" as unknown as number])
      await assert.rejects(
        vm.stop({ ackTimeoutMs: bad }),
        (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /ackTimeoutMs/.test(e.message),
        String(bad),
      );
    assert.equal(Atomics.load(vmKvm(vm).vcpu, VCPU.state(0)), VcpuState.Running, "still running");
  } finally {
    assert.deepEqual(await vm.stop(), { terminated: [] });
  }
});

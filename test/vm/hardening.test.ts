/**
 * Regression tests of the hardening issue: calls that used to hang, lose dirty bits, or leave the
 * VM marked running now fail fast with a KvmError and leave the VM usable.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KVM_MEM_LOG_DIRTY_PAGES, OUTSIDE_GUEST_MODE, VCPU } from "../../src/kvm_host.js";
import { Errno, KvmError } from "../../src/errors.js";
import { MemoryRegion, Vm, VmOptions } from "../../src/vm.js";
import type { GuestArgs } from "../../src/workload/guest.js";
import { vmKvm, vmShared } from "../../src/vm/internal.js";

const MiB = 1 << 20;

const memstress = (writePercent = 100): GuestArgs => ({
  kind: "memstress",
  baseGfn: 0,
  pages: 64,
  writePercent,
  random: false,
  seed: 1,
});

function isKvmError(code: Errno, arg: string) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof KvmError, `not a KvmError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, new RegExp(`\\b${arg}\\b`), `${e.message} names ${arg}`);
    return true;
  };
}

function setup(flags = KVM_MEM_LOG_DIRTY_PAGES): { vm: Vm; slot0: MemoryRegion } {
  const vm = Vm.create({ memory: 8 * MiB, wp: "lockless", maxVcpus: 2 });
  const hva = vm.mmap(4 * MiB);
  const slot0 = { slot: 0, flags, guestPhysAddr: 0, memorySize: 2 * MiB, userspaceAddr: hva };
  vm.setUserMemoryRegion(slot0);
  return { vm, slot0 };
}

async function passes(vm: Vm, id: number, n: number): Promise<void> {
  const p0 = Atomics.load(vmKvm(vm).vcpu, VCPU.passes(id));
  while (Atomics.load(vmKvm(vm).vcpu, VCPU.passes(id)) < p0 + n) await new Promise((r) => setTimeout(r, 1));
}

/** Settles within `ms` or fails the test (the bug was a promise pending forever). */
async function within<T>(ms: number, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`still pending after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

test("Vm.create: pool limits are integers in their stated range, EINVAL naming the option", () => {
  const ok: VmOptions = { memory: 4 * MiB, wp: "locked" };
  for (const k of ["maxSp", "maxDesc", "maxSlotPages"] as const)
    for (const x of [NaN, -1, 0, 1.5, Infinity, "64", 2 ** 40])
      assert.throws(() => Vm.create({ ...ok, [k]: x }), isKvmError("EINVAL", k), `${k}=${x}`);
  assert.throws(() => Vm.create(null as unknown as VmOptions), isKvmError("EINVAL", "options"));
  const vm = Vm.create({ ...ok, maxSp: 128, maxDesc: 256, maxSlotPages: 512 });
  assert.equal(vmShared(vm).config.maxSp, 128);
  assert.equal(vmShared(vm).config.maxDesc, 256);
  assert.equal(vmShared(vm).config.maxSlotPages, 512);
});

test("pause() before any run() and after stop() rejects at once with EINVAL", async () => {
  const { vm } = setup();
  vm.createVcpu(0);
  await within(1000, assert.rejects(vm.pause(), isKvmError("EINVAL", "pause")));
  await vm.run(() => memstress());
  await vm.stop();
  await within(1000, assert.rejects(vm.pause(), isKvmError("EINVAL", "pause")));
});

test("pause() after createVcpu was accepted while vCPUs ran parks the running ones", async () => {
  const { vm } = setup();
  vm.createVcpu(0);
  await vm.run(() => memstress());
  try {
    vm.createVcpu(1);
    await within(5000, vm.pause());
    vm.resume();
    await passes(vm, 0, 1);
    vm.throwIfFailed();
  } finally {
    await vm.stop();
  }
  // the vCPU created meanwhile runs on the next run()
  await vm.run(() => memstress());
  try {
    await passes(vm, 1, 1);
  } finally {
    await vm.stop();
  }
});

test("getDirtyLog: an out that is not a Uint32Array is EINVAL, a short one EFAULT, both before the harvest", async () => {
  const { vm } = setup();
  vm.createVcpu(0);
  await vm.run(() => memstress());
  try {
    await passes(vm, 0, 2);
    await vm.pause();
    for (const out of [[0], new Int32Array(16), new Float64Array(16), {}, null])
      assert.throws(
        () => vm.getDirtyLog(0, out as unknown as Uint32Array),
        isKvmError("EINVAL", "out"),
        Object.prototype.toString.call(out),
      );
    assert.throws(() => vm.getDirtyLog(0, new Uint32Array(15)), isKvmError("EFAULT", "out"));
    // the bits are still pending: the 64 pages the guest wrote are all reported now
    const log = vm.getDirtyLog(0, new Uint32Array(16));
    assert.deepEqual([log[0], log[1]], [0xffffffff, 0xffffffff]);
  } finally {
    await vm.stop();
  }
});

test("run(null), a throwing factory, an uncloneable or non-object spec: EINVAL, VM not running", async () => {
  const { vm, slot0 } = setup(0);
  vm.createVcpu(0);
  const bad: [unknown, string][] = [
    [null, "guest"],
    [42, "guest"],
    [
      () => {
        throw new Error("boom");
      },
      "guest",
    ],
    [() => null, "guest"],
    [() => "memstress", "guest"],
    [() => ({ ...memstress(), f: () => 1 }), "guest"],
    [() => ({ ...memstress(), s: Symbol("x") }), "guest"],
  ];
  for (const [g, arg] of bad)
    await assert.rejects(vm.run(g as (id: number) => GuestArgs), isKvmError("EINVAL", arg), String(g));
  // not left running: a slot can still be created and deleted, and a legal run works
  const slot1 = { ...slot0, slot: 1, guestPhysAddr: 2 * MiB, userspaceAddr: slot0.userspaceAddr + 2 * MiB };
  vm.setUserMemoryRegion(slot1);
  vm.setUserMemoryRegion({ ...slot1, memorySize: 0 });
  await vm.run(() => memstress());
  await passes(vm, 0, 1);
  await vm.stop();
  assert.equal(vm.error, null);
});

test("a guest of unknown kind is refused before any worker starts; the next run works", async () => {
  const { vm, slot0 } = setup();
  vm.createVcpu(0);
  await assert.rejects(
    vm.run(() => ({ kind: "no-such-guest" }) as unknown as GuestArgs),
    (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /kind/.test(e.message),
  );
  assert.equal(vm.error, null);
  // not left running: slot changes are allowed (a vCPU left in guest mode would make the
  // deletion's flush wait and throw ETIMEDOUT)
  for (const id of vm.vcpuIds) assert.equal(Atomics.load(vmKvm(vm).vcpu, VCPU.mode(id)), OUTSIDE_GUEST_MODE);
  vm.setUserMemoryRegion({ ...slot0, memorySize: 0 });
  vm.setUserMemoryRegion(slot0);
  await vm.run(() => memstress());
  assert.equal(vm.error, null, "a new run starts clean");
  await passes(vm, 0, 1);
  await vm.stop();
});

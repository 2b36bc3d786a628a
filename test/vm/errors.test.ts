/**
 * Bad input on the Vm API: every method validates first and throws a KvmError whose `.code` is
 * the errno and whose message names the offending argument, and leaves the VM as it was.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CTL,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  OUTSIDE_GUEST_MODE,
  PAGE_SIZE,
  SLOT,
  VCPU,
} from "../../src/kvm_host.js";
import { VcpuState } from "../../src/kvm/requests.js";
import { Errno, KvmError } from "../../src/errors.js";
import { MemoryRegion, Vm, VmOptions } from "../../src/vm.js";
import { vmKvm, vmShared } from "../../src/vm/internal.js";

const MiB = 1 << 20;

function expectError(fn: () => unknown, code: Errno, arg: string, what = ""): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KvmError, `${what}: not a KvmError: ${String(e)}`);
    assert.equal(e.code, code, `${what}: ${e.message}`);
    assert.match(e.message, new RegExp(`\\b${arg}\\b`), `${what}: the message names ${arg}`);
    return true;
  });
}

async function expectRejection(p: Promise<unknown>, code: Errno, arg: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof KvmError, `not a KvmError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, new RegExp(`\\b${arg}\\b`));
    return true;
  });
}

/** Everything a failed call must leave as it was. */
function snapshot(vm: Vm): unknown {
  const k = vmKvm(vm);
  const ctl = [
    CTL.rmap_pool_next,
    CTL.bitmap_pool_next,
    CTL.lpage_pool_next,
    CTL.hva_next,
    CTL.nr_vcpus,
    CTL.frame_top,
    CTL.frame_high,
  ].map((i) => k.ctl[i]);
  return {
    ctl,
    slots: [...k.slots],
    rmap: [...k.rmapPool],
    bitmap: [...k.bitmapPool],
    lpage: [...k.lpagePool],
    hpt: [...k.hpt],
    vcpus: vm.vcpuIds,
    locks: [k.mmu_lock.isLocked(), k.slots_lock.isLocked(), k.mm_lock.isLocked()],
  };
}

function unchanged(vm: Vm, before: unknown, what: string): void {
  assert.deepEqual(snapshot(vm), before, `${what}: the VM changed`);
}

function setup(): { vm: Vm; hva: number; slot0: MemoryRegion } {
  const vm = Vm.create({ memory: 8 * MiB, wp: "lockless", maxVcpus: 2 });
  const hva = vm.mmap(4 * MiB);
  const slot0: MemoryRegion = {
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: 2 * MiB,
    userspaceAddr: hva,
  };
  vm.setUserMemoryRegion(slot0);
  return { vm, hva, slot0 };
}

test("Vm.create: bad memory, wp, bugs, maxVcpus", () => {
  const ok: VmOptions = { memory: 4 * MiB, wp: "locked" };
  const bad: [Partial<Record<keyof VmOptions, unknown>>, Errno, string][] = [
    [{ memory: 0 }, "EINVAL", "memory"],
    [{ memory: -PAGE_SIZE }, "EINVAL", "memory"],
    [{ memory: 1000 }, "EINVAL", "memory"],
    [{ memory: PAGE_SIZE + 1 }, "EINVAL", "memory"],
    [{ memory: 1.5 * PAGE_SIZE }, "EINVAL", "memory"],
    [{ memory: NaN }, "EINVAL", "memory"],
    [{ memory: Infinity }, "EINVAL", "memory"],
    [{ memory: "4194304" }, "EINVAL", "memory"],
    [{ memory: undefined }, "EINVAL", "memory"],
    [{ memory: 2 ** 40 }, "ENOMEM", "memory"],
    // one page over V8's typed-array limit (2^32 Int32 words), refused before anything is allocated
    [{ memory: 2 ** 34 + PAGE_SIZE }, "ENOMEM", "memory"],
    [{ wp: "fast" }, "EINVAL", "wp"],
    [{ wp: "LOCKED" }, "EINVAL", "wp"],
    [{ wp: undefined }, "EINVAL", "wp"],
    [{ mode: "ept" }, "EINVAL", "mode"],
    [{ mode: "" }, "EINVAL", "mode"],
    [{ bugs: ["no-such-bug"] }, "EINVAL", "bugs"],
    [{ bugs: ["skip-flush", ""] }, "EINVAL", "bugs"],
    [{ maxVcpus: 0 }, "EINVAL", "maxVcpus"],
    [{ maxVcpus: 65 }, "EINVAL", "maxVcpus"],
    [{ maxVcpus: 1.5 }, "EINVAL", "maxVcpus"],
    [{ maxVcpus: -1 }, "EINVAL", "maxVcpus"],
  ];
  for (const [over, code, arg] of bad)
    expectError(() => Vm.create({ ...ok, ...over } as VmOptions), code, arg, JSON.stringify(over));
  // and the good options do create a VM, with the bugs asked for
  const vm = Vm.create({ ...ok, bugs: ["skip-flush", "backward-move"], maxVcpus: 64 });
  assert.equal(vmShared(vm).config.maxVcpus, 64);
  assert.equal(vmKvm(vm).bugs, (1 << 3) | (1 << 0));
});

test("Vm.create: names of Object.prototype are not bugs", () => {
  for (const b of ["toString", "constructor", "__proto__", "hasOwnProperty"])
    expectError(
      () => Vm.create({ memory: 4 * MiB, wp: "locked", bugs: [b] } as VmOptions),
      "EINVAL",
      "bugs",
      b,
    );
});

test("mmap: bad sizes; exhaustion leaves the host memory as it was", () => {
  const vm = Vm.create({ memory: 4 * MiB, wp: "locked" });
  const before = snapshot(vm);
  for (const bytes of [0, -PAGE_SIZE, 100, PAGE_SIZE + 8, NaN, 0.5])
    expectError(() => vm.mmap(bytes), "EINVAL", "bytes", String(bytes));
  unchanged(vm, before, "mmap EINVAL");
  assert.throws(
    () => vm.mmap(8 * MiB),
    (e: unknown) => e instanceof KvmError && e.code === "ENOMEM",
  );
  unchanged(vm, before, "mmap ENOMEM");
  // what fits can still be mapped
  const hva = vm.mmap(2 * MiB);
  assert.ok(hva > 0 && hva % (2 * MiB) === 0, "2 MiB aligned, never at 0");
});

test("mmap: the ENOMEM message names the argument (bytes)", () => {
  const vm = Vm.create({ memory: 4 * MiB, wp: "locked" });
  expectError(() => vm.mmap(8 * MiB), "ENOMEM", "bytes");
});

test("setUserMemoryRegion: bad slot, flags, alignment, sizes, overlaps, unmapped memory", () => {
  const { vm, hva, slot0 } = setup();
  const before = snapshot(vm);
  const bad: [Partial<Record<keyof MemoryRegion, unknown>>, Errno, string][] = [
    [{ slot: -1 }, "EINVAL", "slot"],
    [{ slot: 32 }, "EINVAL", "slot"],
    [{ slot: 1.5 }, "EINVAL", "slot"],
    [{ slot: NaN }, "EINVAL", "slot"],
    [{ slot: "1" }, "EINVAL", "slot"],
    [{ slot: 1, flags: 4 }, "EINVAL", "flags"],
    [{ slot: 1, flags: 1 << 30 }, "EINVAL", "flags"],
    [{ slot: 1, flags: -1 }, "EINVAL", "flags"],
    [{ slot: 1, flags: 0.5 }, "EINVAL", "flags"],
    [{ slot: 1, guestPhysAddr: 4 * MiB + 100 }, "EINVAL", "guestPhysAddr"],
    [{ slot: 1, guestPhysAddr: -4 * MiB }, "EINVAL", "guestPhysAddr"],
    [{ slot: 1, guestPhysAddr: 4 * MiB, memorySize: 2 * MiB + 1 }, "EINVAL", "memorySize"],
    [{ slot: 1, guestPhysAddr: 4 * MiB, memorySize: -2 * MiB }, "EINVAL", "memorySize"],
    [{ slot: 1, guestPhysAddr: 4 * MiB, userspaceAddr: hva + 2 * MiB + 8 }, "EINVAL", "userspaceAddr"],
    [{ slot: 1, guestPhysAddr: 4 * MiB, userspaceAddr: -PAGE_SIZE }, "EINVAL", "userspaceAddr"],
    // 0 deletes a slot: there must be one
    [{ slot: 5, memorySize: 0 }, "EINVAL", "memorySize"],
    // an existing slot: only its flags may change
    [{ memorySize: MiB }, "EINVAL", "slot"],
    [{ guestPhysAddr: 2 * MiB }, "EINVAL", "slot"],
    [{ userspaceAddr: hva + 2 * MiB }, "EINVAL", "slot"],
    [{ flags: KVM_MEM_READONLY }, "EINVAL", "flags"],
    // overlaps with slot 0
    [{ slot: 1, userspaceAddr: hva + 2 * MiB }, "EEXIST", "guestPhysAddr"],
    [{ slot: 1, guestPhysAddr: MiB, userspaceAddr: hva + 2 * MiB }, "EEXIST", "guestPhysAddr"],
    [
      { slot: 1, guestPhysAddr: 2 * MiB - PAGE_SIZE, memorySize: PAGE_SIZE, userspaceAddr: hva + 2 * MiB },
      "EEXIST",
      "guestPhysAddr",
    ],
    // beyond the guest-physical space
    [
      { slot: 1, guestPhysAddr: 2 ** 31 * PAGE_SIZE, userspaceAddr: hva + 2 * MiB },
      "EINVAL",
      "guestPhysAddr",
    ],
    // host memory that is not (all) mapped
    [{ slot: 1, guestPhysAddr: 4 * MiB, userspaceAddr: hva + 3 * MiB }, "EFAULT", "userspaceAddr"],
    [{ slot: 1, guestPhysAddr: 4 * MiB, userspaceAddr: hva + 64 * MiB }, "EFAULT", "userspaceAddr"],
    [
      { slot: 1, guestPhysAddr: 4 * MiB, memorySize: 64 * MiB, userspaceAddr: hva + 2 * MiB },
      "EFAULT",
      "userspaceAddr",
    ],
  ];
  for (const [over, code, arg] of bad) {
    const m = { ...slot0, ...over } as MemoryRegion;
    expectError(() => vm.setUserMemoryRegion(m), code, arg, JSON.stringify(over));
    unchanged(vm, before, JSON.stringify(over));
  }
  // Valid calls still work afterwards: a second slot beside slot 0, logging on slot 0, delete.
  const slot1: MemoryRegion = {
    slot: 1,
    flags: 0,
    guestPhysAddr: 2 * MiB,
    memorySize: 2 * MiB,
    userspaceAddr: hva + 2 * MiB,
  };
  vm.setUserMemoryRegion(slot1);
  const s = vmKvm(vm).slots;
  assert.equal(s[SLOT.active(1)], 1);
  assert.equal(s[SLOT.base_gfn(1)], 512);
  assert.equal(s[SLOT.npages(1)], 512);
  vm.setUserMemoryRegion({ ...slot0, flags: KVM_MEM_LOG_DIRTY_PAGES });
  assert.equal(s[SLOT.flags(0)], KVM_MEM_LOG_DIRTY_PAGES);
  assert.deepEqual([...vm.getDirtyLog(0)], new Array<number>(16).fill(0));
  vm.setUserMemoryRegion({ ...slot1, memorySize: 0 });
  assert.equal(s[SLOT.active(1)], 0);
  expectError(() => vm.getDirtyLog(1), "ENOENT", "slot", "deleted slot");
});

test("setUserMemoryRegion: a slot too large for the memslot metadata is ENOMEM", () => {
  const vm = Vm.create({ memory: 8 * MiB, wp: "locked", maxSlotPages: 256 });
  const hva = vm.mmap(4 * MiB);
  const before = snapshot(vm);
  const big: MemoryRegion = {
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: 4 * MiB,
    userspaceAddr: hva,
  };
  expectError(() => vm.setUserMemoryRegion(big), "ENOMEM", "memorySize");
  unchanged(vm, before, "ENOMEM");
  // what fits is accepted
  vm.setUserMemoryRegion({ ...big, memorySize: MiB });
  assert.equal(vmKvm(vm).slots[SLOT.npages(0)], 256);
});

test("getDirtyLog: unknown slot, slot without logging, bad slot id, short output", () => {
  const { vm, slot0 } = setup();
  let before = snapshot(vm);
  expectError(() => vm.getDirtyLog(7), "ENOENT", "slot", "no slot 7");
  expectError(() => vm.getDirtyLog(0), "ENOENT", "slot", "slot 0 not logged");
  expectError(() => vm.getDirtyLog(32), "EINVAL", "slot", "slot 32");
  expectError(() => vm.getDirtyLog(-1), "EINVAL", "slot", "slot -1");
  unchanged(vm, before, "getDirtyLog");
  vm.setUserMemoryRegion({ ...slot0, flags: KVM_MEM_LOG_DIRTY_PAGES });
  before = snapshot(vm);
  expectError(() => vm.getDirtyLog(0, new Uint32Array(15)), "EFAULT", "out", "short out");
  unchanged(vm, before, "getDirtyLog short out");
  const out = new Uint32Array(16).fill(0xdead);
  assert.equal(vm.getDirtyLog(0, out), out);
  assert.deepEqual([...out], new Array<number>(16).fill(0));
});

test("createVcpu: twice is EEXIST; out-of-range ids are EINVAL", () => {
  const { vm } = setup();
  vm.createVcpu(1);
  const before = snapshot(vm);
  expectError(() => vm.createVcpu(1), "EEXIST", "id", "twice");
  for (const id of [-1, 2, 64, 0.5, NaN]) expectError(() => vm.createVcpu(id), "EINVAL", "id", String(id));
  unchanged(vm, before, "createVcpu");
  assert.equal(vmKvm(vm).ctl[CTL.nr_vcpus], 2);
  vm.createVcpu(0);
  assert.deepEqual(vm.vcpuIds, [0, 1]);
  assert.equal(vmKvm(vm).ctl[CTL.nr_vcpus], 2);
});

test("run / startHostThread: bad arguments are refused before any thread starts", async () => {
  const { vm, slot0 } = setup();
  await expectRejection(
    vm.run(() => ({ kind: "memstress", baseGfn: 0, pages: 1, writePercent: 0, random: false, seed: 1 })),
    "EINVAL",
    "run",
  );
  vm.createVcpu(0);
  const guest = () => ({
    kind: "memstress" as const,
    baseGfn: 0,
    pages: 8,
    writePercent: 50,
    random: false,
    seed: 1,
  });
  for (const tlbBits of [0, 21, 1.5]) await expectRejection(vm.run(guest, { tlbBits }), "EINVAL", "tlbBits");
  for (const [o, arg] of [
    [{ migrateRate: -1, invalidateRate: 0 }, "migrateRate"],
    [{ migrateRate: NaN, invalidateRate: 0 }, "migrateRate"],
    [{ migrateRate: 0, invalidateRate: Infinity }, "invalidateRate"],
  ] as const)
    await expectRejection(vm.startHostThread(o), "EINVAL", arg);
  assert.deepEqual(vm.hostThreadCounters(), { migrations: 0, invalidations: 0 });
  // nothing is running: memslots can still be created and deleted
  const slot1: MemoryRegion = {
    ...slot0,
    slot: 1,
    guestPhysAddr: 2 * MiB,
    userspaceAddr: slot0.userspaceAddr + 2 * MiB,
  };
  vm.setUserMemoryRegion(slot1);
  vm.setUserMemoryRegion({ ...slot1, memorySize: 0 });
});

test("while vCPUs run: memslot creation/deletion and a second run are EBUSY", async () => {
  const { vm, hva, slot0 } = setup();
  vm.createVcpu(0);
  await vm.run(() => ({
    kind: "memstress",
    baseGfn: 0,
    pages: 64,
    writePercent: 50,
    random: false,
    seed: 1,
  }));
  try {
    while (Atomics.load(vmKvm(vm).vcpu, VCPU.passes(0)) < 1) await new Promise((r) => setTimeout(r, 1));
    const slot1: MemoryRegion = {
      slot: 1,
      flags: 0,
      guestPhysAddr: 2 * MiB,
      memorySize: 2 * MiB,
      userspaceAddr: hva + 2 * MiB,
    };
    expectError(() => vm.setUserMemoryRegion(slot1), "EBUSY", "slot", "create while running");
    expectError(
      () => vm.setUserMemoryRegion({ ...slot0, memorySize: 0 }),
      "EBUSY",
      "memorySize",
      "delete while running",
    );
    assert.equal(vmKvm(vm).slots[SLOT.active(1)], 0);
    assert.equal(vmKvm(vm).slots[SLOT.active(0)], 1);
    await expectRejection(
      vm.run(() => ({ kind: "memstress", baseGfn: 0, pages: 1, writePercent: 0, random: false, seed: 1 })),
      "EBUSY",
      "run",
    );
    // flags may change while running
    vm.setUserMemoryRegion({ ...slot0, flags: KVM_MEM_LOG_DIRTY_PAGES });
    const passes = Atomics.load(vmKvm(vm).vcpu, VCPU.passes(0));
    while (Atomics.load(vmKvm(vm).vcpu, VCPU.passes(0)) < passes + 2)
      await new Promise((r) => setTimeout(r, 1));
    const log = vm.getDirtyLog(0);
    assert.ok(log[0] !== 0 || log[1] !== 0, "the running guest's writes were logged");
    vm.throwIfFailed();
  } finally {
    await vm.stop();
  }
});

test("stop(): no vCPU is left in guest mode, so later flushes (deleting a slot) do not wait for it", async () => {
  const { vm, slot0 } = setup();
  vm.createVcpu(0);
  await vm.run(() => ({
    kind: "memstress",
    baseGfn: 0,
    pages: 64,
    writePercent: 50,
    random: false,
    seed: 1,
  }));
  await new Promise((r) => setTimeout(r, 20));
  await vm.stop();
  const mode = Atomics.load(vmKvm(vm).vcpu, VCPU.mode(0));
  const state = Atomics.load(vmKvm(vm).vcpu, VCPU.state(0));
  // Otherwise kvm_flush_remote_tlbs (in the slot deletion below) waits 10 s and throws ETIMEDOUT.
  assert.equal(mode, OUTSIDE_GUEST_MODE, `vcpu 0 after stop(): mode ${mode}, state ${state}`);
  assert.equal(state, VcpuState.Stopped);
  vm.setUserMemoryRegion({ ...slot0, memorySize: 0 });
  assert.equal(vmKvm(vm).slots[SLOT.active(0)], 0);
});

/**
 * A dead VM, as KVM's kvm_vm_dead(): once a vCPU failed (threw, exited, or spun holding
 * mmu_lock past the soft-lockup bound, or never acknowledged a TLB flush), every later call
 * throws EIO at once with the VM's error as its cause, on every design, and stop() returns.
 * The bound is small here (300 ms); nothing is timed: each call must return, with its code.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvmError, KVM_MEM_LOG_DIRTY_PAGES, Vm } from "../../src/index.js";
import type { MemoryRegion } from "../../src/vm.js";
import { SoftLockupError } from "../../src/kvm/vm_dead.js";
import { designNames } from "../../src/mmu/design.js";
import { vmKvm } from "../../src/vm/internal.js";

const MiB = 1 << 20;
const BOUND = 300;
const fixture = new URL("../guest/fixtures/lock_holder.js", import.meta.url);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
type How = "throw" | "exit" | "spin" | "noack" | "hold-then-throw";

function newVm(wp: string): Vm {
  const vm = Vm.create({ memory: 8 * MiB, wp, maxVcpus: 2, lockHoldTimeoutMs: BOUND });
  vm.enableDirtyRing(4096, { withBitmap: true });
  const hva = vm.mmap(2 * MiB, { thp: false });
  const r = {
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: 2 * MiB,
    userspaceAddr: hva,
  };
  vm.setUserMemoryRegion(r);
  vm.createVcpu(0);
  regions.set(vm, r);
  return vm;
}

const regions = new WeakMap<Vm, MemoryRegion>();
const region = (vm: Vm): MemoryRegion => regions.get(vm)!;

/** Every later call: GET, CLEAR, ring reset, slot delete, logging toggle, and the rest. */
function laterCalls(vm: Vm): [string, () => unknown][] {
  const r = region(vm);
  return [
    ["getDirtyLog", () => vm.getDirtyLog(0)],
    ["clearDirtyLog", () => vm.clearDirtyLog(0, 0, 64, new Uint32Array(2).fill(~0))],
    ["resetDirtyRings", () => vm.resetDirtyRings()],
    ["harvestDirtyRing", () => vm.harvestDirtyRing(0)],
    ["harvestDirtyRingInto", () => vm.harvestDirtyRingInto(0, new Int32Array(4), new Int32Array(4))],
    ["setUserMemoryRegion", () => vm.setUserMemoryRegion({ ...r, memorySize: 0 })],
    ["setUserMemoryRegion", () => vm.setUserMemoryRegion({ ...r, flags: 0 })],
    ["enableManualDirtyLogProtect", () => vm.enableManualDirtyLogProtect(1)],
    ["writeGuest", () => vm.writeGuest(0, new Uint8Array(8))],
    ["createVcpu", () => vm.createVcpu(1)],
  ];
}

async function failsFast(vm: Vm): Promise<void> {
  const cause = vm.error;
  assert.ok(cause, "the VM has its error");
  for (const [name, call] of laterCalls(vm))
    assert.throws(call, (e: unknown) => {
      assert.ok(e instanceof KvmError, String(e));
      assert.equal(e.code, "EIO", e.message);
      assert.match(e.message, new RegExp(`^EIO: ${name}: the VM is dead`));
      assert.equal(e.cause, cause, `${name}: the cause is the VM's error`);
      return true;
    });
  for (const [name, p] of [
    ["pause", () => vm.pause()],
    [
      "run",
      () =>
        vm.run(() => ({ kind: "memstress", baseGfn: 0, pages: 1, writePercent: 0, random: false, seed: 1 })),
    ],
  ] as const)
    await assert.rejects(
      p(),
      (e: unknown) => e instanceof KvmError && e.code === "EIO" && e.cause === cause,
      name,
    );
}

async function untilError(vm: Vm): Promise<void> {
  // No deadline of ours: the bound is the VM's; the test runner's timeout catches a hang.
  while (!vm.error) await sleep(5);
}

async function start(vm: Vm, how: How): Promise<void> {
  await vm.run(() => ({ module: fixture.href, args: { how, gpa: 4096, holdMs: BOUND / 3 } })).catch(() => {});
}

for (const wp of designNames()) {
  for (const how of ["throw", "exit", "spin"] as const)
    test(`${wp}: a vCPU that ${how}s holding mmu_lock: the VM dies, every later call is EIO at once, stop() returns`, async () => {
      const vm = newVm(wp);
      await start(vm, how);
      await untilError(vm);
      if (how === "spin") {
        const e = vm.error;
        assert.ok(e instanceof SoftLockupError, String(e));
        assert.equal(e.vcpu, 0);
        assert.equal(e.lock, "mmu_lock");
        assert.equal(e.code, "ETIMEDOUT");
        assert.match(e.message, /vcpu 0: soft lockup: held mmu_lock/);
      } else assert.equal((vm.error as KvmError).code, "EIO");
      await failsFast(vm);
      await vm.stop();
      await failsFast(vm);
    });

  test(`${wp}: the owner waiting for mmu_lock while its holder spins: that call is the soft lockup`, async () => {
    const vm = newVm(wp);
    await start(vm, "spin");
    const kvm = vmKvm(vm);
    while (!kvm.mmu_lock.isLocked() && !vm.error) await sleep(1);
    // The logging toggle takes mmu_lock on every design: it waits, then gives up at the bound.
    assert.throws(
      () => vm.setUserMemoryRegion({ ...region(vm), flags: 0 }),
      (e: unknown) => e instanceof SoftLockupError && e.vcpu === 0 && e.lock === "mmu_lock",
    );
    assert.ok(vm.error instanceof SoftLockupError);
    await failsFast(vm);
    await vm.stop();
  });

  test(`${wp}: the owner waiting for mmu_lock when its holder throws: EIO, not a hang`, async () => {
    const vm = newVm(wp);
    await start(vm, "hold-then-throw");
    const kvm = vmKvm(vm);
    while (!kvm.mmu_lock.isLocked() && !vm.error) await sleep(1);
    assert.throws(
      () => vm.setUserMemoryRegion({ ...region(vm), flags: 0 }),
      (e: unknown) => e instanceof KvmError && e.code === "EIO" && /the VM is dead/.test(e.message),
    );
    await untilError(vm);
    await failsFast(vm);
    await vm.stop();
  });

  test(`${wp}: a vCPU that never acknowledges a flush fails the VM once; later calls are EIO at once`, async () => {
    const vm = newVm(wp);
    await start(vm, "noack");
    // The guest dirtied a page: its write-protection flushes, and the vCPU never answers.
    let first: unknown = null;
    for (let i = 0; i < 200 && first === null && !vm.error; i++) {
      try {
        // The ring has the vCPU's write: harvest, then the reset write-protects and flushes.
        vm.getDirtyLog(0);
        vm.harvestDirtyRing(0);
        vm.resetDirtyRings();
      } catch (e) {
        first = e;
      }
      await sleep(5);
    }
    assert.ok(first instanceof KvmError, String(first));
    assert.equal(first.code, "ETIMEDOUT", first.message);
    assert.match(first.message, /vcpu 0: no acknowledgement of a TLB flush/);
    assert.equal(vm.error, first, "the flush's timeout is the VM's error");
    await failsFast(vm);
    await vm.stop();
  });
}

test("lockHoldTimeoutMs: an integer 1..3600000, EINVAL naming it", () => {
  for (const x of [0, -1, 1.5, NaN, "100", 3_600_001])
    assert.throws(
      () => Vm.create({ memory: 4 * MiB, wp: "locked", lockHoldTimeoutMs: x as number }),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /lockHoldTimeoutMs/.test(e.message),
    );
});

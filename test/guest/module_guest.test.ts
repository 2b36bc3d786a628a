/**
 * User guest programs: an ES module run in each vCPU worker on the guest context, the spec
 * checks made before any worker starts, and vm.waitPasses.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { pathToFileURL } from "node:url";
import { KvmError, KVM_MEM_LOG_DIRTY_PAGES, Vm } from "../../src/index.js";
import type { Errno, MmuModeName } from "../../src/index.js";

const MiB = 1 << 20;
const BASE = 16 * MiB;
const fixture = (name: string): URL => new URL(`./fixtures/${name}.js`, import.meta.url);

function vmWith(mode: MmuModeName, vcpus = 2): Vm {
  const vm = Vm.create({ memory: 8 * MiB, wp: "lockless", mode, maxVcpus: 4 });
  const hva = vm.mmap(4 * MiB, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: BASE,
    memorySize: 4 * MiB,
    userspaceAddr: hva,
  });
  for (let i = 0; i < vcpus; i++) vm.createVcpu(i);
  return vm;
}

const u32 = (b: Uint8Array, off: number): number => new DataView(b.buffer, b.byteOffset).getUint32(off, true);

for (const mode of ["tdp", "shadow"] as const) {
  test(`module guest (${mode}): every load and store of the context, on two vCPUs`, async () => {
    const vm = vmWith(mode);
    try {
      await vm.run(() => ({ module: fixture("ctx_guest"), args: { base: BASE } }));
      await vm.waitPasses(1, { timeoutMs: 30_000 });
      for (const id of [0, 1]) {
        const base = BASE + id * 2 * 4096;
        const m = vm.readGuest(base, 32);
        assert.equal(u32(m, 0), 0xcdefab44, "store8 and store16 inside a word");
        assert.equal(u32(m, 4), 0x34567800, "unaligned store32 spans two words");
        assert.equal(u32(m, 8), 0x12, "its last byte");
        assert.equal(new DataView(m.buffer).getBigUint64(16, true), 0x0123456789abcdefn);
        assert.equal(m[27] | (m[28] << 8), 0xbeef, "store16 across a word boundary");
        assert.deepEqual(
          [...vm.readGuest(base + 4093, 10)],
          [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
          "writeBytes across pages",
        );
        const res = vm.readGuest(base + 64, 56);
        assert.equal(u32(res, 0), 0xab);
        assert.equal(u32(res, 4), 0xcdef);
        assert.equal(u32(res, 8), 0x12345678);
        assert.equal(new DataView(res.buffer).getBigUint64(16, true), 0x0123456789abcdefn);
        assert.equal(u32(res, 24), 0xbeef);
        assert.deepEqual([...res.subarray(32, 42)], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert.equal(u32(res, 44), 8, "write64w / read32w");
        assert.equal(u32(res, 48), id, "vcpuId");
        assert.equal(u32(res, 52), 0, "not stopped");
      }
      // Guest stores went through the MMU with logging on: the pages are in the dirty log.
      const bm = vm.getDirtyLog(0);
      assert.equal(bm[0] & 0b1111, 0b1111, "pages 0-3 (each vCPU's two pages) are dirty");
    } finally {
      await vm.stop();
    }
    assert.equal(vm.error, null);
  });
}

test("module guest: a `main` that returns leaves the vCPU halted, and stop() still joins it", async () => {
  const vm = vmWith("tdp", 1);
  await vm.run(() => ({ module: fixture("returns"), args: { gpa: BASE + 100 * 4 } }));
  await vm.waitPasses(1, { timeoutMs: 30_000 });
  assert.equal(u32(vm.readGuest(BASE + 400, 4), 0), 0x600d);
  await vm.pause();
  vm.resume();
  await vm.stop();
  assert.equal(vm.error, null);
});

test("module guest: an exception in the guest fails the VM; waitPasses rejects with it", async () => {
  const vm = vmWith("tdp", 1);
  // The guest may fail before run() has seen every vCPU start (run rejects) or after (waitPasses does).
  const ran = vm
    .run(() => ({ module: fixture("ctx_guest"), args: { base: BASE, fail: true } }))
    .then(() => vm.waitPasses(1, { timeoutMs: 30_000 }));
  await assert.rejects(ran, /guest asked to fail/);
  await vm.stop();
  assert.ok(vm.error);
});

test("waitPasses: ETIMEDOUT when the guest makes no pass in time; EINVAL on bad arguments", async () => {
  const vm = vmWith("tdp", 1);
  try {
    await assert.rejects(vm.waitPasses(1), (e: unknown) => e instanceof KvmError && e.code === "EINVAL");
    await vm.run(() => ({ module: fixture("returns"), args: { gpa: BASE } }));
    await vm.waitPasses(1, { timeoutMs: 30_000 });
    await assert.rejects(
      vm.waitPasses(2, { timeoutMs: 50 }),
      (e: unknown) => e instanceof KvmError && e.code === "ETIMEDOUT",
    );
    for (const bad of [-1, 1.5, NaN]) await assert.rejects(vm.waitPasses(bad), /EINVAL: passes/);
    await assert.rejects(vm.waitPasses(1, { timeoutMs: 0 }), /EINVAL: timeoutMs/);
    // One target per vCPU, and a service hook that runs on every poll.
    let polls = 0;
    await vm.waitPasses([1], { service: () => polls++ });
    assert.ok(polls >= 1);
    await assert.rejects(
      vm.waitPasses([2], { timeoutMs: 30, service: () => polls++ }),
      (e: unknown) => e instanceof KvmError && e.code === "ETIMEDOUT",
    );
    assert.ok(polls >= 3, `service ran ${polls} times`);
    await assert.rejects(vm.waitPasses([1, 1]), /EINVAL: passes: must be .* an array of 1/);
    await assert.rejects(vm.waitPasses([-1]), /EINVAL: passes/);
    await assert.rejects(vm.waitPasses(1, { service: 42 as unknown as () => void }), /EINVAL: service/);
  } finally {
    await vm.stop();
  }
});

test("run: an invalid guest spec is EINVAL naming the field, before any worker starts; the VM stays usable", async () => {
  const vm = vmWith("tdp", 2);
  const ms = {
    kind: "memstress" as const,
    baseGfn: BASE / 4096,
    pages: 16,
    writePercent: 50,
    random: false,
    seed: 1,
  };
  const cases: [unknown, string][] = [
    [null, "guest"],
    [() => 42, "guest"],
    [() => ({ kind: "memstres" }), "kind"],
    [() => ({}), "module"],
    [() => ({ module: 42 }), "module"],
    [() => ({ module: "not a url" }), "module"],
    [() => ({ module: "https://example.com/guest.js" }), "module"],
    [() => ({ module: pathToFileURL("/nonexistent/guest.js") }), "module"],
    [() => ({ module: fixture("returns"), args: { f: () => 1 } }), "args"],
    [() => ({ ...ms, pages: 1.5 }), "pages"],
    [() => ({ ...ms, pages: 0 }), "pages"],
    [() => ({ ...ms, writePercent: 101 }), "writePercent"],
    [() => ({ ...ms, random: "no" }), "random"],
    [(id: number) => (id === 1 ? { ...ms, baseGfn: -1 } : ms), "baseGfn"],
    [() => ({ kind: "dirty_log", baseGfn: 0, pages: 1, seed: 1 }), "ctl"],
    [() => ({ ...ms, paging: { kernel: { baseGfn: 0, pages: 1 }, poolGfn: 0, poolPages: 1 } }), "vpn"],
  ];
  for (const [guest, field] of cases) {
    await assert.rejects(vm.run(guest as Parameters<Vm["run"]>[0]), (e: unknown) => {
      assert.ok(e instanceof KvmError, String(e));
      assert.equal(e.code, "EINVAL" satisfies Errno, e.message);
      assert.match(e.message, new RegExp(`\\b${field}\\b`), e.message);
      return true;
    });
  }
  // Nothing started: a valid run still works.
  await vm.run(() => ms);
  await vm.waitPasses(2, { timeoutMs: 30_000 });
  await vm.stop();
  assert.equal(vm.error, null);
});

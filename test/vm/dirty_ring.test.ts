/**
 * The dirty ring: enabling it (KVM's checks), ENXIO for the bitmap calls, host writes with and
 * without the ring's bitmap, push/harvest/reset with a vCPU on this thread, coalesced resets
 * re-protecting every page, and a worker vCPU blocked by a soft-full ring until a reset.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm, WpName } from "../../src/vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../../src/kvm_host.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { KvmError, Errno } from "../../src/errors.js";
import { dirtyPages } from "../../src/dirty_bitmap.js";
import {
  kvm_dirty_ring_soft_full,
  kvm_dirty_ring_used,
  kvm_get_running_vcpu,
  kvm_set_running_vcpu,
} from "../../src/mem/dirty_ring.js";
import { DLG, DLG_VCPU, dlgCtlWords } from "../../src/workload/dirty_log_guest.js";
import { vmKvm } from "../../src/vm/internal.js";

const NPAGES = 300;

function expectErr(fn: () => unknown, code: Errno, arg: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KvmError, String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.message, arg);
    return true;
  });
}

function ringVm(wp: WpName, entries = 256, withBitmap = false): Vm {
  const vm = Vm.create({ memory: 8 << 20, wp, maxVcpus: 2, maxSlotPages: 2048 });
  vm.enableDirtyRing(entries, { withBitmap });
  const hva = vm.mmap(NPAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 2,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: NPAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  return vm;
}

/** Writes the pages as vCPU 0 on this thread (kvm_get_running_vcpu() = 0 meanwhile). */
function writes(vm: Vm, pages: number[], x = 1): void {
  const v = new Vcpu(vmKvm(vm), 0);
  kvm_set_running_vcpu(vmKvm(vm), 0);
  try {
    v.enterGuest();
    for (const p of pages) v.write64(p, 0, x, 0);
    v.exitGuest();
  } finally {
    kvm_set_running_vcpu(vmKvm(vm), -1);
  }
}

test("enableDirtyRing: power of two, one page to 65536 entries, once, before any vCPU", () => {
  const vm = Vm.create({ memory: 1 << 20, wp: "locked", maxVcpus: 2 });
  expectErr(() => vm.enableDirtyRing(0), "EINVAL", /entries: must be a power of two/);
  expectErr(() => vm.enableDirtyRing(300), "EINVAL", /entries: must be a power of two/);
  expectErr(() => vm.enableDirtyRing(128), "EINVAL", /entries: must be at least 256/);
  expectErr(() => vm.enableDirtyRing(131072), "E2BIG", /entries: at most 65536/);
  expectErr(() => vm.enableDirtyRing(256, { withBitmap: 1 as unknown as boolean }), "EINVAL", /withBitmap/);
  vm.enableDirtyRing(65536);
  expectErr(() => vm.enableDirtyRing(256), "EINVAL", /already enabled/);
  const late = Vm.create({ memory: 1 << 20, wp: "locked", maxVcpus: 2 });
  late.createVcpu(0);
  expectErr(() => late.enableDirtyRing(256), "EINVAL", /before any vCPU exists/);
  const slotFirst = Vm.create({ memory: 1 << 20, wp: "locked", maxVcpus: 2 });
  slotFirst.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: 1 << 16,
    userspaceAddr: slotFirst.mmap(1 << 16),
  });
  expectErr(() => slotFirst.enableDirtyRing(256, { withBitmap: true }), "EINVAL", /before any memslot/);
  slotFirst.enableDirtyRing(256); // without the bitmap a memslot may exist
  expectErr(() => Vm.create({ memory: 1 << 20, wp: "locked" }).resetDirtyRings(), "EINVAL", /not enabled/);
});

test("ring-only mode: GET and CLEAR are ENXIO (before any other check); host writes are dropped", () => {
  const vm = ringVm("locked");
  expectErr(() => vm.getDirtyLog(99), "ENXIO", /getDirtyLog: the VM logs to dirty rings/);
  expectErr(() => vm.clearDirtyLog(99, 1, 1, new Uint32Array(1)), "ENXIO", /clearDirtyLog/);
  vm.writeGuest(5 * PAGE_SIZE, new Uint8Array([1]));
  assert.equal(vm.dirtyRingStats().dropped, 1);
  assert.deepEqual(vm.harvestDirtyRing(0), [], "no vCPU: nothing in the ring");
  expectErr(() => vm.harvestDirtyRing(1), "EINVAL", /vcpuId: no vCPU 1/);
  expectErr(() => vm.harvestDirtyRing(0, -1), "EINVAL", /max/);
});

test("ring with bitmap: host writes go to the bitmap, vCPU writes to the ring", () => {
  const vm = ringVm("lockless", 256, true);
  vm.writeGuest(7 * PAGE_SIZE, new Uint8Array([1]));
  writes(vm, [8]);
  assert.deepEqual(dirtyPages(vm.getDirtyLog(2)), [7]);
  assert.deepEqual(vm.harvestDirtyRing(0), [{ slot: 2, offset: 8 }]);
  assert.equal(vm.dirtyRingStats().dropped, 0);
});

for (const wp of ["locked", "lockless"] as const) {
  test(`${wp}: push in order, harvest once, reset re-protects every page (coalesced both ways)`, () => {
    const vm = ringVm(wp);
    // Forwards, backwards within 64, a jump, and back: several coalesced masks.
    const pages = [10, 9, 8, 40, 80, 79, 12, 299];
    writes(vm, pages);
    const got = vm.harvestDirtyRing(0, 3);
    assert.deepEqual(
      got.map((e) => e.offset),
      [10, 9, 8],
      "max honoured, in order",
    );
    const rest = vm.harvestDirtyRing(0);
    assert.deepEqual(
      rest.map((e) => e.offset),
      pages.slice(3),
    );
    assert.ok(rest.every((e) => e.slot === 2));
    assert.deepEqual(vm.harvestDirtyRing(0), [], "harvested entries are not returned again");
    // Not reset yet: the pages are still writable, a new write logs nothing.
    writes(vm, [10], 2);
    assert.deepEqual(vm.harvestDirtyRing(0), []);
    assert.equal(vm.resetDirtyRings(), pages.length);
    assert.equal(vm.resetDirtyRings(), 0, "nothing harvested since");
    // Every page was protected again: each write is logged once more.
    writes(vm, pages, 3);
    assert.deepEqual(
      vm.harvestDirtyRing(0).map((e) => e.offset),
      pages,
    );
    assert.equal(vm.resetDirtyRingsTimes().dirtyPages, pages.length);
  });
}

// The reset's coalescing keeps a 64-bit mask in two 32-bit halves: random walks whose steps
// cross the halves (±31, ±32, ±33, ±63, ±64) at every alignment, forwards and backwards. Every
// page reset must be protected again: its next write is logged.
for (const wp of ["locked", "lockless"] as const) {
  test(`${wp}: coalesced resets across the mask's halves re-protect every page (random walks)`, () => {
    let seed = 12345;
    const rnd = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const STEPS = [1, 2, 31, 32, 33, 62, 63, 64, 65];
    for (let round = 0; round < 20; round++) {
      const vm = ringVm(wp);
      const seen = new Set<number>();
      const pages: number[] = [];
      let p = rnd(NPAGES);
      for (let i = 0; i < 120 && pages.length < 100; i++) {
        if (!seen.has(p)) {
          seen.add(p);
          pages.push(p);
        }
        const step = STEPS[rnd(STEPS.length)] * (rnd(2) === 0 ? -1 : 1);
        p = Math.min(NPAGES - 1, Math.max(0, p + step));
      }
      writes(vm, pages);
      assert.deepEqual(
        vm.harvestDirtyRing(0).map((e) => e.offset),
        pages,
      );
      assert.equal(vm.resetDirtyRings(), pages.length);
      writes(vm, pages, 2);
      assert.deepEqual(
        vm.harvestDirtyRing(0).map((e) => e.offset),
        pages,
        `round ${round}: every reset page was protected again`,
      );
    }
  });
}

/** harvestDirtyRingInto with arrays of `cap` entries, as many calls as it comes back full. */
function harvestTyped(vm: Vm, cap: number): { slots: number[]; offsets: number[]; calls: number[] } {
  const slots = new Int32Array(cap);
  const offsets = new Int32Array(cap);
  const out = { slots: [] as number[], offsets: [] as number[], calls: [] as number[] };
  for (;;) {
    const n = vm.harvestDirtyRingInto(0, slots, offsets);
    out.calls.push(n);
    out.slots.push(...slots.subarray(0, n));
    out.offsets.push(...offsets.subarray(0, n));
    if (n < cap) return out;
  }
}

for (const wp of ["locked", "lockless"] as const) {
  test(`${wp}: harvestDirtyRingInto fills the arrays in ring order, at most their length, and counts`, () => {
    const vm = ringVm(wp);
    const pages = [10, 9, 8, 40, 80, 79, 12, 299];
    writes(vm, pages);
    const got = harvestTyped(vm, 3);
    assert.deepEqual(got.calls, [3, 3, 2], "full, full, then the rest: the last call is short");
    assert.deepEqual(got.offsets, pages);
    assert.deepEqual(got.slots, Array<number>(pages.length).fill(2));
    // Past the count the arrays are untouched; an empty ring harvests 0.
    const slots = new Int32Array(4).fill(-7);
    const offsets = new Int32Array(4).fill(-7);
    assert.equal(vm.harvestDirtyRingInto(0, slots, offsets), 0);
    assert.deepEqual([...slots, ...offsets], Array<number>(8).fill(-7));
    assert.equal(vm.resetDirtyRings(), pages.length);
  });

  test(`${wp}: harvestDirtyRingInto across the ring's wrap-around, up to the soft limit`, () => {
    const vm = ringVm(wp, 256);
    const kvm = vmKvm(vm);
    // 150 entries, reset: the next 191 wrap past entry 255 to entry 0. (A vCPU on this thread
    // that makes its ring soft-full waits in the exit for a reset: 191 = 256 - 64 - 1 at most.)
    writes(
      vm,
      Array.from({ length: 150 }, (_, g) => g),
    );
    assert.equal(harvestTyped(vm, 256).offsets.length, 150);
    assert.equal(vm.resetDirtyRings(), 150);
    const pages = Array.from({ length: 191 }, (_, k) => (k * 7) % NPAGES);
    assert.equal(new Set(pages).size, 191);
    writes(vm, pages, 2);
    assert.equal(kvm_dirty_ring_used(kvm, 0), 191);
    assert.ok(!kvm_dirty_ring_soft_full(kvm, 0), "one below 256 - KVM_DIRTY_RING_RSVD_ENTRIES");
    const got = harvestTyped(vm, 100);
    assert.deepEqual(got.calls, [100, 91]);
    assert.deepEqual(got.offsets, pages, "in push order across the wrap");
    assert.equal(kvm_dirty_ring_used(kvm, 0), 191, "harvested is not free until the reset");
    assert.equal(vm.resetDirtyRings(), 191);
    assert.equal(kvm_dirty_ring_used(kvm, 0), 0);
    assert.ok(!kvm_dirty_ring_soft_full(kvm, 0));
    // Every page was protected again by the reset: each write is logged once more.
    writes(vm, pages, 3);
    assert.deepEqual(harvestTyped(vm, 256).offsets, pages);
  });

  test(`${wp}: harvestDirtyRing (objects) is harvestDirtyRingInto entry for entry`, () => {
    const a = ringVm(wp);
    const b = ringVm(wp);
    const pages = [5, 6, 7, 100, 64, 63, 1, 2, 299, 0];
    writes(a, pages);
    writes(b, pages);
    const typed = harvestTyped(b, 4);
    assert.deepEqual(
      a.harvestDirtyRing(0, 4),
      typed.offsets.slice(0, 4).map((offset, k) => ({ slot: typed.slots[k], offset })),
      "max honoured as the arrays' length",
    );
    assert.deepEqual(
      a.harvestDirtyRing(0),
      typed.offsets.slice(4).map((offset, k) => ({ slot: typed.slots[k + 4], offset })),
    );
    assert.equal(a.resetDirtyRings(), b.resetDirtyRings());
  });
}

test("harvestDirtyRingInto: bad arrays are EINVAL naming the argument, and harvest nothing", () => {
  const vm = ringVm("locked");
  writes(vm, [1, 2, 3]);
  const ok = new Int32Array(8);
  expectErr(
    () => vm.harvestDirtyRingInto(0, new Uint32Array(8) as unknown as Int32Array, ok),
    "EINVAL",
    /slots: must be an Int32Array/,
  );
  expectErr(
    () => vm.harvestDirtyRingInto(0, ok, [0, 0] as unknown as Int32Array),
    "EINVAL",
    /offsets: must be an Int32Array/,
  );
  expectErr(
    () => vm.harvestDirtyRingInto(0, ok, new Int32Array(7)),
    "EINVAL",
    /offsets: must have the length of slots \(8\), got 7/,
  );
  expectErr(() => vm.harvestDirtyRingInto(1, ok, new Int32Array(8)), "EINVAL", /vcpuId: no vCPU 1/);
  assert.deepEqual(
    vm.harvestDirtyRing(0).map((e) => e.offset),
    [1, 2, 3],
    "the failed calls took nothing",
  );
  expectErr(
    () => Vm.create({ memory: 1 << 20, wp: "locked" }).harvestDirtyRingInto(0, ok, ok),
    "EINVAL",
    /not enabled/,
  );
});

test("kvm_get_running_vcpu is per VM: a vCPU of one VM on this thread is no vCPU of another", () => {
  const a = ringVm("locked");
  const b = ringVm("locked");
  kvm_set_running_vcpu(vmKvm(a), 0);
  try {
    assert.equal(kvm_get_running_vcpu(vmKvm(a)), 0);
    assert.equal(kvm_get_running_vcpu(vmKvm(b)), -1);
    // A host write to b (ring only, no bitmap) is dropped, not pushed to b's vCPU 0 ring.
    b.writeGuest(4 * PAGE_SIZE, new Uint8Array([1]));
    assert.equal(b.dirtyRingStats().dropped, 1);
    assert.deepEqual(b.harvestDirtyRing(0), []);
  } finally {
    kvm_set_running_vcpu(vmKvm(a), -1);
  }
  assert.equal(kvm_get_running_vcpu(vmKvm(a)), -1);
});

test("a worker vCPU exits on a soft-full ring, is counted, and resumes after a reset", async () => {
  const vm = Vm.create({ memory: 16 << 20, wp: "lockless", maxVcpus: 1, maxSlotPages: 2048 });
  vm.enableDirtyRing(256);
  const pages = 2048;
  vm.setUserMemoryRegion({
    slot: 1,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: pages * PAGE_SIZE,
    userspaceAddr: vm.mmap(pages * PAGE_SIZE, { thp: false }),
  });
  vm.createVcpu(0);
  const ctl = new Int32Array(new SharedArrayBuffer(dlgCtlWords(1) * 4));
  Atomics.store(ctl, DLG.iteration, 1);
  Atomics.store(ctl, DLG.stop, 0);
  const first = vm.waitDirtyRingFull({ since: 0, timeoutMs: 20_000 });
  await vm.run(() => ({ kind: "dirty_log", ctl: ctl.buffer, baseGfn: 0, pages, seed: 3 }));
  try {
    assert.ok((await first) >= 1, "a ring-full exit within 20 s");
    // Blocked: the store counter stands still.
    const w0 = Atomics.load(ctl, DLG_VCPU.writes(0));
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(Atomics.load(ctl, DLG_VCPU.writes(0)), w0, "the vCPU does not run while soft-full");
    const got = vm.harvestDirtyRing(0);
    assert.ok(got.length >= 256 - 64 && got.length <= 256, `harvested ${got.length}`);
    assert.ok(got.every((e) => e.slot === 1 && e.offset < pages));
    const next = vm.waitDirtyRingFull({ timeoutMs: 20_000 });
    assert.equal(vm.resetDirtyRings(), got.length);
    assert.ok((await next) >= 2, "it ran again and filled the ring again");
    assert.ok(vm.dirtyRingStats(0).fullExits >= 2);
  } finally {
    await vm.stop(); // a vCPU blocked in a ring-full exit still stops
  }
  assert.equal(vm.error, null);
});

/**
 * Host access to guest memory (vm.writeGuest / vm.readGuest) and the dirty-bitmap helpers
 * (for_each_set_bit, copyDirtyPages).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  bitmap_weight,
  copyDirtyPages,
  dirtyPages,
  for_each_set_bit,
  KvmError,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  PAGE_SIZE,
  Vm,
} from "../../src/index.js";
import type { Errno } from "../../src/index.js";

const MiB = 1 << 20;
const S0 = 4 * MiB; // slot 0: 1 MiB, logged
const S1 = 5 * MiB; // slot 1: 1 MiB right after it, not logged
const S2 = 8 * MiB; // slot 2: read-only

function makeVm(): Vm {
  const vm = Vm.create({ memory: 8 * MiB, wp: "lockless" });
  const h0 = vm.mmap(MiB, { thp: false });
  const h1 = vm.mmap(MiB, { thp: false });
  const h2 = vm.mmap(MiB, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: S0,
    memorySize: MiB,
    userspaceAddr: h0,
  });
  vm.setUserMemoryRegion({ slot: 1, flags: 0, guestPhysAddr: S1, memorySize: MiB, userspaceAddr: h1 });
  vm.setUserMemoryRegion({
    slot: 2,
    flags: KVM_MEM_READONLY,
    guestPhysAddr: S2,
    memorySize: MiB,
    userspaceAddr: h2,
  });
  return vm;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 255;
  return b;
}

function expectCode(fn: () => unknown, code: Errno, arg: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KvmError, String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.message, new RegExp(`\\b${arg}\\b`), e.message);
    return true;
  });
}

test("writeGuest/readGuest: byte ranges across pages and slots; logged pages marked dirty", () => {
  const vm = makeVm();
  const data = pattern(3 * PAGE_SIZE + 100, 7);
  const gpa = S1 - PAGE_SIZE - 50; // last two pages of slot 0, into slot 1
  vm.writeGuest(gpa, data);
  assert.deepEqual(vm.readGuest(gpa, data.length), data);
  assert.deepEqual(vm.readGuest(gpa + 1, 5), data.subarray(1, 6));
  assert.equal(vm.readGuest(gpa, 0).length, 0);
  // Neighbours untouched.
  assert.deepEqual([...vm.readGuest(gpa - 4, 4)], [0, 0, 0, 0]);
  assert.deepEqual([...vm.readGuest(gpa + data.length, 4)], [0, 0, 0, 0]);
  // Slot 0's dirty log has exactly its two written pages (slot 1 is not logged).
  const bm = vm.getDirtyLog(0);
  assert.deepEqual(dirtyPages(bm), [254, 255]);
  assert.equal(bitmap_weight(vm.getDirtyLog(0)), 0, "harvested");
  // readGuestU64 (the existing 8-byte host read) agrees.
  const [lo] = vm.readGuestU64(S1);
  assert.equal(lo, new DataView(data.buffer).getInt32(S1 - gpa, true));
});

test("writeGuest/readGuest: EFAULT outside memslots or into a read-only slot, nothing written; EINVAL on bad arguments", () => {
  const vm = makeVm();
  const before = vm.readGuest(S1 + MiB - 8, 8);
  // Ends one byte past slot 1 (6 MiB is in no slot): nothing of it is written.
  expectCode(() => vm.writeGuest(S1 + MiB - 8, pattern(9, 1)), "EFAULT", "gpa");
  assert.deepEqual(vm.readGuest(S1 + MiB - 8, 8), before);
  assert.equal(bitmap_weight(vm.getDirtyLog(0)), 0);
  expectCode(() => vm.readGuest(0, 1), "EFAULT", "gpa");
  expectCode(() => vm.readGuest(S1 + MiB - 1, 2), "EFAULT", "gpa");
  expectCode(() => vm.writeGuest(S2, pattern(4, 1)), "EFAULT", "gpa");
  assert.deepEqual([...vm.readGuest(S2, 4)], [0, 0, 0, 0], "read-only slot: readable, unchanged");
  for (const bad of [-1, 1.5, NaN, "0" as unknown as number, 2 ** 60])
    expectCode(() => vm.readGuest(bad, 4), "EINVAL", "gpa");
  for (const bad of [-1, 0.5, Infinity]) expectCode(() => vm.readGuest(S0, bad), "EINVAL", "length");
  for (const bad of [null, [1, 2], new Uint16Array(2), "ab"])
    expectCode(() => vm.writeGuest(S0, bad as unknown as Uint8Array), "EINVAL", "bytes");
  expectCode(() => vm.writeGuest(-4, new Uint8Array(1)), "EINVAL", "gpa");
});

test("writeGuest/readGuest stay exact while the host thread migrates the pages under them", async () => {
  const vm = makeVm();
  await vm.startHostThread({ migrateRate: 200_000, invalidateRate: 0, seed: 3 });
  try {
    for (let round = 0; round < 300; round++) {
      const data = pattern(2 * PAGE_SIZE, round);
      const gpa = S0 + (round % 200) * PAGE_SIZE + (round % 13);
      vm.writeGuest(gpa, data);
      assert.deepEqual(vm.readGuest(gpa, data.length), data, `round ${round}`);
      if (round % 50 === 0) await new Promise((r) => setTimeout(r, 1));
    }
    await new Promise((r) => setTimeout(r, 20));
    assert.ok(vm.hostThreadCounters().migrations > 0, "pages did migrate meanwhile");
  } finally {
    await vm.stop();
  }
  vm.throwIfFailed();
});

test("for_each_set_bit / dirtyPages: every set bit once, in order", () => {
  const bm = new Uint32Array([0x80000001, 0, 0xffffffff, 0x10]);
  const seen: number[] = [];
  for_each_set_bit(bm, (n) => seen.push(n));
  const want = [0, 31, ...Array.from({ length: 32 }, (_, i) => 64 + i), 100];
  assert.deepEqual(seen, want);
  assert.deepEqual(dirtyPages(bm), want);
  assert.equal(bitmap_weight(bm), want.length);
});

test("copyDirtyPages: the dirty pages of a slot into another VM or a buffer; refused whole on bad input", () => {
  const src = makeVm();
  const dst = makeVm();
  vm0Write(src, 3, 1);
  vm0Write(src, 200, 2);
  vm0Write(src, 255, 3);
  const bm = src.getDirtyLog(0);
  assert.equal(copyDirtyPages(src, 0, bm, dst), 3);
  for (const p of [3, 200, 255])
    assert.deepEqual(
      dst.readGuest(S0 + p * PAGE_SIZE, PAGE_SIZE),
      src.readGuest(S0 + p * PAGE_SIZE, PAGE_SIZE),
    );
  assert.deepEqual(
    dirtyPages(dst.getDirtyLog(0)),
    [3, 200, 255],
    "the destination's logged slot saw the writes",
  );
  const buf = new Uint8Array(MiB);
  assert.equal(copyDirtyPages(src, 0, bm, buf), 3);
  assert.deepEqual(
    buf.subarray(200 * PAGE_SIZE, 201 * PAGE_SIZE),
    src.readGuest(S0 + 200 * PAGE_SIZE, PAGE_SIZE),
  );
  assert.equal(buf[4 * PAGE_SIZE], 0, "a clean page is not copied");
  expectCode(() => copyDirtyPages(src, 9, bm, dst), "ENOENT", "slot");
  expectCode(() => copyDirtyPages(src, 0, new Uint32Array(2), dst), "EINVAL", "bitmap");
  expectCode(() => copyDirtyPages(src, 0, bm, new Uint8Array(100)), "EINVAL", "dst");
  expectCode(() => copyDirtyPages(src, 0, bm, src), "EINVAL", "dst");
  // A destination whose slot 0 is missing: EFAULT, nothing copied.
  const other = Vm.create({ memory: 4 * MiB, wp: "locked" });
  expectCode(() => copyDirtyPages(src, 0, bm, other), "EFAULT", "gpa");
});

function vm0Write(vm: Vm, page: number, seed: number): void {
  vm.writeGuest(S0 + page * PAGE_SIZE, pattern(PAGE_SIZE, seed));
}

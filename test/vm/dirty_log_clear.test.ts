/**
 * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and KVM_CLEAR_DIRTY_LOG: the checks in KVM's order, GET
 * without clearing, CLEAR clearing and re-protecting only what it cleared, INITIALLY_SET. A vCPU
 * runs on this thread (no worker), so a re-protection shows as a new dirty bit on the next write.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm, WpName } from "../../src/vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../../src/kvm_host.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { KvmError, Errno } from "../../src/errors.js";
import { dirtyPages } from "../../src/dirty_bitmap.js";
import { vmKvm } from "../../src/vm/internal.js";

const NPAGES = 200; // not a multiple of 64: the last CLEAR range ends the slot

function expectErr(fn: () => unknown, code: Errno, arg: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof KvmError, String(e));
    assert.equal(e.code, code, e.message);
    assert.match(e.message, arg);
    return true;
  });
}

function makeVm(
  wp: WpName,
  opts: { manual?: number; logged?: boolean } = {},
): { vm: Vm; v: Vcpu; hva: number } {
  const vm = Vm.create({ memory: 4 << 20, wp, maxVcpus: 2, maxSlotPages: 512 });
  if (opts.manual !== undefined) vm.enableManualDirtyLogProtect(opts.manual);
  const hva = vm.mmap(NPAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: opts.logged === false ? 0 : KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: NPAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  return { vm, v: new Vcpu(vmKvm(vm), 0), hva };
}

function write(v: Vcpu, gfn: number, x: number): void {
  v.enterGuest();
  v.write64(gfn, 0, x, 0);
  v.exitGuest();
}

function bits(pages: number[], words = Math.ceil(NPAGES / 32)): Uint32Array {
  const bm = new Uint32Array(words);
  for (const p of pages) bm[p >>> 5] |= 1 << (p & 31);
  return bm;
}

test("enableManualDirtyLogProtect accepts 0, 1, 3 and refuses the rest", () => {
  const vm = Vm.create({ memory: 1 << 20, wp: "locked" });
  expectErr(() => vm.enableManualDirtyLogProtect(2), "EINVAL", /flags: INITIALLY_SET requires/);
  expectErr(() => vm.enableManualDirtyLogProtect(4), "EINVAL", /flags: unknown/);
  expectErr(() => vm.enableManualDirtyLogProtect(1.5), "EINVAL", /flags/);
  for (const f of [1, 3, 0]) vm.enableManualDirtyLogProtect(f);
});

for (const wp of ["locked", "lockless"] as const) {
  test(`${wp}: manual GET copies without clearing; CLEAR clears and re-protects what it cleared`, () => {
    const { vm, v } = makeVm(wp, { manual: 1 });
    write(v, 5, 1);
    write(v, 70, 1);
    assert.deepEqual(dirtyPages(vm.getDirtyLog(0)), [5, 70]);
    // GET did not clear and did not protect: a second write leaves the same bits.
    write(v, 5, 2);
    assert.deepEqual(dirtyPages(vm.getDirtyLog(0)), [5, 70]);
    // Pages 70 (dirty) and 80 (clean) asked, bit n = page 64 + n: only 70 is cleared.
    assert.equal(vm.clearDirtyLog(0, 64, 64, bits([70 - 64, 80 - 64], 2)), 1);
    assert.deepEqual(dirtyPages(vm.getDirtyLog(0)), [5]);
    // Page 70 was write-protected again: its next write is logged.
    write(v, 70, 3);
    assert.deepEqual(dirtyPages(vm.getDirtyLog(0)), [5, 70]);
    // Page 5 is still writable (never cleared): writing it changes nothing, and clearing it
    // then protects it.
    assert.equal(vm.clearDirtyLog(0, 0, 64, bits([5], 2)), 1);
    assert.equal(vm.clearDirtyLog(0, 0, 64, bits([5], 2)), 0, "nothing left to clear");
    write(v, 5, 4);
    assert.deepEqual(dirtyPages(vm.getDirtyLog(0)), [5, 70]);
    // The range that ends the slot may be unaligned; bits past the slot are ignored.
    write(v, NPAGES - 1, 1);
    const tail = new Uint32Array(2).fill(0xffffffff);
    assert.equal(vm.clearDirtyLog(0, 192, NPAGES - 192, tail), 1);
    assert.deepEqual(dirtyPages(vm.getDirtyLog(0)), [5, 70]);
    assert.ok(vm.clearDirtyLogTimes().dirtyPages >= 3);
  });

  test(`${wp}: INITIALLY_SET starts all ones (tail clear) and delays protection to CLEAR`, () => {
    const { vm, v, hva } = makeVm(wp, { manual: 3, logged: false });
    write(v, 9, 1); // writable before logging
    vm.setUserMemoryRegion({
      slot: 0,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: NPAGES * PAGE_SIZE,
      userspaceAddr: hva,
    });
    const all = vm.getDirtyLog(0);
    assert.equal(dirtyPages(all).length, NPAGES);
    assert.equal(all[all.length - 1] >>> (NPAGES % 32), 0, "no bit past the slot end");
    // Page 9 was not protected: writing it changes nothing until it is cleared.
    assert.equal(vm.clearDirtyLog(0, 0, 64, bits([9], 2)), 1);
    assert.equal(dirtyPages(vm.getDirtyLog(0)).length, NPAGES - 1);
    write(v, 9, 2);
    assert.equal(dirtyPages(vm.getDirtyLog(0)).length, NPAGES, "page 9 re-protected by CLEAR");
  });
}

test("clearDirtyLog checks in KVM's order and changes nothing on error", () => {
  const { vm, v, hva } = makeVm("locked", { manual: 1 });
  write(v, 3, 1);
  const bm = bits([3]);
  expectErr(() => vm.clearDirtyLog(32, 1, 1, bm), "EINVAL", /slot: must be 0..31/);
  expectErr(() => vm.clearDirtyLog(-1, 0, 64, bm), "EINVAL", /slot/);
  expectErr(() => vm.clearDirtyLog(5, 1, 64, bm), "EINVAL", /firstPage: must be a multiple of 64/);
  expectErr(() => vm.clearDirtyLog(5, 0, 64, bm), "ENOENT", /slot 5 does not exist/);
  expectErr(() => vm.clearDirtyLog(0, 256, 0, bm), "EINVAL", /firstPage: 256 is past the end/);
  expectErr(() => vm.clearDirtyLog(0, 128, 73, bm), "EINVAL", /numPages: must be 0..72/);
  expectErr(() => vm.clearDirtyLog(0, 0, 65, bm), "EINVAL", /numPages: must be a multiple of 64 unless/);
  expectErr(
    () => vm.clearDirtyLog(0, 0, 64, [1] as unknown as Uint32Array),
    "EINVAL",
    /bitmap: must be a Uint32Array/,
  );
  expectErr(() => vm.clearDirtyLog(0, 0, 128, new Uint32Array(2)), "EFAULT", /bitmap: needs 4 words/);
  assert.deepEqual(dirtyPages(vm.getDirtyLog(0)), [3], "the bitmap is unchanged");
  assert.equal(vm.clearDirtyLog(0, 0, 0, bm), 0, "an empty range is valid");
  // A slot that is not dirty-logged has no bitmap: ENOENT.
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: NPAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  expectErr(() => vm.clearDirtyLog(0, 0, 64, bm), "ENOENT", /not dirty-logged/);
});

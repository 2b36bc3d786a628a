/**
 * KernelVm's native dirty bitmaps, over a recording libc (no /dev/kvm needed): GET and CLEAR
 * each keep one buffer while the sizes hold, so a long run maps no more memory per call (it
 * mapped a new buffer per call and freed them only at close); a size change unmaps the old one;
 * a short `out` still ends at an unmapped page (KVM's copy faults: EFAULT); close unmaps all.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { openSync } from "node:fs";
import { KernelVm } from "../../src/kernel/kernel_vm.js";
import type { KvmDevice } from "../../src/kernel/kvm_dev.js";
import { KVM_CLEAR_DIRTY_LOG, KVM_GET_DIRTY_LOG } from "../../src/kernel/ioctl.js";
import type { Libc, NativePtr } from "../../src/kernel/libc.js";

const PAGE = 4096;

/** A libc whose mmap hands out ArrayBuffers at made-up addresses and counts what stays mapped. */
function recordingLibc(): { libc: Libc; live: Map<bigint, number>; ioctls: number[]; tails: bigint[] } {
  const live = new Map<bigint, number>();
  const ioctls: number[] = [];
  const tails: bigint[] = [];
  const bufs = new Map<NativePtr, { addr: bigint; buf: ArrayBuffer }>();
  let next = 0x7f0000000000n;
  const libc: Libc = {
    ioctlInt: () => 0,
    ioctlBuf: (_fd, req) => {
      ioctls.push(req);
      return 0;
    },
    mmap: (len) => {
      const p = {};
      bufs.set(p, { addr: next, buf: new ArrayBuffer(len) });
      live.set(next, len);
      next += BigInt(len + PAGE);
      return p;
    },
    munmap: (p) => {
      live.delete(bufs.get(p)!.addr);
      return 0;
    },
    munmapAt: (addr) => {
      tails.push(addr);
      return 0;
    },
    address: (p) => bufs.get(p)!.addr,
    view: (p) => bufs.get(p)!.buf,
    errno: () => 0,
  };
  return { libc, live, ioctls, tails };
}

function vmOver(libc: Libc): KernelVm {
  // A fake device: the VM fd is /dev/null's (close() closes it), every ioctl goes to `libc`.
  const dev = { libc, createVmFd: () => openSync("/dev/null", "r"), vcpuMmapSize: () => PAGE };
  return KernelVm.create(dev as unknown as KvmDevice);
}

test("KernelVm: GET and CLEAR reuse one native bitmap each over many calls; close unmaps everything", () => {
  const { libc, live, ioctls } = recordingLibc();
  const vm = vmOver(libc);
  const hva = vm.mmap(1 << 20);
  vm.setUserMemoryRegion({
    slot: 1,
    flags: 1,
    guestPhysAddr: 2 ** 32,
    memorySize: 1 << 20,
    userspaceAddr: hva,
  });
  const before = live.size;
  const bm = vm.getDirtyLog(1);
  assert.equal(bm.length, (1 << 20) / PAGE / 32, "one bit per page");
  const afterFirst = live.size;
  assert.equal(afterFirst, before + 1, "one buffer for GET");
  for (let i = 0; i < 200; i++) {
    vm.getDirtyLog(1, bm);
    vm.clearDirtyLog(1, 0, (1 << 20) / PAGE, bm);
  }
  assert.equal(live.size, afterFirst + 1, "and one for CLEAR, after 200 of each");
  assert.equal(ioctls.filter((r) => r === KVM_GET_DIRTY_LOG).length, 201);
  assert.equal(ioctls.filter((r) => r === KVM_CLEAR_DIRTY_LOG).length, 200);
  assert.ok(vm.lastIoctlNs >= 0);
  vm.close();
  assert.equal(live.size, 0, "close unmaps every mapping");
});

test("KernelVm: a GET of another size replaces its buffer; a short out still ends at an unmapped page", () => {
  const { libc, live, tails } = recordingLibc();
  const vm = vmOver(libc);
  const hva = vm.mmap(1 << 21);
  vm.setUserMemoryRegion({
    slot: 1,
    flags: 1,
    guestPhysAddr: 2 ** 32,
    memorySize: 1 << 21,
    userspaceAddr: hva,
  });
  const base = live.size;
  vm.getDirtyLog(1);
  vm.getDirtyLog(1, new Uint32Array(2));
  vm.getDirtyLog(1, new Uint32Array(2));
  assert.equal(live.size, base + 1, "the full-size buffer was unmapped when the size changed");
  // Each buffer made unmaps the page after it: a short one ends right at it.
  assert.equal(tails.length, 2);
  vm.close();
  assert.equal(live.size, 0);
});

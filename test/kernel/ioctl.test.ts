/**
 * The ioctl numbers the kernel backend computes from _IO/_IOR/_IOW/_IOWR and struct sizes,
 * against the values the macros give in Linux's include/uapi/linux/kvm.h on x86-64.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as io from "../../src/kernel/ioctl.js";

test("ioctl: the _IOC encoding (dir << 30 | size << 16 | type << 8 | nr)", () => {
  assert.equal(io._IO(0xae, 0x80), 0xae80);
  assert.equal(io._IOW(0xae, 0x42, 16), 0x4010ae42);
  assert.equal(io._IOR(0xae, 0x83, 312), 0x8138ae83);
  assert.equal(io._IOWR(0xae, 0xc0, 24), 0xc018aec0);
  assert.throws(() => io._IOC(1, 0xae, 0, 1 << 14), RangeError);
});

test("ioctl: every number the backend uses equals kvm.h's", () => {
  const expected: Record<string, number> = {
    KVM_GET_API_VERSION: 0xae00,
    KVM_CREATE_VM: 0xae01,
    KVM_CHECK_EXTENSION: 0xae03,
    KVM_GET_VCPU_MMAP_SIZE: 0xae04,
    KVM_GET_SUPPORTED_CPUID: 0xc008ae05,
    KVM_CREATE_VCPU: 0xae41,
    KVM_GET_DIRTY_LOG: 0x4010ae42,
    KVM_SET_USER_MEMORY_REGION: 0x4020ae46,
    KVM_ENABLE_CAP: 0x4068aea3,
    KVM_CLEAR_DIRTY_LOG: 0xc018aec0,
    KVM_RESET_DIRTY_RINGS: 0xaec7,
    KVM_GET_STATS_FD: 0xaece,
    KVM_RUN: 0xae80,
    KVM_GET_REGS: 0x8090ae81,
    KVM_SET_REGS: 0x4090ae82,
    KVM_GET_SREGS: 0x8138ae83,
    KVM_SET_SREGS: 0x4138ae84,
    KVM_SET_CPUID2: 0x4008ae90,
  };
  const got = io as unknown as Record<string, number>;
  for (const [name, v] of Object.entries(expected))
    assert.equal(got[name], v, `${name}: 0x${got[name].toString(16)}, kvm.h gives 0x${v.toString(16)}`);
});

test("ioctl: capability numbers, exit reasons and the ring's page offset are kvm.h's", () => {
  assert.equal(io.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, 168);
  assert.equal(io.KVM_CAP_DIRTY_LOG_RING, 192);
  assert.equal(io.KVM_CAP_BINARY_STATS_FD, 203);
  assert.equal(io.KVM_CAP_DIRTY_LOG_RING_ACQ_REL, 223);
  assert.equal(io.KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP, 225);
  assert.equal(io.KVM_EXIT_IO, 2);
  assert.equal(io.KVM_EXIT_SHUTDOWN, 8);
  assert.equal(io.KVM_EXIT_DIRTY_RING_FULL, 31);
  assert.equal(io.KVM_DIRTY_LOG_PAGE_OFFSET, 64);
  assert.equal(io.ERRNO_NAMES[22], "EINVAL");
  assert.equal(io.ERRNO_NAMES[19], "ENODEV");
});

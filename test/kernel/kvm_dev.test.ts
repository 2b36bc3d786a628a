/**
 * The backend's error paths, which run on any machine: a missing device (ENODEV), one that may
 * not be opened (EACCES, skipped as root), koffi missing (ENOSYS), and a real ioctl through
 * koffi on a file that is not /dev/kvm (ENOTTY from the kernel, read through __errno_location).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KvmError } from "../../src/errors.js";
import { KvmDevice, kvmDeviceProblem } from "../../src/kernel/kvm_dev.js";
import { KvmSyscallError, loadLibc } from "../../src/kernel/libc.js";

const dir = mkdtempSync(join(tmpdir(), "kvmmu-kdev-"));
process.on("exit", () => rmSync(dir, { recursive: true, force: true }));

test("kvm_dev: a missing device is ENODEV naming its path", async () => {
  const path = join(dir, "no-such-kvm");
  await assert.rejects(KvmDevice.open({ devicePath: path }), (e: unknown) => {
    assert.ok(e instanceof KvmError);
    assert.equal(e.code, "ENODEV");
    assert.match(e.message, /no-such-kvm/);
    return true;
  });
  assert.equal(kvmDeviceProblem(path)?.code, "ENODEV");
});

test("kvm_dev: a device without permission is EACCES", async (t) => {
  if (process.getuid?.() === 0) {
    t.skip("running as root: permissions do not stop root's open, so EACCES cannot be produced");
    console.log("# skipped EACCES: running as root bypasses file permissions");
    return;
  }
  const path = join(dir, "kvm-no-perm");
  writeFileSync(path, "");
  chmodSync(path, 0o000);
  await assert.rejects(KvmDevice.open({ devicePath: path }), { code: "EACCES" });
  assert.equal(kvmDeviceProblem(path)?.code, "EACCES");
});

test("kvm_dev: koffi missing is ENOSYS saying so, and the device fd is closed again", async () => {
  const path = join(dir, "fake-kvm");
  writeFileSync(path, "");
  const loadKoffi = (): Promise<unknown> => Promise.reject(new Error("Cannot find package 'koffi'"));
  await assert.rejects(KvmDevice.open({ devicePath: path, loadKoffi }), (e: unknown) => {
    assert.ok(e instanceof KvmError);
    assert.equal(e.code, "ENOSYS");
    assert.match(e.message, /koffi/);
    assert.match(e.message, /not installed/);
    return true;
  });
});

test("kvm_dev: an ioctl on a file that is not /dev/kvm fails with the kernel's errno (ENOTTY)", async (t) => {
  try {
    await loadLibc();
  } catch (e) {
    t.skip(`koffi does not load here: ${(e as Error).message}`);
    return;
  }
  const path = join(dir, "plain-file");
  writeFileSync(path, "");
  await assert.rejects(KvmDevice.open({ devicePath: path }), (e: unknown) => {
    assert.ok(e instanceof KvmSyscallError);
    assert.equal(e.errno, "ENOTTY");
    assert.equal(e.code, "EIO");
    assert.match(e.message, /KVM_GET_API_VERSION/);
    return true;
  });
});

test("kernel dirty-log-perf: without the device it is ENODEV before any thread starts", async () => {
  const { kernelDirtyLogPerf } = await import("../../src/kernel/dirty_log_perf.js");
  await assert.rejects(
    kernelDirtyLogPerf({
      devicePath: join(dir, "none"),
      vcpus: 1,
      bytesPerVcpu: 1 << 20,
      iterations: 1,
      log: "get",
    }),
    { code: "ENODEV" },
  );
});

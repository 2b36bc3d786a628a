/**
 * Refusals found by trying the API as an attacker would: each call below once threw a plain
 * TypeError, accepted a bad value, or answered with the wrong errno. Each now throws a KvmError
 * with the errno KVM gives and a message naming the argument, and leaves the VM usable.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Errno, KvmError } from "../../src/errors.js";
import { PAGE_SIZE } from "../../src/kvm_host.js";
import { Vm } from "../../src/vm.js";
import { runKvmmu } from "../helpers/cli.js";

function isKvmError(code: Errno, arg: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof KvmError, `not a KvmError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, arg);
    return true;
  };
}

test("Vm: null options, arrays for typed arrays, NaN and negative counts, non-integer seeds", async () => {
  const vm = Vm.create({ memory: 4 << 20, wp: "lockless" });
  try {
    assert.throws(() => vm.mmap(4096, null as unknown as { thp?: boolean }), isKvmError("EINVAL", /opts/));
    assert.throws(() => vm.mmap(4096, { thp: "yes" as unknown as boolean }), isKvmError("EINVAL", /thp/));
    const hva = vm.mmap(2 << 20);
    vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 2 << 20, userspaceAddr: hva });
    assert.throws(
      () => vm.readGuestPage(0, new Array(1024).fill(0) as unknown as Int32Array),
      isKvmError("EINVAL", /\bout\b/),
    );
    await assert.rejects(
      vm.startHostThread(null as unknown as { migrateRate: number; invalidateRate: number }),
      isKvmError("EINVAL", /options/),
    );
    for (const invalidatePages of [NaN, -1, 0, 1.5])
      await assert.rejects(
        vm.startHostThread({ migrateRate: 1, invalidateRate: 1, invalidatePages }),
        isKvmError("EINVAL", /invalidatePages/),
        String(invalidatePages),
      );
    await assert.rejects(
      vm.startHostThread({ migrateRate: 1, invalidateRate: 1, seed: "x" as unknown as number }),
      isKvmError("EINVAL", /seed/),
    );
    await assert.rejects(vm.waitDirtyRingFull({ timeoutMs: 0 }), isKvmError("EINVAL", /dirty ring/));
    // The VM still works after every refusal.
    assert.equal(vm.readGuestPage(0).length, PAGE_SIZE / 4);
  } finally {
    await vm.stop();
  }
});

test("enableDirtyRing: a power of two above the maximum is E2BIG (as KVM), not 'a power of two'", () => {
  const vm = Vm.create({ memory: 4 << 20, wp: "locked" });
  assert.throws(() => vm.enableDirtyRing(2 ** 53), isKvmError("E2BIG", /entries/));
  assert.throws(() => vm.enableDirtyRing(2 ** 17), isKvmError("E2BIG", /entries/));
  assert.throws(() => vm.enableDirtyRing(3 * 4096), isKvmError("EINVAL", /power of two/));
  assert.throws(() => vm.enableDirtyRing(2 ** 53 + 2), isKvmError("EINVAL", /power of two/));
  vm.enableDirtyRing(4096);
});

test("CLI: a list where one value is expected (--mode tdp,shadow) is EINVAL, not a quiet first pick", async () => {
  for (const argv of [
    ["dirty-log-perf", "--mode", "tdp,shadow", "-i", "1"],
    ["dirty-log-perf", "--lock", "sleep,spin", "-i", "1"],
    ["dirty-log-test", "--mode", "tdp,shadow", "-i", "1"],
    ["explore", "--scenario", "skip-flush", "--strategy", "pct,random"],
  ]) {
    const r = await runKvmmu(argv);
    assert.equal(r.code, 2, `${argv.join(" ")}: ${r.err}`);
    assert.match(r.err, /^kvmmu: EINVAL: --(mode|lock|strategy): takes one value/, argv.join(" "));
  }
});

/**
 * `--wp ...,kernel` where the machine has no /dev/kvm: dirty-log-perf and dirty-log-test refuse
 * at once with ENODEV naming the option and the device (exit 2, nothing on stdout), instead of
 * "not one of" the designs. Where /dev/kvm exists these checks skip, saying why; the library's
 * own check (requireKernelDesign) is tested on a device path that does not exist, everywhere.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { runKvmmu } from "../helpers/cli.js";
import { KvmError } from "../../src/errors.js";
import { KERNEL_DESIGN, requireKernelDesign } from "../../src/kernel/register.js";
import { isDesign } from "../../src/mmu/design.js";

const skip = existsSync("/dev/kvm") ? "/dev/kvm exists here: --wp kernel runs instead of failing" : false;
if (skip) console.log(`# skipped the ENODEV CLI checks: ${skip}`);

for (const args of [
  [
    "dirty-log-perf",
    "--wp",
    "locked,kernel",
    "-v",
    "1",
    "-b",
    "2M",
    "-i",
    "1",
    "--park",
    "--contention",
    "none",
  ],
  ["dirty-log-test", "--wp", "kernel", "--seconds", "1"],
])
  test(
    `kvmmu ${args.join(" ")} without /dev/kvm: ENODEV naming --wp kernel and the device, exit 2`,
    { skip },
    async () => {
      const r = await runKvmmu(args);
      assert.equal(r.code, 2, r.err);
      assert.equal(r.out, "");
      assert.match(r.err, /^kvmmu: ENODEV: --wp kernel: \/dev\/kvm: no KVM device here/);
    },
  );

test("requireKernelDesign: a list without kernel passes; with it, a missing device is ENODEV naming it", () => {
  const path = "/nonexistent/kvm";
  assert.doesNotThrow(() => requireKernelDesign("--wp", "locked,lockless", path));
  assert.throws(
    () => requireKernelDesign("--wp", "locked, kernel", path),
    (e: unknown) =>
      e instanceof KvmError &&
      e.code === "ENODEV" &&
      e.message ===
        `ENODEV: --wp kernel: ${path}: no KVM device here (ENOENT); the kernel backend cannot run`,
  );
  if (!skip) assert.equal(isDesign(KERNEL_DESIGN), false, "not registered where the device is missing");
});

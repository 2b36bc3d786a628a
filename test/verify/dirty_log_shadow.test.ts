/**
 * The dirty-log test harness (src/verify/dirty_log_test.ts) in shadow mode: the guests store
 * through their own page tables, every write fault takes the shadow MMU's locked path, guest
 * tables are write-protected. Both strategies, both oracles, with notifier churn: nothing lost.
 * Negative control: the lockless strategy without its flush loses dirty pages here too.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dirtyLogTest, DirtyLogTestOptions } from "../../src/verify/dirty_log_test.js";

const BASE: DirtyLogTestOptions = {
  iterations: 4,
  intervalMs: 10,
  vcpus: 2,
  bytesPerVcpu: 2 << 20,
  wp: ["locked", "lockless"],
  oracles: ["kvm", "qemu"],
  thp: true,
  migrateRate: 300,
  invalidateRate: 100,
  seed: 11,
  mode: "shadow",
};

test("dirty-log-test, shadow mode: no violation for either strategy", { timeout: 180_000 }, async () => {
  const r = await dirtyLogTest(BASE);
  assert.deepEqual(r.firstViolations, []);
  assert.equal(r.violations, 0);
  for (const wp of ["locked", "lockless"] as const)
    for (const o of ["kvm", "qemu"] as const) {
      const x = r.results[wp]?.[o];
      assert.ok(x && x.iterations === 4 && x.guestWrites > 0, `${wp}/${o} ran`);
      assert.ok(x.dirtyPages > 0, `${wp}/${o} saw dirty pages`);
    }
});

test("dirty-log-test, shadow mode: the skip-flush bug is caught", { timeout: 180_000 }, async () => {
  const r = await dirtyLogTest({
    ...BASE,
    wp: ["lockless"],
    oracles: ["qemu"],
    iterations: 6,
    bugs: ["skip-flush"],
  });
  assert.ok(r.violations > 0, "a lost dirty page is detected");
});

test("dirty-log-test: mode is validated", async () => {
  await assert.rejects(dirtyLogTest({ ...BASE, mode: "ept" as never }), /mode/);
});

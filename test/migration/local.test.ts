/**
 * migrateLocal() from the library, destination in this process: a small guest moved pre-copy
 * and post-copy, every page equal (page hashes) and the guest's invariant intact on arrival.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { migrateLocal } from "../../src/migration/local.js";
import { KvmError } from "../../src/errors.js";
import type { MigrationStatus } from "../../src/migration/state.js";

const SMALL = { memoryBytes: 1 << 20, vcpus: 1, warmupMs: 50, destination: "inline" } as const;

test("migrateLocal pre-copy: completed, 256 of 256 pages equal, invariant holds, states in order", async () => {
  const states: MigrationStatus[] = [];
  const { source, destination } = await migrateLocal({
    ...SMALL,
    wp: "locked",
    minRounds: 2,
    downtimeLimitMs: 1000,
    onStateChange: (to) => states.push(to),
  });
  assert.equal(source.status, "completed", JSON.stringify(source.error));
  assert.deepEqual(states, ["setup", "active", "device", "completed"]);
  assert.equal(source.mode, "precopy");
  assert.deepEqual([source.verify.pagesCompared, source.verify.mismatches], [256, 0]);
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  assert.ok(source.rounds.length >= 2);
  assert.deepEqual(
    [source.wp, source.guestMode, source.memoryBytes, source.vcpus],
    ["locked", "tdp", 1 << 20, 1],
  );
  assert.equal(destination?.status, "completed");
  assert.equal(destination?.guestInvariant, true);
});

test("migrateLocal post-copy: completed, every page equal, pages pulled after the switch", async () => {
  const states: MigrationStatus[] = [];
  const { source, destination } = await migrateLocal({
    ...SMALL,
    wp: "lockless",
    postcopy: true,
    onStateChange: (to) => states.push(to),
  });
  assert.equal(source.status, "completed", JSON.stringify(source.error));
  assert.deepEqual(states, ["setup", "active", "postcopy-active", "completed"]);
  assert.equal(source.mode, "postcopy");
  assert.deepEqual([source.verify.pagesCompared, source.verify.mismatches], [256, 0]);
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  const pc = source.postcopy!;
  assert.ok(pc.discardedPages > 0, "some pages were still owed at switch-over");
  assert.equal(pc.requestedPages + pc.backgroundPages, pc.discardedPages);
  assert.equal(destination?.status, "completed");
  assert.equal(destination?.postcopy?.discardedPages, pc.discardedPages);
});

test("migrateLocal refuses bad options before building anything (EINVAL naming the option)", async () => {
  const bad: [object, RegExp][] = [
    [{ wp: "nosuch" }, /EINVAL: --wp|EINVAL: wp/],
    [{ destination: "elsewhere" }, /EINVAL: destination/],
    [{ fault: "kill-destination", destination: "inline" }, /EINVAL: fault/],
    [{ memoryBytes: 1000 }, /EINVAL: memory/],
  ];
  for (const [o, re] of bad)
    await assert.rejects(migrateLocal(o), (e: unknown) => e instanceof KvmError && re.test(e.message));
});

test("migrateLocal, destination process: a migration longer than its exit timeout keeps its destination (the timeout runs from the end)", async () => {
  const exitTimeoutMs = 1000;
  // 2 MiB at 1 MiB/s with 2 rounds: well over a second of migration.
  const { source, destination } = await migrateLocal({
    memoryBytes: 2 << 20,
    vcpus: 1,
    warmupMs: 0,
    destination: "process",
    wp: "lockless",
    maxBandwidth: 1 << 20,
    minRounds: 2,
    downtimeLimitMs: 5000,
    exitTimeoutMs,
  });
  assert.equal(source.status, "completed", JSON.stringify(source.error));
  assert.ok(source.totalTimeMs > exitTimeoutMs, `the migration took ${source.totalTimeMs} ms`);
  assert.notEqual(destination, null, "the destination process was killed before its report");
  assert.equal(destination?.status, "completed");
  assert.equal(destination?.guestInvariant, true);
  await assert.rejects(
    migrateLocal({ ...SMALL, exitTimeoutMs: 0 }),
    (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /exitTimeoutMs/.test(e.message),
  );
});

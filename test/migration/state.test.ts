/** The migration state machine: QEMU's states, its transitions, and an illegal one refused. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  isLegalTransition,
  MIGRATION_STATUSES,
  MigrationState,
  MigrationStateError,
  MigrationStatus,
} from "../../src/migration/state.js";

test("pre-copy, post-copy and cancel paths: each state entered in order, the listener sees each", () => {
  const paths: MigrationStatus[][] = [
    ["setup", "active", "device", "completed"],
    ["setup", "active", "postcopy-active", "completed"],
    ["setup", "active", "cancelling", "cancelled"],
    ["setup", "active", "device", "failed"],
    // Post-copy recovery: paused on a dropped link, a failed handshake, then resumed twice.
    [
      "setup",
      "active",
      "postcopy-active",
      "postcopy-paused",
      "postcopy-recover",
      "postcopy-paused",
      "postcopy-recover",
      "postcopy-active",
      "postcopy-paused",
      "postcopy-recover",
      "postcopy-active",
      "completed",
    ],
    ["setup", "active", "postcopy-active", "postcopy-paused", "failed"],
  ];
  for (const path of paths) {
    const seen: string[] = [];
    const s = new MigrationState((to, from) => seen.push(`${from}->${to}`));
    for (const to of path) s.set(to);
    assert.deepEqual(s.history, ["none", ...path]);
    assert.equal(s.status, path[path.length - 1]);
    assert.ok(s.final);
    assert.equal(s.outcome(), path[path.length - 1]);
    assert.equal(seen.length, path.length);
    assert.equal(seen[0], "none->setup");
  }
});

test("an illegal transition throws MigrationStateError and leaves the state as it was", () => {
  const s = new MigrationState();
  s.set("setup");
  assert.throws(
    () => s.set("completed"),
    (e: unknown) => {
      assert.ok(e instanceof MigrationStateError);
      assert.equal(e.from, "setup");
      assert.equal(e.to, "completed");
      assert.match(e.message, /illegal migration state transition setup -> completed/);
      return true;
    },
  );
  assert.equal(s.status, "setup");
  s.set("active");
  s.set("device");
  // Switch-over cannot be undone: device goes on to completed or failed only.
  assert.throws(() => s.set("active"), MigrationStateError);
  assert.throws(() => s.set("cancelling"), MigrationStateError);
  s.set("completed");
  // A final state has no way out, not even to failed.
  assert.throws(() => s.set("failed"), MigrationStateError);
  assert.deepEqual(s.history, ["none", "setup", "active", "device", "completed"]);
});

test("the outcome is refused before a final state; every state but the final ones can fail", () => {
  const s = new MigrationState();
  assert.throws(() => s.outcome(), MigrationStateError);
  const finals = ["completed", "failed", "cancelled"];
  for (const from of MIGRATION_STATUSES)
    assert.equal(isLegalTransition(from, "failed"), !finals.includes(from), from);
  assert.equal(isLegalTransition("none", "active"), false);
  assert.equal(isLegalTransition("postcopy-active", "device"), false);
  // Only post-copy pauses, and a paused migration resumes only through the recover handshake.
  assert.equal(isLegalTransition("device", "postcopy-paused"), false);
  assert.equal(isLegalTransition("active", "postcopy-paused"), false);
  assert.equal(isLegalTransition("postcopy-paused", "postcopy-active"), false);
  assert.equal(isLegalTransition("postcopy-paused", "completed"), false);
});

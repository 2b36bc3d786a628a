/**
 * The owner's waits for a vCPU (start, park) fail when the vCPU stops making progress, not at a
 * fixed time: under CPU load a slow vCPU thread is waited for. The clock is the test's.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { ProgressDeadline, VCPU_WAIT_MAX_MS, VCPU_WAIT_MS } from "../../src/vm/state.js";

test("a wait whose progress goes on outlives the grace; standing still the grace long fails it", () => {
  const d = new ProgressDeadline(VCPU_WAIT_MS, VCPU_WAIT_MAX_MS, 0, 0);
  // Progress every 5 s for 100 s: ten graces, never expired.
  let p = 0;
  for (let t = 5_000; t <= 100_000; t += 5_000) assert.equal(d.expired(++p, t), false, `at ${t} ms`);
  // Then it stands still: still waited for the whole grace, expired just past it.
  assert.equal(d.expired(p, 100_000 + VCPU_WAIT_MS), false);
  assert.equal(d.expired(p, 100_001 + VCPU_WAIT_MS), true);
  assert.equal(d.why(100_001 + VCPU_WAIT_MS), `in ${VCPU_WAIT_MS} ms (no progress)`);
  // No progress from the start: the grace from the start, as the fixed wait was.
  const still = new ProgressDeadline(VCPU_WAIT_MS, VCPU_WAIT_MAX_MS, 7, 1_000);
  assert.equal(still.expired(7, 1_000 + VCPU_WAIT_MS), false);
  assert.equal(still.expired(7, 1_001 + VCPU_WAIT_MS), true);
});

test("a wait that progresses forever is bounded by maxMs", () => {
  const d = new ProgressDeadline(VCPU_WAIT_MS, VCPU_WAIT_MAX_MS, 0, 0);
  for (let t = 1_000; t <= VCPU_WAIT_MAX_MS; t += 1_000) assert.equal(d.expired(t, t), false, `at ${t} ms`);
  assert.equal(d.expired(VCPU_WAIT_MAX_MS + 1, VCPU_WAIT_MAX_MS + 1), true);
  assert.equal(d.why(VCPU_WAIT_MAX_MS + 1), `in ${VCPU_WAIT_MAX_MS} ms`);
  assert.ok(VCPU_WAIT_MAX_MS > VCPU_WAIT_MS);
});

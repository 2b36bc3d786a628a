/**
 * need_resched's choice point (sched_preempted_at) outside a controlled run; under the explorer
 * it is checked by test/verify/explore.test.ts (runs of steps against one step per hand-off,
 * and the TDP MMU's zap-yield bug, which only a yield exposes).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { sched_preempted_at } from "../../src/sync/sched.js";
import { schedHookInstalled } from "../../src/sync/atomic.js";

test("sched_preempted_at: outside a controlled run it is no scheduling point and says false", () => {
  const a = new Int32Array(new SharedArrayBuffer(8));
  a[1] = 7;
  assert.equal(schedHookInstalled(), false);
  assert.equal(sched_preempted_at(a, 1), false);
  assert.equal(a[1], 7);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { Rcu, RCU_MAX_READERS, RCU_WORDS } from "../../src/sync/rcu.js";
import { makeKvm } from "../helpers/kvm.js";

const BASE = 2;

/** An Rcu over fresh zeroed words, as allocKvmShared leaves them. */
function fresh(): Rcu {
  return new Rcu(new Int32Array(new SharedArrayBuffer((BASE + RCU_WORDS + 2) * 4)), BASE);
}

test("rcu: with no reader every grace period is over", () => {
  const rcu = fresh();
  for (let i = 0; i < 5; i++) assert.equal(rcu.gracePeriodOver(rcu.retireEpoch()), true);
});

test("rcu: retire epochs only grow", () => {
  const rcu = fresh();
  let prev = rcu.retireEpoch();
  for (let i = 0; i < 10; i++) {
    const e = rcu.retireEpoch();
    assert.ok(e > prev, `${e} > ${prev}`);
    prev = e;
  }
});

test("rcu: a reader inside its section before a retirement holds that grace period until it leaves", () => {
  const rcu = fresh();
  rcu.retireEpoch(); // the VM has been running for a while
  rcu.readLock(3);
  const e1 = rcu.retireEpoch();
  const e2 = rcu.retireEpoch();
  assert.equal(rcu.gracePeriodOver(e1), false);
  assert.equal(rcu.gracePeriodOver(e2), false, "later retirements wait for the older reader too");
  rcu.readUnlock(3);
  assert.equal(rcu.gracePeriodOver(e1), true);
  assert.equal(rcu.gracePeriodOver(e2), true);
});

test("rcu: a reader that entered after the retirement does not hold it", () => {
  const rcu = fresh();
  rcu.retireEpoch();
  const e = rcu.retireEpoch();
  rcu.readLock(0);
  assert.equal(rcu.gracePeriodOver(e), true, "the reader cannot have seen the retired object");
  const e2 = rcu.retireEpoch();
  assert.equal(rcu.gracePeriodOver(e2), false, "but it holds what is retired while it is inside");
  rcu.readUnlock(0);
  assert.equal(rcu.gracePeriodOver(e2), true);
});

test("rcu: every reader slot counts, independently", () => {
  const rcu = fresh();
  rcu.retireEpoch();
  for (let r = 0; r < RCU_MAX_READERS; r++) rcu.readLock(r);
  const e = rcu.retireEpoch();
  for (let r = 0; r < RCU_MAX_READERS; r++) {
    assert.equal(rcu.gracePeriodOver(e), false, `readers ${r}.. still inside`);
    rcu.readUnlock(r);
  }
  assert.equal(rcu.gracePeriodOver(e), true);
  // the words beside the Rcu's are untouched
  const w = rcu.words;
  assert.deepEqual([w[0], w[1], w[BASE + RCU_WORDS], w[BASE + RCU_WORDS + 1]], [0, 0, 0, 0]);
});

test("rcu: a reader that entered before the first retirement holds it (fresh VM)", () => {
  // The first get-dirty-log on a new VM may run its lockless walk while the first shadow pages
  // are zapped: the reader's epoch is the initial one, and it must not look quiescent.
  for (const rcu of [fresh(), makeKvm().rcu]) {
    rcu.readLock(0);
    const e = rcu.retireEpoch();
    assert.equal(rcu.gracePeriodOver(e), false, "a reader in its section is not quiescent");
    rcu.readUnlock(0);
    assert.equal(rcu.gracePeriodOver(e), true);
  }
});

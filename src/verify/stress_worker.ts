/**
 * An actor of a stress run (src/verify/stress.ts): attaches to every instance once, then per
 * batch goes through the instances in order, meeting the other actors at each instance's
 * barrier word before running its part of the test on it.
 */
import { workerData, parentPort } from "node:worker_threads";
import { waitChange } from "../sync/sched.js";
import {
  C_ABORT,
  C_ARRIVE,
  C_BARRIER_SLEEPS,
  C_BASE,
  C_COUNT,
  C_DONE,
  C_EPOCH,
  C_ERROR,
  C_READY,
  C_SLEEPERS,
  StressWorkerData,
} from "./stress.js";
import { STRESS_TESTS } from "./stress_tests.js";

class StressAbort extends Error {}

/** Spin turns after the barrier for this (iteration, actor): a hash, so timings vary. */
function jitterOf(iter: number, actor: number, max: number): number {
  if (max === 0) return 0;
  let h = Math.imul(iter ^ 0x5bd1e995, 0x9e3779b1) ^ Math.imul(actor + 1, 0x85ebca6b);
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  return (h >>> 0) % (max + 1);
}

const pad = new Int32Array(1);

/** Spin turns before a barrier waiter sleeps (a peer that lost its CPU must get it back). */
const BARRIER_SPIN = 20_000;

/**
 * The spin barrier: everyone arrives, then everyone goes. A waiter whose peer does not come
 * within BARRIER_SPIN turns (it was descheduled: more runnable threads than cores) sleeps, so
 * the peer can have the core; the last to arrive wakes sleepers (C_SLEEPERS says if any).
 */
function barrier(ctl: Int32Array, i: number, n: number): void {
  if (Atomics.add(ctl, i, 1) + 1 === n) {
    if (Atomics.load(ctl, C_SLEEPERS) !== 0) Atomics.notify(ctl, i);
    return;
  }
  let spins = 0;
  for (;;) {
    const v = Atomics.load(ctl, i);
    if (v >= n) return;
    if (++spins < BARRIER_SPIN) continue;
    if (Atomics.load(ctl, C_ABORT) !== 0) throw new StressAbort();
    if (spins === BARRIER_SPIN) Atomics.add(ctl, C_BARRIER_SLEEPS, 1);
    Atomics.add(ctl, C_SLEEPERS, 1);
    Atomics.wait(ctl, i, v, 5);
    Atomics.sub(ctl, C_SLEEPERS, 1);
  }
}

function main(d: StressWorkerData): void {
  const t = STRESS_TESTS[d.test];
  const ctl = new Int32Array(d.ctl);
  const states = d.instances.map((x) => t.attach(x, d.actor));
  const actor = t.actors[d.actor];
  const n = t.actors.length;
  Atomics.add(ctl, C_READY, 1);
  Atomics.notify(ctl, C_READY);
  let epoch = 0;
  for (;;) {
    waitChange(ctl, C_EPOCH, epoch);
    epoch = Atomics.load(ctl, C_EPOCH);
    if (epoch < 0 || Atomics.load(ctl, C_ABORT) !== 0) return;
    const count = Atomics.load(ctl, C_COUNT);
    const base = Atomics.load(ctl, C_BASE);
    for (let i = 0; i < count; i++) {
      const s = states[i];
      const iter = base + i;
      actor.prepare?.(s, iter);
      barrier(ctl, C_ARRIVE + i, n);
      for (let j = jitterOf(iter, d.actor, t.jitter); j > 0; j--) pad[0] = (pad[0] + j) | 0;
      actor.run(s, iter);
    }
    Atomics.add(ctl, C_DONE, 1);
    Atomics.notify(ctl, C_DONE);
  }
}

const data = workerData as StressWorkerData;
try {
  main(data);
} catch (e) {
  if (!(e instanceof StressAbort)) {
    parentPort?.postMessage({ error: e instanceof Error ? (e.stack ?? e.message) : String(e) });
    Atomics.store(new Int32Array(data.ctl), C_ERROR, data.actor + 1);
    Atomics.notify(new Int32Array(data.ctl), C_DONE);
  }
}

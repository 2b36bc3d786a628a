/**
 * Controlled scheduling, thread side. A thread of a controlled run installs this hook (see
 * src/sync/atomic.ts): at every shared-memory operation it announces the operation, then
 * sleeps until the controller (src/verify/explore.ts) grants it exactly one step. Only one
 * thread runs between two scheduling points, so a run is fully determined by the sequence of
 * thread choices: the schedule.
 *
 * The words (Int32Array over the explorer's control SAB) are declared below: SCHED, then one
 * SCHED_T row per thread.
 */
import { Op, setSchedHook } from "./atomic.js";
import { defineBlock, defineRows } from "../layout.js";

/** The run's control words, at the start of the explorer's control SAB. */
export const SCHED = defineBlock(
  "controlled schedule (explorer)",
  "explorer control SAB",
  {
    go: {
      by: "the controller writes it (atomic); threads wait on it",
      doc: "a new run starts when it changes",
    },
    abort: {
      by: "the controller writes it (atomic); threads read it",
      doc: "1: threads unwind at their next point",
    },
  },
  { words: 4 },
);

/** One row per controlled thread, after the control words. */
export const SCHED_T = defineRows(
  "controlled schedule: one thread",
  "explorer control SAB",
  {
    steps: {
      by: "the thread bumps it (atomic); the controller waits on it",
      doc: "bumped when the thread reaches a point or finishes",
    },
    grant: {
      by: "the controller bumps it (atomic); the thread waits on it",
      doc: "bumped to let the thread run to its next point",
    },
    state: {
      by: "the thread (atomic), or the controller between runs",
      doc: "TS_* (idle, at a point, done, ...)",
    },
    op: {
      by: "the thread (atomic), before it bumps steps",
      doc: "the operation the thread waits at (traces)",
    },
    arr: { by: "the thread (atomic), before it bumps steps", doc: "index of the array of that operation" },
    idx: { by: "the thread (atomic), before it bumps steps", doc: "index in the array of that operation" },
  },
  { stride: 8, base: 4 },
);
export const TS_IDLE = 0;
export const TS_AT_POINT = 1;
export const TS_DONE = 2;
export const TS_FAILED = 3;
export const TS_ABORTED = 4;
export const SCHED_MAX_THREADS = 8;
export const SCHED_WORDS = SCHED_T.row(SCHED_MAX_THREADS);

/** Thrown at a scheduling point when the controller aborts the run. */
export class SchedAbort extends Error {}

const SPIN_BEFORE_SLEEP = 2000;

/** Blocks until `w[i]` differs from `v`: spins a little (fast hand-offs), then sleeps. */
export function waitChange(w: Int32Array, i: number, v: number): void {
  for (let k = 0; k < SPIN_BEFORE_SLEEP; k++) if (Atomics.load(w, i) !== v) return;
  while (Atomics.load(w, i) === v) Atomics.wait(w, i, v, 1000);
}

/**
 * Installs the controlled hook for thread `tid`. `arrayIds` names the shared arrays for traces
 * (index in the list; -1 for others).
 */
export function installControlledHook(sc: Int32Array, tid: number, arrayIds: SharedArrayBuffer[]): void {
  setSchedHook((op: Op, arr: Int32Array, index: number) => {
    if (Atomics.load(sc, SCHED.abort) !== 0) throw new SchedAbort();
    Atomics.store(sc, SCHED_T.op(tid), op);
    Atomics.store(sc, SCHED_T.arr(tid), arrayIds.indexOf(arr.buffer as SharedArrayBuffer));
    Atomics.store(sc, SCHED_T.idx(tid), index);
    const g = Atomics.load(sc, SCHED_T.grant(tid));
    Atomics.store(sc, SCHED_T.state(tid), TS_AT_POINT);
    Atomics.add(sc, SCHED_T.steps(tid), 1);
    Atomics.notify(sc, SCHED_T.steps(tid));
    waitChange(sc, SCHED_T.grant(tid), g);
    if (Atomics.load(sc, SCHED.abort) !== 0) throw new SchedAbort();
  });
}

export function removeControlledHook(): void {
  setSchedHook(null);
}

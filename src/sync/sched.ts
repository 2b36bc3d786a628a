/**
 * Controlled scheduling, thread side. A thread of a controlled run installs this hook (see
 * src/sync/atomic.ts): at every shared-memory operation it announces the operation, then
 * sleeps until the controller (src/verify/explore.ts) grants it exactly one step. Only one
 * thread runs between two scheduling points, so a run is fully determined by the sequence of
 * thread choices: the schedule.
 *
 * Words (Int32Array over the control SAB), per thread t at SCHED_HDR + t * SCHED_STRIDE:
 *   T_STEPS  bumped by the thread when it reaches a point or finishes (the controller waits on it)
 *   T_GRANT  bumped by the controller to let the thread run to its next point
 *   T_STATE  0 idle, 1 at a point, 2 done, 3 failed, 4 aborted
 *   T_OP, T_ARR, T_IDX  the operation the thread waits at (for traces)
 * Global: [0] GO (a new run starts when it changes), [1] ABORT (threads unwind at their next point).
 */
import { Op, setSchedHook } from "./atomic.js";

export const SCHED_GO = 0;
export const SCHED_ABORT = 1;
export const SCHED_HDR = 4;
export const SCHED_STRIDE = 8;
export const T_STEPS = 0;
export const T_GRANT = 1;
export const T_STATE = 2;
export const T_OP = 3;
export const T_ARR = 4;
export const T_IDX = 5;
export const TS_IDLE = 0;
export const TS_AT_POINT = 1;
export const TS_DONE = 2;
export const TS_FAILED = 3;
export const TS_ABORTED = 4;
export const SCHED_MAX_THREADS = 8;
export const SCHED_WORDS = SCHED_HDR + SCHED_MAX_THREADS * SCHED_STRIDE;

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
  const b = SCHED_HDR + tid * SCHED_STRIDE;
  setSchedHook((op: Op, arr: Int32Array, index: number) => {
    if (Atomics.load(sc, SCHED_ABORT) !== 0) throw new SchedAbort();
    Atomics.store(sc, b + T_OP, op);
    Atomics.store(sc, b + T_ARR, arrayIds.indexOf(arr.buffer as SharedArrayBuffer));
    Atomics.store(sc, b + T_IDX, index);
    const g = Atomics.load(sc, b + T_GRANT);
    Atomics.store(sc, b + T_STATE, TS_AT_POINT);
    Atomics.add(sc, b + T_STEPS, 1);
    Atomics.notify(sc, b + T_STEPS);
    waitChange(sc, b + T_GRANT, g);
    if (Atomics.load(sc, SCHED_ABORT) !== 0) throw new SchedAbort();
  });
}

export function removeControlledHook(): void {
  setSchedHook(null);
}

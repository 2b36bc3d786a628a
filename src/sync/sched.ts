/**
 * Controlled scheduling, thread side. A thread of a controlled run installs this hook (see
 * src/sync/atomic.ts): at every shared-memory operation (a point) it records the operation,
 * then waits until it is granted steps. Only one thread runs between two hand-offs, so a run is
 * fully determined by the sequence of thread choices: the schedule.
 *
 * A grant is a *run*: the step at the point the thread waits at, plus `budget` further steps
 * the controller already knows it would grant this thread one by one (it simulated its
 * strategy over them). The thread takes those without a hand-off, but stops early at a spin
 * point, where the strategy's inputs change; the controller learns from `ran` how many it took.
 *
 * The controller plans a *chain* of runs (thread, budget) at a time: what the strategy would
 * choose if every run is taken whole. A thread that took its whole run and stands at a point
 * that is no spin point hands the next run of the chain straight to its thread (one futex wake
 * instead of two: no round trip through the controller); otherwise, or at the chain's end, it
 * hands back to the controller (SCHED.back), which learns from `chainPos` and `ran` how far the
 * chain got and re-plans from there on what the threads really show.
 *
 * The words (Int32Array over the explorer's control SAB) are declared below: SCHED, then one
 * SCHED_T row per thread.
 */
import { aload, Op, setSchedHook } from "./atomic.js";
import { defineBlock, defineRows } from "../layout.js";
import { KSTACK_WORDS } from "./kfunc.js";

/** Runs a chain holds at most. */
export const SCHED_CHAIN_MAX = 32;

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
    back: {
      by: "a thread bumps it (atomic) when it hands back; the controller waits on it",
      doc: "hand-backs to the controller (end of a chain, an early stop, first point, finished)",
    },
    chainPos: {
      by: "the controller before the chain's first grant; then the running thread (atomic)",
      doc: "the entry of `chain` that runs now",
    },
    chainLen: {
      by: "the controller (atomic), while every thread waits",
      doc: "entries in `chain` (0: every thread hands back)",
    },
    trace: {
      by: "the controller (atomic), before it changes go",
      doc: "1: the run's threads record their kernel function stacks (src/sync/kfunc.ts)",
    },
    chain: {
      words: 2 * SCHED_CHAIN_MAX,
      by: "the controller (atomic), while every thread waits; threads read it",
      doc: "per entry: thread, budget (SCHED_CHAIN_MAX entries)",
    },
  },
  { words: 128 },
);

/** Trace entries a thread keeps (op, array, index per point): more than the controller shows. */
export const SCHED_RING = 16;

/** One row per controlled thread, after the control words (a row is 256 bytes: no false sharing). */
export const SCHED_T = defineRows(
  "controlled schedule: one thread",
  "explorer control SAB",
  {
    run: {
      by: "the controller (atomic), before it changes go",
      doc: "the go value of the last run the thread takes part in",
    },
    steps: {
      by: "the thread bumps it (atomic); the controller reads it",
      doc: "bumped where a run of the thread ends (handed on or back), and when it finishes",
    },
    grant: {
      by: "the controller bumps it (atomic); the thread waits on it",
      doc: "bumped to let the thread run (1 + budget steps)",
    },
    budget: {
      by: "the controller (atomic), before it bumps grant",
      doc: "steps the thread may take after the granted one without a hand-off",
    },
    ran: {
      by: "the thread (atomic), before it bumps steps",
      doc: "steps the thread took in this run, in all",
    },
    state: {
      by: "the thread (atomic), or the controller between runs",
      doc: "TS_* (idle, at a point, done, ...)",
    },
    ring: {
      words: SCHED_RING * 3,
      by: "the thread (plain stores, published by its steps bump); the controller reads after",
      doc: "op, array index, element index of point `p` at entry p % SCHED_RING (traces, spins)",
    },
    kstack: {
      words: KSTACK_WORDS,
      by: "the thread (plain stores, published by its steps bump), in traced runs only; the controller reads after",
      doc: "depth, then the ids of the kernel functions the thread is in (src/sync/kfunc.ts)",
    },
  },
  { stride: 64, base: SCHED.WORDS },
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

const SPIN_MIN = 16;
const SPIN_MAX = 1 << 15;
/** This thread's spin budget for hand-offs (each isolate has its own). */
let spin = SPIN_MIN;

/**
 * waitChange for the controller's hand-offs, with a spin that adapts: it doubles when the other
 * side answered within it and halves when this thread had to sleep. With a core each, a
 * hand-off then takes well under a microsecond; on an oversubscribed machine (more threads than
 * cores), where a spinner burns the time slice the other side needs, it is a plain futex wait.
 */
export function handOffWait(w: Int32Array, i: number, v: number): void {
  for (let k = 0; k < spin; k++) {
    if (Atomics.load(w, i) !== v) {
      if (spin < SPIN_MAX) spin <<= 1;
      return;
    }
  }
  if (spin > SPIN_MIN) spin >>= 1;
  while (Atomics.load(w, i) === v) Atomics.wait(w, i, v, 1000);
}

/** Steps this thread took in the current run (points it passed with a grant). */
let ran = 0;

/** This thread's control words and id while it runs controlled (need_resched's choice point). */
let controlled: { sc: Int32Array; tid: number } | null = null;

/** Steps the other threads of the run have taken (each stores its count before it hands back). */
function othersRan(c: { sc: Int32Array; tid: number }): number {
  let n = 0;
  for (let t = 0; t < SCHED_MAX_THREADS; t++) if (t !== c.tid) n += Atomics.load(c.sc, SCHED_T.ran(t));
  return n;
}

/**
 * need_resched() as a choice of the schedule: a scheduling point (a load of a[i]) that returns
 * true when the controller ran another thread there before this one went on, i.e. the scheduler
 * preempted this thread at that point. The answer is a function of the schedule alone (a run of
 * steps never lets another thread in), so replays and runs of steps agree. False when the thread
 * is not controlled (real threads: need_resched is the caller's own knob).
 */
export function sched_preempted_at(a: Int32Array, i: number): boolean {
  const c = controlled;
  if (c === null) return false;
  const before = othersRan(c);
  aload(a, i);
  return othersRan(c) !== before;
}

/** Hands back to the controller. */
function handBack(sc: Int32Array): void {
  Atomics.add(sc, SCHED.back, 1);
  Atomics.notify(sc, SCHED.back, 1);
}

/**
 * Thread `tid` took its whole run of the chain: starts the chain's next run (its thread, its
 * budget). False when the chain ends here (or `tid` is not the entry that runs: a stale chain).
 */
function passOn(sc: Int32Array, tid: number): boolean {
  const pos = Atomics.load(sc, SCHED.chainPos);
  if (pos + 1 >= Atomics.load(sc, SCHED.chainLen) || Atomics.load(sc, SCHED.chain + 2 * pos) !== tid)
    return false;
  const u = Atomics.load(sc, SCHED.chain + 2 * pos + 2);
  Atomics.store(sc, SCHED.chainPos, pos + 1);
  Atomics.store(sc, SCHED_T.budget(u), Atomics.load(sc, SCHED.chain + 2 * pos + 3));
  Atomics.add(sc, SCHED_T.grant(u), 1);
  Atomics.notify(sc, SCHED_T.grant(u), 1);
  return true;
}

/**
 * What a traced run's thread records of its own steps (src/verify/explore_record.ts), so that a
 * traced run keeps its runs of steps: `point` when the thread reaches a point (its previous step
 * is over: nothing else ran since), `step` when it takes the step there (every other thread
 * stands still until its next point).
 */
export interface StepRecorder {
  point(): void;
  step(op: Op, arr: number, index: number): void;
}

/**
 * Installs the controlled hook for thread `tid`. `arrayIds` names the shared arrays for traces
 * (index in the list; -1 for others). `rec`: a traced run's recorder of this thread's steps.
 */
export function installControlledHook(
  sc: Int32Array,
  tid: number,
  arrayIds: SharedArrayBuffer[],
  rec: StepRecorder | null = null,
): void {
  ran = 0;
  controlled = { sc, tid };
  let budget = 0;
  const ring = SCHED_T.ring(tid);
  // The last array seen and its id: a run's points mostly hit the same few arrays.
  let lastArr: Int32Array | null = null;
  let lastId = -1;
  setSchedHook((op: Op, arr: Int32Array, index: number) => {
    if (rec !== null) rec.point();
    if (Atomics.load(sc, SCHED.abort) !== 0) throw new SchedAbort();
    if (arr !== lastArr) {
      lastArr = arr;
      lastId = arrayIds.indexOf(arr.buffer as SharedArrayBuffer);
    }
    const e = ring + (ran % SCHED_RING) * 3;
    sc[e] = op;
    sc[e + 1] = lastId;
    sc[e + 2] = index;
    // Within a run: the controller's simulation assumed this point is no spin point.
    if (budget > 0 && op !== Op.Spin) {
      budget--;
      ran++;
      if (rec !== null) rec.step(op, lastId, index);
      return;
    }
    Atomics.store(sc, SCHED_T.ran(tid), ran);
    const g = Atomics.load(sc, SCHED_T.grant(tid));
    Atomics.store(sc, SCHED_T.state(tid), TS_AT_POINT);
    Atomics.add(sc, SCHED_T.steps(tid), 1);
    // The whole run taken, and no spin point here: what the chain was planned on.
    if (budget !== 0 || op === Op.Spin || !passOn(sc, tid)) handBack(sc);
    handOffWait(sc, SCHED_T.grant(tid), g);
    if (Atomics.load(sc, SCHED.abort) !== 0) throw new SchedAbort();
    budget = Atomics.load(sc, SCHED_T.budget(tid));
    ran++;
    if (rec !== null) rec.step(op, lastId, index);
  });
}

/** Removes the hook and hands back for the last time with `state` (TS_DONE, ...). */
export function finishControlled(sc: Int32Array, tid: number, state: number): void {
  setSchedHook(null);
  controlled = null;
  Atomics.store(sc, SCHED_T.ran(tid), ran);
  Atomics.store(sc, SCHED_T.state(tid), state);
  Atomics.add(sc, SCHED_T.steps(tid), 1);
  handBack(sc);
}

export function removeControlledHook(): void {
  setSchedHook(null);
  controlled = null;
}

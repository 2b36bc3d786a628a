/**
 * What a stress test declares (src/verify/stress_tests.ts and the stress_*.ts files it gathers)
 * and the harness (stress.ts) runs: its actors, its shared state and the outcome spec, plus the
 * small helpers the tests share. Its own file so that the tests and the harness both depend on
 * it and not on each other.
 */
import { allocKvmShared, BUG, BugName, KvmShared } from "../kvm_host.js";

export type OutcomeKind = "ACCEPTABLE" | "ACCEPTABLE_INTERESTING" | "FORBIDDEN";

export interface OutcomeSpec {
  id: string;
  kind: OutcomeKind;
  description: string;
}

export interface ActorSpec<S> {
  name: string;
  /** Thread-private preparation for the iteration, before the barrier (e.g. entering guest mode). */
  prepare?(s: S, iter: number): void;
  run(s: S, iter: number): void;
}

/**
 * S: one instance as a thread sees it; D: the structured-clonable descriptor of one instance
 * (SharedArrayBuffers and plain data) that every thread attaches to.
 */
export interface StressTest<S, D> {
  name: string;
  description: string;
  /**
   * A negative control: the test wires a known-wrong variant on purpose, and FORBIDDEN outcomes
   * are what it may show. The text says what it demonstrates. Runners report, never fail, on it.
   */
  control?: string;
  /** Left out of listings (the harness's self-tests). */
  hidden?: boolean;
  /** Instances per batch. */
  stride: number;
  /** Spin turns after the barrier: up to this many, varied per iteration and actor (0: none). */
  jitter: number;
  defaultIterations: number;
  actors: ActorSpec<S>[];
  /** Allocates one instance (main thread, once per instance). */
  alloc(): D;
  /** A thread's view of an instance: `thread` is the actor index, -1 on the main thread. */
  attach(d: D, thread: number): S;
  /** Resets an instance for iteration `iter` (main thread, actors idle). */
  reset(s: S, iter: number): void;
  /** Reads the final state (main thread, actors idle) and names the outcome. */
  arbiter(s: S, iter: number): string;
  outcomes: OutcomeSpec[];
}

/** A StressTest with its types erased, for the registry. */
export type AnyStressTest = StressTest<unknown, unknown>;

/** Erases a test's types for the registry (its methods are checked against S and D here). */
export function define<S, D>(t: StressTest<S, D>): AnyStressTest {
  return t;
}

/** A Kvm with just enough of everything for tests that need no guest memory. */
export function tinyKvmShared(bugs: number, maxDesc: number): KvmShared {
  return allocKvmShared({
    hostFrames: 1,
    maxSlotPages: 1,
    maxSp: 1,
    maxDesc,
    maxVcpus: 1,
    wp: "lockless",
    bugs,
  });
}

export function bugMask(bugs: BugName[]): number {
  return bugs.reduce((m, b) => m | BUG[b], 0);
}

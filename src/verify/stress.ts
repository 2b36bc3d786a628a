/**
 * A jcstress-style stress harness on real worker threads (after OpenJDK's jcstress).
 *
 * A stress test (src/verify/stress_tests.ts) names its actors, how to allocate and reset the
 * shared state of one instance, what each actor does, an arbiter that turns the final state into
 * an outcome string, and the outcome spec: each outcome ACCEPTABLE, ACCEPTABLE_INTERESTING or
 * FORBIDDEN, with a description. Outcomes not in the spec count as FORBIDDEN (as in jcstress).
 *
 * Each actor runs on its own persistent worker. The main thread allocates `stride` instances
 * once and reuses them: per batch it resets every instance (an iteration each), starts the
 * batch, sleeps until the actors are done, then runs the arbiter on every instance. Inside a
 * batch the actors go through the instances in order, and meet at a spin barrier (one shared
 * word per instance) before each one, so all actors start an iteration together; after the
 * barrier an actor may spin a few turns (`jitter`, varied per iteration and actor) so that
 * different relative timings get exercised. The main thread stays off the CPU while a batch
 * runs (a 2-core machine has room for two spinning actors only).
 */
import { Worker } from "node:worker_threads";
import { workerFlags } from "../sync/worker_flags.js";
import { einval, KvmError } from "../errors.js";
import { STRESS_TESTS } from "./stress_tests.js";
import type { AnyStressTest, OutcomeKind, OutcomeSpec } from "./stress_spec.js";
import { waitAsyncAlive } from "../sync/atomic.js";

// ---- the control words shared by the main thread and the actors ----
/** Batch number; the actors start a batch when it changes; -1: exit. */
export const C_EPOCH = 0;
/** Iterations in this batch (instances 0 .. COUNT-1). */
export const C_COUNT = 1;
/** Global index of the batch's first iteration. */
export const C_BASE = 2;
/** Actors done with the batch. */
export const C_DONE = 3;
/** Actors attached and waiting for the first batch. */
export const C_READY = 4;
/** 1 + index of an actor that threw. */
export const C_ERROR = 5;
/** Set by the main thread: actors stop at the next barrier. */
export const C_ABORT = 6;
/** Actors sleeping at a barrier (see the worker's barrier()). */
export const C_SLEEPERS = 7;
/** Barrier waits that ended in a sleep: the peer was off its CPU (see StressResult.barrierSleeps). */
export const C_BARRIER_SLEEPS = 8;
/** Barrier words, one per instance, on their own cache lines away from the words above. */
export const C_ARRIVE = 16;

export function controlWords(stride: number): number {
  return C_ARRIVE + stride;
}

export interface StressWorkerData {
  test: string;
  actor: number;
  ctl: SharedArrayBuffer;
  instances: unknown[];
}

export interface StressOptions {
  iterations?: number;
  /** Overrides the test's stride (instances per batch). */
  stride?: number;
  /**
   * Stop after the batch in which this much time has passed (the result then has fewer
   * iterations): keeps runs bounded when other processes compete for the cores.
   */
  timeLimitMs?: number;
  /** A batch that takes longer than this is a hang (a broken lock, a flush nobody acknowledges). */
  batchTimeoutMs?: number;
}

export interface OutcomeRow extends OutcomeSpec {
  count: number;
  /** False for an outcome the spec does not list (counted as FORBIDDEN). */
  listed: boolean;
}

export interface StressResult {
  test: string;
  description: string;
  control: string | null;
  actors: string[];
  /** Iterations run (fewer than asked when the time limit ended the run). */
  iterations: number;
  stride: number;
  /** Time of the batches (worker start-up excluded). */
  elapsedMs: number;
  iterationsPerSec: number;
  rows: OutcomeRow[];
  forbidden: number;
  interesting: number;
  /**
   * Iteration starts at which an actor waited so long at the barrier that it went to sleep:
   * its peer was off the CPU (more runnable threads than cores). Such iterations run their
   * actors one after the other rather than together, so a high share means a weak run.
   */
  barrierSleeps: number;
}

/** The tests a listing or `kvmmu stress` without --test runs: all but the hidden self-tests. */
export function stressTestNames(): string[] {
  return Object.keys(STRESS_TESTS).filter((n) => STRESS_TESTS[n].hidden !== true);
}

function getTest(name: string): AnyStressTest {
  if (!Object.hasOwn(STRESS_TESTS, name))
    throw einval("test", `"${name}" is not one of ${stressTestNames().join(", ")}`);
  return STRESS_TESTS[name];
}

const MAX_ITERATIONS = 1e9;

/** The checked options of one run. */
interface StressPlan {
  iterations: number;
  stride: number;
  batchTimeoutMs: number;
  timeLimitMs: number;
}

function stressPlan(t: AnyStressTest, o: StressOptions): StressPlan {
  const iterations = o.iterations ?? t.defaultIterations;
  if (!Number.isSafeInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS)
    throw einval("iterations", `must be 1..${MAX_ITERATIONS}, got ${String(iterations)}`);
  const stride = Math.min(o.stride ?? t.stride, iterations);
  if (!Number.isSafeInteger(stride) || stride < 1 || stride > 4096)
    throw einval("stride", `must be 1..4096, got ${String(stride)}`);
  const batchTimeoutMs = o.batchTimeoutMs ?? 30_000;
  const timeLimitMs = o.timeLimitMs ?? Infinity;
  if (!(timeLimitMs > 0)) throw einval("timeLimitMs", `must be > 0, got ${String(o.timeLimitMs)}`);
  return { iterations, stride, batchTimeoutMs, timeLimitMs };
}

/** The main thread's side of a run: the control words, the actors' workers and their errors. */
interface StressRun {
  name: string;
  t: AnyStressTest;
  plan: StressPlan;
  ctl: Int32Array<SharedArrayBuffer>;
  errors: string[];
  /** Aborts the actors and throws EIO with `why` and the actors' errors. */
  failed(why: string): Promise<never>;
}

/** One persistent worker per actor; a worker's error marks the run failed and wakes the main thread. */
function startActors(r: StressRun, instances: unknown[]): Worker[] {
  const { t, ctl, errors } = r;
  return t.actors.map((_, k) => {
    const data: StressWorkerData = { test: r.name, actor: k, ctl: ctl.buffer, instances };
    const w = new Worker(new URL("./stress_worker.js", import.meta.url), {
      workerData: data,
      ...workerFlags(),
    });
    w.on("message", (m: { error?: string }) => {
      if (m.error !== undefined) errors.push(`actor ${t.actors[k].name}: ${m.error}`);
    });
    w.on("error", (e) => {
      errors.push(`actor ${t.actors[k].name}: ${e.stack ?? e.message}`);
      Atomics.store(ctl, C_ERROR, k + 1);
      Atomics.notify(ctl, C_DONE);
    });
    return w;
  });
}

/** Workers load and attach asynchronously: waits for all of them without blocking the event loop. */
async function waitActorsReady(r: StressRun): Promise<void> {
  const nActors = r.t.actors.length;
  const t0 = Date.now();
  for (;;) {
    const ready = Atomics.load(r.ctl, C_READY);
    if (ready === nActors) break;
    if (Atomics.load(r.ctl, C_ERROR) !== 0 || r.errors.length) await r.failed("an actor failed to start");
    if (Date.now() - t0 > r.plan.batchTimeoutMs) await r.failed(`only ${ready} of ${nActors} actors started`);
    await waitAsyncAlive(r.ctl, C_READY, ready, 20);
  }
}

/** Starts the batch of iterations base..base+n-1 and blocks until every actor is done with it. */
async function runBatch(r: StressRun, states: unknown[], base: number, n: number): Promise<void> {
  const { t, ctl } = r;
  const nActors = t.actors.length;
  for (let i = 0; i < n; i++) {
    t.reset(states[i], base + i);
    ctl[C_ARRIVE + i] = 0;
  }
  Atomics.store(ctl, C_COUNT, n);
  Atomics.store(ctl, C_BASE, base);
  Atomics.store(ctl, C_DONE, 0);
  Atomics.add(ctl, C_EPOCH, 1); // seq-cst: publishes the resets above
  Atomics.notify(ctl, C_EPOCH);
  const b0 = performance.now();
  for (;;) {
    const done = Atomics.load(ctl, C_DONE);
    if (done === nActors) break;
    if (Atomics.load(ctl, C_ERROR) !== 0)
      await r.failed(`an actor threw in iterations ${base}..${base + n - 1}`);
    if (performance.now() - b0 > r.plan.batchTimeoutMs)
      await r.failed(
        `iterations ${base}..${base + n - 1} did not finish in ${r.plan.batchTimeoutMs} ms (a hang: ${done} of ${nActors} actors done)`,
      );
    // The main thread may block: nothing else runs on it while a batch does.
    Atomics.wait(ctl, C_DONE, done, 50);
  }
}

/** Every batch, each followed by the arbiter on its instances, until done or out of time. */
async function runBatches(
  r: StressRun,
  states: unknown[],
  counts: Map<string, number>,
): Promise<{ ran: number; elapsedMs: number }> {
  const { iterations, stride, timeLimitMs } = r.plan;
  let ran = 0;
  const start = performance.now();
  let lastYield = start;
  for (let base = 0; base < iterations; base += stride) {
    const n = Math.min(stride, iterations - base);
    await runBatch(r, states, base, n);
    for (let i = 0; i < n; i++) {
      const id = r.t.arbiter(states[i], base + i);
      counts.set(id, (counts.get(id) ?? 0) + 1);
    }
    ran += n;
    // Now and then give the event loop a turn (worker error events, test-runner timers).
    const now = performance.now();
    if (now - start > timeLimitMs) break;
    if (now - lastYield > 200) {
      await new Promise((r) => setImmediate(r));
      lastYield = performance.now();
    }
  }
  return { ran, elapsedMs: performance.now() - start };
}

/** Tells the actors to exit and terminates their workers. */
async function stopActors(ctl: Int32Array, workers: Worker[]): Promise<void> {
  Atomics.store(ctl, C_ABORT, 1);
  Atomics.store(ctl, C_EPOCH, -1);
  Atomics.notify(ctl, C_EPOCH);
  await Promise.all(
    workers.map((w) =>
      w.terminate().then(
        () => undefined,
        () => undefined,
      ),
    ),
  );
}

/** The spec's outcomes with their counts, then any unlisted outcome seen (counted as FORBIDDEN). */
function outcomeRows(t: AnyStressTest, counts: Map<string, number>): OutcomeRow[] {
  const rows: OutcomeRow[] = t.outcomes.map((s) => ({ ...s, count: counts.get(s.id) ?? 0, listed: true }));
  for (const [id, count] of counts) {
    if (t.outcomes.some((s) => s.id === id)) continue;
    rows.push({
      id,
      count,
      kind: "FORBIDDEN",
      description: "not in the outcome spec (unexpected outcomes count as forbidden)",
      listed: false,
    });
  }
  return rows;
}

export async function runStress(name: string, o: StressOptions = {}): Promise<StressResult> {
  const t = getTest(name);
  const plan = stressPlan(t, o);
  const instances = Array.from({ length: plan.stride }, () => t.alloc());
  const states = instances.map((d) => t.attach(d, -1));
  const ctl = new Int32Array(new SharedArrayBuffer(controlWords(plan.stride) * 4));
  const errors: string[] = [];
  const r: StressRun = {
    name,
    t,
    plan,
    ctl,
    errors,
    failed: async (why: string): Promise<never> => {
      Atomics.store(ctl, C_ABORT, 1);
      // Let the workers' error messages arrive before they are terminated.
      await new Promise((r) => setTimeout(r, 50));
      throw new KvmError("EIO", `stress ${name}: ${why}${errors.length ? `\n${errors.join("\n")}` : ""}`);
    },
  };
  const workers = startActors(r, instances);
  const counts = new Map<string, number>();
  let elapsedMs = 0;
  let ran = 0;
  let barrierSleeps = 0;
  try {
    await waitActorsReady(r);
    ({ ran, elapsedMs } = await runBatches(r, states, counts));
    barrierSleeps = Atomics.load(ctl, C_BARRIER_SLEEPS);
  } finally {
    await stopActors(ctl, workers);
  }
  const rows = outcomeRows(t, counts);
  const sum = (k: OutcomeKind): number => rows.filter((r) => r.kind === k).reduce((a, r) => a + r.count, 0);
  return {
    test: name,
    description: t.description,
    control: t.control ?? null,
    actors: t.actors.map((a) => a.name),
    iterations: ran,
    stride: plan.stride,
    elapsedMs,
    iterationsPerSec: elapsedMs > 0 ? (ran * 1000) / elapsedMs : 0,
    rows,
    forbidden: sum("FORBIDDEN"),
    interesting: sum("ACCEPTABLE_INTERESTING"),
    barrierSleeps,
  };
}

/** One count of an outcome, by id (0 when never observed). */
export function outcomeCount(r: StressResult, id: string): number {
  return r.rows.find((x) => x.id === id)?.count ?? 0;
}

/** The verdict line's tag: jcstress's OK / FAILED, and what a negative control showed. */
export function verdict(r: StressResult): string {
  if (r.control !== null) return r.forbidden > 0 ? "CONTROL: FORBIDDEN SEEN" : "CONTROL: NOT SEEN";
  return r.forbidden > 0 ? "FAILED" : "OK";
}

/** A jcstress-like table: observed state, occurrences, expectation, interpretation. */
export function formatStressResult(r: StressResult): string {
  const rate =
    r.iterationsPerSec >= 1000 ? `${(r.iterationsPerSec / 1000).toFixed(1)}k` : r.iterationsPerSec.toFixed(0);
  const out = [
    `[${verdict(r)}] ${r.test}`,
    `  ${r.description}`,
    ...(r.control !== null ? [`  negative control: ${r.control}`] : []),
    `  actors: ${r.actors.join(", ")}; ${r.iterations} iterations in ${(r.elapsedMs / 1000).toFixed(2)} s (${rate}/s, stride ${r.stride}); ${r.barrierSleeps} barrier sleeps`,
    "",
  ];
  const w0 = Math.max(14, ...r.rows.map((x) => x.id.length));
  const w1 = Math.max(11, ...r.rows.map((x) => String(x.count).length));
  const w2 = 22;
  out.push(
    `  ${"Observed state".padEnd(w0)}  ${"Occurrences".padStart(w1)}  ${"Expectation".padEnd(w2)}  Interpretation`,
  );
  for (const x of r.rows)
    out.push(`  ${x.id.padEnd(w0)}  ${String(x.count).padStart(w1)}  ${x.kind.padEnd(w2)}  ${x.description}`);
  return out.join("\n");
}

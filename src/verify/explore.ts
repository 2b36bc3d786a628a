/**
 * Systematic exploration of thread interleavings of the production code (src/sync/sched.ts):
 * at every shared-memory operation a strategy chooses the one thread that runs next; the
 * scenario's threads run to the end, then the scenario's invariants are checked. A thread is
 * granted a whole run of the steps the strategy would give it one by one (see runOnce), and the
 * scenario's VM is restored between schedules rather than created (docs/bugs.md).
 *
 * Strategies: `random` (seeded random walk), `pct` (probabilistic concurrency testing: random
 * thread priorities, d-1 priority change points), `dfs` (bounded exhaustive search over
 * schedules with at most `preemptions` preemptions). A thread waiting at a spin point yields to
 * threads that can make progress. A failing run yields a schedule string that `replay` re-runs.
 */
import { MessageChannel, MessagePort, receiveMessageOnPort, Worker } from "node:worker_threads";
import { Op } from "../sync/atomic.js";
import {
  SCHED,
  SCHED_MAX_THREADS,
  SCHED_RING,
  SCHED_T,
  SCHED_WORDS,
  TS_AT_POINT,
  TS_FAILED,
  TS_IDLE,
  handOffWait,
  waitChange,
} from "../sync/sched.js";
import { MmuModeName, Vm } from "../vm.js";
import { BugName, CTL, PAGE_SIZE } from "../kvm_host.js";
import { Scenario, SCENARIOS } from "./scenarios.js";
import { ParkMiller } from "../workload/rng.js";
import { audit } from "./audit.js";
import { einval, KvmError } from "../errors.js";
import { vmKvm, vmShared } from "../vm/internal.js";

export type Strategy = "random" | "pct" | "dfs";

const OP_NAMES = ["load", "store", "xchg", "cas", "or", "and", "add", "guest-read", "guest-write", "spin"];
const ARR_NAMES = ["spt", "rmap", "desc", "bitmap", "vcpu", "ctl", "mem", "hpt", "spHdr", "ring"];

export interface TraceEntry {
  step: number;
  thread: string;
  op: string;
}

export interface Violation {
  schedule: string;
  invariant: string;
  trace: Record<string, TraceEntry[]>;
  steps: number;
}

export interface ExploreResult {
  scenario: string;
  mode: MmuModeName;
  bug: BugName | null;
  strategy: Strategy;
  seed: number;
  schedules: number;
  violations: number;
  firstViolation: Violation | null;
  steps: number;
  /** Hand-offs between the controller and the threads; each passes a run of steps. */
  handOffs: number;
  /**
   * Explored steps per second of exploring: elapsedMs less startMs. The start of the worker
   * threads is a cost per process, not per step (a later exploration reuses them).
   */
  stepsPerSec: number;
  elapsedMs: number;
  /** Of elapsedMs, the time spent waiting for new worker threads to start. */
  startMs: number;
}

interface Chooser {
  /** Picks one of `runnable` (thread ids) at step `step`; `spinning[t]` is true at a spin point. */
  choose(step: number, runnable: number[], spinning: boolean[]): number;
  /** The chooser's state, to rewind simulated choices that did not happen. */
  save(): unknown;
  restore(state: unknown): void;
}

/** One run's outcome. */
interface RunOutcome {
  choices: number[];
  violation: string | null;
  trace: Record<string, TraceEntry[]>;
  aborted: boolean;
}

const TRACE_KEEP = 12;
/** Bytes of guest memory compared (and if changed, restored) at a time between runs. */
const MEM_CHUNK = 64 << 10;
const SPIN_WINDOW = 64;
/**
 * The longest run granted in one hand-off. A run is usually cut short by a spin point or the
 * thread's end, and each simulated step the thread does not take is wasted controller work.
 */
const MAX_RUN = 256;

export function encodeSchedule(
  scenario: string,
  bug: boolean,
  choices: number[],
  mode: MmuModeName = "tdp",
): string {
  const parts: string[] = [];
  for (let i = 0; i < choices.length;) {
    let j = i;
    while (j < choices.length && choices[j] === choices[i]) j++;
    parts.push(j - i === 1 ? `${choices[i]}` : `${choices[i]}*${j - i}`);
    i = j;
  }
  return `${scenario}@${bug ? "bug" : "fixed"}${mode === "shadow" ? "/shadow" : ""}:${parts.join(",")}`;
}

/** The longest schedule decodeSchedule accepts (a run is bounded by its step limit anyway). */
export const MAX_SCHEDULE_STEPS = 1_000_000;

/**
 * Parses and checks a whole schedule string before anything runs: a known scenario, thread ids
 * the scenario has, repeat counts >= 1, at most MAX_SCHEDULE_STEPS steps in all (counted before
 * anything is expanded). Each refusal is EINVAL naming SCHEDULE and the bad part.
 */
export function decodeSchedule(s: string): {
  scenario: string;
  bug: boolean;
  choices: number[];
  mode: MmuModeName;
} {
  if (typeof s !== "string") throw einval("SCHEDULE", `must be a string, got ${String(s)}`);
  const m = /^([a-z0-9-]+)@(bug|fixed)(?:\/(shadow))?:([0-9*,]*)$/.exec(s.trim());
  if (!m) throw einval("SCHEDULE", `"${s.slice(0, 60)}" is not a schedule (scenario@bug|fixed:t*n,...)`);
  const scenario = m[1];
  if (!Object.hasOwn(SCENARIOS, scenario)) throw einval("SCHEDULE", `unknown scenario "${scenario}"`);
  const threads = SCENARIOS[scenario].threads.length;
  const items: [number, number][] = [];
  let total = 0;
  for (const p of m[4].split(",").filter((x) => x !== "")) {
    const parts = p.split("*");
    const [t, n] = parts;
    const tid = /^\d{1,3}$/.test(t) ? Number(t) : NaN;
    const count = n === undefined ? 1 : /^\d{1,7}$/.test(n) ? Number(n) : NaN;
    if (parts.length > 2 || !Number.isInteger(tid) || !Number.isInteger(count) || count < 1)
      throw einval("SCHEDULE", `bad item "${p.slice(0, 40)}" (thread*count, count 1..9999999)`);
    if (tid >= threads)
      throw einval("SCHEDULE", `item "${p}": scenario ${scenario} has threads 0..${threads - 1}, not ${tid}`);
    total += count;
    if (total > MAX_SCHEDULE_STEPS)
      throw einval("SCHEDULE", `item "${p}": more than ${MAX_SCHEDULE_STEPS} steps in all`);
    items.push([tid, count]);
  }
  const choices: number[] = [];
  for (const [tid, count] of items) for (let k = 0; k < count; k++) choices.push(tid);
  return { scenario, bug: m[2] === "bug", choices, mode: m[3] === "shadow" ? "shadow" : "tdp" };
}

/**
 * A control SAB and its worker threads (thread t of a run is worker t). Starting a worker costs
 * hundreds of milliseconds on a loaded machine (an isolate and the whole MMU's modules), so one
 * crew is kept, idle, between explorations of the same process; its workers are unref'd and end
 * with the process.
 */
interface Crew {
  sc: Int32Array;
  workers: Worker[];
  ports: MessagePort[];
  /** The last value written to SCHED.go. */
  go: number;
  /** Workers 0..booted-1 have stood at a first point once (they are started). */
  booted: number;
  /** Per worker, the scratch buffer of the VM it was sent last (it names that VM). */
  attached: (SharedArrayBuffer | null)[];
}

let idleCrew: Crew | null = null;

/** The idle crew, or a new one, with at least `n` workers. */
function takeCrew(n: number): Crew {
  const c: Crew = idleCrew ?? {
    sc: new Int32Array(new SharedArrayBuffer(SCHED_WORDS * 4)),
    workers: [],
    ports: [],
    go: 0,
    booted: 0,
    attached: [],
  };
  idleCrew = null;
  while (c.workers.length < n) {
    const ch = new MessageChannel();
    const w = new Worker(new URL("./explore_worker.js", import.meta.url), {
      workerData: { sc: c.sc.buffer, tid: c.workers.length, port: ch.port2 },
      transferList: [ch.port2],
    });
    w.unref();
    ch.port1.unref();
    c.workers.push(w);
    c.ports.push(ch.port1);
    c.attached.push(null);
  }
  return c;
}

async function endCrew(c: Crew): Promise<void> {
  const exits = c.workers.map((w) => new Promise((r) => w.once("exit", r)));
  Atomics.store(c.sc, SCHED.go, -1);
  Atomics.notify(c.sc, SCHED.go);
  await Promise.all(exits);
  for (const p of c.ports) p.close();
}

/** Every SharedArrayBuffer reachable from `x` through arrays and plain objects, in order. */
function sharedBuffers(x: unknown, out: SharedArrayBuffer[] = []): SharedArrayBuffer[] {
  if (x instanceof SharedArrayBuffer) out.push(x);
  else if (Array.isArray(x)) for (const v of x) sharedBuffers(v, out);
  else if (typeof x === "object" && x !== null && !ArrayBuffer.isView(x))
    for (const v of Object.values(x)) sharedBuffers(v, out);
  return out;
}

export class Explorer {
  private readonly sc: Int32Array;
  private readonly crew: Crew;
  private readonly ports: MessagePort[];
  /** False from the start of a run until all its threads have finished. */
  private idle = true;
  private template: {
    vm: Vm;
    scratch: SharedArrayBuffer;
    /** Every shared buffer but guest memory, with its contents after setup. */
    bufs: [Uint8Array, Uint8Array][];
    mem: Buffer;
    memCopy: Buffer;
    frameHigh: number;
  } | null = null;
  totalSteps = 0;
  /** Hand-offs between the controller and a thread (a run of steps each). */
  handOffs = 0;
  /** Time spent waiting for new worker threads to start (isolates, modules). */
  startMs = 0;

  constructor(
    readonly scenario: Scenario,
    readonly bug: boolean,
    readonly maxSteps = 20000,
    readonly auditEveryStep = false,
    readonly mode: MmuModeName = "tdp",
    /**
     * One hand-off per step and a new VM for every run: the plain protocol, which the runs of
     * steps and the restored VM must match step for step (tests compare the two).
     */
    readonly stepwise = false,
  ) {
    if (scenario.threads.length > SCHED_MAX_THREADS) throw einval("scenario", "too many threads");
    this.crew = takeCrew(scenario.threads.length);
    this.sc = this.crew.sc;
    this.ports = this.crew.ports;
  }

  /** Gives the threads back for the next exploration (or ends them if one is kept already). */
  async close(): Promise<void> {
    if (this.idle && idleCrew === null) idleCrew = this.crew;
    else await endCrew(this.crew);
  }

  /**
   * Runs the scenario once under `chooser`. After each choice the controller simulates the
   * chooser over the following steps, assuming only the chosen thread moves and reaches no spin
   * point (so nothing the chooser reads changes but that thread's own step count), and grants
   * that thread the whole run of steps it keeps being chosen for in one hand-off. A thread that
   * stops early (a spin point, or finished) hands back; the chooser is rewound to the first step
   * it did not take, and that step is chosen again on what the threads really show. The
   * schedule is the same, step for step, as with a hand-off at every step.
   */
  runOnce(chooser: Chooser): RunOutcome {
    const sc = this.sc;
    const s = this.scenario;
    const n = s.threads.length;
    const { vm, scratch } = this.freshVm();
    this.idle = false;
    Atomics.store(sc, SCHED.abort, 0);
    for (let t = 0; t < n; t++) {
      Atomics.store(sc, SCHED_T.steps(t), 0);
      Atomics.store(sc, SCHED_T.grant(t), 0);
      Atomics.store(sc, SCHED_T.budget(t), 0);
      Atomics.store(sc, SCHED_T.ran(t), 0);
      Atomics.store(sc, SCHED_T.state(t), TS_IDLE);
      Atomics.store(sc, SCHED_T.run(t), this.crew.go + 1);
      // A worker keeps the VM it was sent last: send it only when it is another one.
      if (this.crew.attached[t] !== scratch) {
        this.ports[t].postMessage({ shared: vmShared(vm), scenario: s.name, scratch });
        this.crew.attached[t] = scratch;
      }
    }
    Atomics.store(sc, SCHED.go, ++this.crew.go);
    Atomics.notify(sc, SCHED.go);
    const w0 = performance.now();
    const booting = this.crew.booted < n;
    for (let t = 0; t < n; t++) handOffWait(sc, SCHED_T.steps(t), 0);
    if (booting) {
      this.startMs += performance.now() - w0;
      this.crew.booted = Math.max(this.crew.booted, n);
    }
    const choices: number[] = [];
    // Per thread, the last TRACE_KEEP steps it took: [step, op, array, index] each.
    const raw: number[][][] = Array.from({ length: n }, () => []);
    let aborted = false;
    const runnable: number[] = [];
    const spinning: boolean[] = new Array<boolean>(n).fill(false);
    // A thread that passed a spin point within its last SPIN_WINDOW steps is in a wait or retry
    // loop: it yields to threads that can make progress (else PCT starves their wakers).
    const own: number[] = new Array<number>(n).fill(0);
    const lastSpin: number[] = new Array<number>(n).fill(-SPIN_WINDOW);
    // The chooser's state before each simulated step of a run (index: steps into the run).
    const saved: unknown[] = [];
    const batch = !this.auditEveryStep && !this.stepwise;
    let auditViolation: string | null = null;
    let notRunnable: string | null = null;
    for (let step = 0; ;) {
      runnable.length = 0;
      for (let t = 0; t < n; t++) {
        if (Atomics.load(sc, SCHED_T.state(t)) === TS_AT_POINT) {
          runnable.push(t);
          if (sc[this.ringEntry(t, own[t])] === (Op.Spin as number)) lastSpin[t] = own[t]!;
          spinning[t] = own[t] - lastSpin[t] < SPIN_WINDOW;
        }
      }
      if (this.auditEveryStep && s.auditable && auditViolation === null && !vmKvm(vm).mmu_lock.isLocked()) {
        const bad = audit(vmKvm(vm), 3, { structural: true });
        if (bad.length) auditViolation = `audit after step ${step}: ${bad.join("; ")}`;
      }
      if (runnable.length === 0) break;
      const t =
        step < this.maxSteps && auditViolation === null ? chooser.choose(step, runnable, spinning) : -1;
      // A replayed schedule may name a thread that cannot run here: unwind, then refuse it.
      if (t >= 0 && !runnable.includes(t))
        notRunnable ??= `SCHEDULE: thread ${t} (step ${step}) is not runnable; runnable: ${runnable.join(", ")}`;
      // Past the step bound, or the structure broke (the trace then ends at that step): unwind.
      if (step >= this.maxSteps || auditViolation !== null || notRunnable !== null) {
        aborted = auditViolation === null;
        Atomics.store(sc, SCHED.abort, 1);
        for (const t of runnable) this.grant(t, 0);
        // Threads unwind through scheduling points that now throw; wait for all to finish.
        for (let t = 0; t < n; t++) {
          while (
            Atomics.load(sc, SCHED_T.state(t)) === TS_AT_POINT ||
            Atomics.load(sc, SCHED_T.state(t)) === TS_IDLE
          ) {
            const v = Atomics.load(sc, SCHED_T.steps(t));
            this.grant(t, 0);
            waitChange(sc, SCHED_T.steps(t), v);
          }
        }
        break;
      }
      // Simulate: how many more steps would t be chosen for if it moved alone, without spinning?
      let k = 1;
      if (batch) {
        const was = spinning[t];
        for (; k < MAX_RUN && step + k < this.maxSteps; k++) {
          spinning[t] = own[t] + k - lastSpin[t] < SPIN_WINDOW;
          saved[k] = chooser.save();
          if (chooser.choose(step + k, runnable, spinning) !== t) {
            chooser.restore(saved[k]);
            break;
          }
        }
        spinning[t] = was;
      }
      const ran0 = own[t];
      const v = Atomics.load(sc, SCHED_T.steps(t));
      this.grant(t, k - 1);
      this.handOffs++;
      handOffWait(sc, SCHED_T.steps(t), v);
      const r = Atomics.load(sc, SCHED_T.ran(t)) - ran0;
      if (r < 1 || r > k) throw new Error(`explore: thread ${t} took ${r} steps of a run of ${k}`);
      // It stopped early: the chooser's simulated steps from there on did not happen.
      if (r < k) chooser.restore(saved[r]);
      const tr = raw[t];
      for (let j = Math.max(0, r - TRACE_KEEP); j < r; j++) {
        const e = this.ringEntry(t, ran0 + j);
        tr.push([step + j, sc[e], sc[e + 1], sc[e + 2]]);
      }
      if (tr.length > TRACE_KEEP) tr.splice(0, tr.length - TRACE_KEEP);
      for (let j = 0; j < r; j++) choices.push(t);
      own[t] += r;
      step += r;
    }
    this.idle = true;
    this.totalSteps += choices.length;
    if (notRunnable !== null) throw new KvmError("EINVAL", notRunnable);
    const trace: Record<string, TraceEntry[]> = {};
    for (let t = 0; t < n; t++) {
      const thread = s.threads[t].name;
      trace[thread] = raw[t].map(([step, op, arr, idx]) => ({
        step,
        thread,
        op: `${OP_NAMES[op] ?? "?"} ${ARR_NAMES[arr] ?? "?"}[${idx}]`,
      }));
    }
    let violation: string | null = null;
    const failures: string[] = [];
    for (let t = 0; t < n; t++) {
      if (Atomics.load(sc, SCHED_T.state(t)) === TS_FAILED) {
        const m = receiveMessageOnPort(this.ports[t])?.message as { error?: string } | undefined;
        failures.push(`thread ${s.threads[t].name} failed: ${m?.error ?? "?"}`);
      }
    }
    if (auditViolation !== null) violation = auditViolation;
    else if (failures.length) violation = failures.join("; ");
    else if (!aborted) violation = s.check(vm, new Int32Array(scratch));
    return { choices, violation, trace, aborted };
  }

  /**
   * The scenario's VM as its setup leaves it. Creating and setting up a VM costs milliseconds
   * (most of it zeroing and first-touching guest memory), far more than a run's steps, so the
   * first run's VM is kept with a copy of its shared memory, and later runs get it back by
   * restoring that copy: the VM is then word for word what a new one would be (setup is
   * deterministic, and runs and checks change only shared memory, not the controller's own Vm
   * and Kvm objects; tests compare against `stepwise`, which creates a VM for every run).
   */
  private freshVm(): { vm: Vm; scratch: SharedArrayBuffer } {
    const s = this.scenario;
    if (this.template === null || this.stepwise) {
      const vm = Vm.create(s.vmOptions(this.bug ? [s.bug] : [], this.mode));
      const scratch = new SharedArrayBuffer(s.scratchWords * 4);
      s.setup(vm, new Int32Array(scratch));
      if (this.stepwise) return { vm, scratch };
      const bufs = [scratch, ...sharedBuffers(vmShared(vm))];
      this.template = {
        vm,
        scratch,
        bufs: bufs
          .filter((b) => b !== vmShared(vm).mem)
          .map((b) => [new Uint8Array(b), new Uint8Array(b).slice()]),
        mem: Buffer.from(vmShared(vm).mem),
        memCopy: Buffer.from(vmShared(vm).mem.slice(0)),
        frameHigh: vmKvm(vm).ctl[CTL.frame_high],
      };
      return { vm, scratch };
    }
    const tp = this.template;
    // Guest memory is large and mostly untouched: restore only the chunks a run changed. No
    // frame at or above frame_high was ever handed out, so nothing can have written there.
    const used = Math.max(tp.frameHigh, vmKvm(tp.vm).ctl[CTL.frame_high]) * PAGE_SIZE;
    const end = Math.min(used, tp.mem.length);
    for (let a = 0; a < end; a += MEM_CHUNK) {
      const b = Math.min(a + MEM_CHUNK, end);
      if (tp.mem.compare(tp.memCopy, a, b, a, b) !== 0) tp.mem.set(tp.memCopy.subarray(a, b), a);
    }
    for (const [live, copy] of tp.bufs) live.set(copy);
    return { vm: tp.vm, scratch: tp.scratch };
  }

  /** Index in the control words of thread `t`'s trace entry for its point `p`. */
  private ringEntry(t: number, p: number): number {
    return SCHED_T.ring(t) + (p % SCHED_RING) * 3;
  }

  /** Lets `t` take the step it waits at and then up to `budget` more without a hand-off. */
  private grant(t: number, budget: number): void {
    Atomics.store(this.sc, SCHED_T.budget(t), budget);
    Atomics.add(this.sc, SCHED_T.grant(t), 1);
    Atomics.notify(this.sc, SCHED_T.grant(t));
  }
}

/** Prefers threads not spinning: a spinner waits for someone else to move. */
function progressing(runnable: number[], spinning: boolean[]): number[] {
  const p = runnable.filter((t) => !spinning[t]);
  return p.length ? p : runnable;
}

class RandomChooser implements Chooser {
  constructor(private readonly rng: ParkMiller) {}
  choose(_step: number, runnable: number[], spinning: boolean[]): number {
    const c = this.rng.next() % 16 === 0 ? runnable : progressing(runnable, spinning);
    return c[this.rng.next() % c.length];
  }
  save(): unknown {
    return this.rng.state;
  }
  restore(state: unknown): void {
    this.rng.state = state as number;
  }
}

export class PctChooser implements Chooser {
  private readonly prio: number[];
  private readonly changes: Map<number, number>;
  /** [thread, priority before] of each change point applied, to rewind them. */
  private readonly undo: [number, number][] = [];
  constructor(rng: ParkMiller, threads: number, depth: number, estSteps: number) {
    // Priorities depth..depth+n-1 in random order; change point i lowers to i (below all initial).
    const p = Array.from({ length: threads }, (_, i) => depth + i);
    for (let i = p.length - 1; i > 0; i--) {
      const j = rng.next() % (i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    this.prio = p;
    this.changes = new Map();
    for (let i = 1; i < depth; i++) this.changes.set(rng.next() % Math.max(1, estSteps), i);
  }
  choose(step: number, runnable: number[], spinning: boolean[]): number {
    const c = progressing(runnable, spinning);
    // Everyone waits: rotate, so a lock holder that spun recently is not starved by priority.
    if (c.every((t) => spinning[t])) return c[step % c.length];
    let best = c[0];
    for (const t of c) if (this.prio[t] > this.prio[best]) best = t;
    const ch = this.changes.get(step);
    if (ch !== undefined) {
      this.undo.push([best, this.prio[best]]);
      this.prio[best] = ch;
    }
    return best;
  }
  /** Only change points alter the priorities: the state is how many of them were applied. */
  save(): unknown {
    return this.undo.length;
  }
  restore(state: unknown): void {
    while (this.undo.length > (state as number)) {
      const [t, p] = this.undo.pop()!;
      this.prio[t] = p;
    }
  }
}

class ReplayChooser implements Chooser {
  constructor(private readonly choices: number[]) {}
  choose(step: number, runnable: number[]): number {
    if (step >= this.choices.length) return runnable[0];
    return this.choices[step];
  }
  save(): unknown {
    return null;
  }
  restore(): void {}
}

/** Depth-first enumeration with a preemption bound; one instance drives a whole search. */
class DfsChooser implements Chooser {
  stack: { options: number[]; idx: number; preemptions: number }[] = [];
  private last = -1;
  constructor(private readonly bound: number) {}
  begin(): void {
    this.last = -1;
  }
  save(): unknown {
    return this.stack.length * 16 + this.last + 1;
  }
  restore(state: unknown): void {
    const v = state as number;
    this.stack.length = v >> 4;
    this.last = (v & 15) - 1;
  }
  choose(step: number, runnable: number[], spinning: boolean[]): number {
    if (step < this.stack.length) {
      const f = this.stack[step];
      const t = f.options[f.idx];
      this.last = t;
      return t;
    }
    const c = progressing(runnable, spinning);
    // The non-preemptive choice (keep running the last thread) comes first.
    const options = c.includes(this.last) ? [this.last, ...c.filter((t) => t !== this.last)] : [...c];
    const before = step > 0 ? this.stack[step - 1].preemptions : 0;
    this.stack.push({ options, idx: 0, preemptions: before });
    this.last = options[0]!;
    return options[0];
  }
  /** Moves to the next schedule; false when the bounded space is exhausted. */
  next(): boolean {
    while (this.stack.length) {
      const f = this.stack[this.stack.length - 1];
      const base = this.stack.length > 1 ? this.stack[this.stack.length - 2].preemptions : 0;
      if (f.idx + 1 < f.options.length && base + 1 <= this.bound) {
        f.idx++;
        f.preemptions = base + 1;
        return true;
      }
      this.stack.pop();
    }
    return false;
  }
}

export interface ExploreOptions {
  scenario: string;
  strategy: Strategy;
  schedules: number;
  seed: number;
  bug: boolean;
  all: boolean;
  pctDepth?: number;
  preemptions?: number;
  maxSteps?: number;
  /** Runs the structural MMU audit after every step at which mmu_lock is free. */
  auditEveryStep?: boolean;
  /** The MMU the scenario's VM runs on (shadow: the shadow MMU, guest paging off). */
  mode?: MmuModeName;
  /** Checked between schedules: once aborted, the result covers the schedules run. */
  signal?: AbortSignal;
  /**
   * One hand-off per step and a new VM for every schedule (slow): the reference the default
   * (runs of steps, one VM restored between schedules) explores exactly as.
   */
  stepwise?: boolean;
}

export async function explore(o: ExploreOptions): Promise<ExploreResult> {
  const s = SCENARIOS[o.scenario];
  if (!s)
    throw einval(
      "--scenario",
      `unknown scenario "${o.scenario}"; known: ${Object.keys(SCENARIOS).join(", ")}`,
    );
  const ex = new Explorer(
    s,
    o.bug,
    o.maxSteps,
    o.auditEveryStep ?? false,
    o.mode ?? "tdp",
    o.stepwise ?? false,
  );
  const t0 = performance.now();
  let schedules = 0;
  let violations = 0;
  let first: Violation | null = null;
  const rng = new ParkMiller(o.seed);
  const dfs = o.strategy === "dfs" ? new DfsChooser(o.preemptions ?? 2) : null;
  let estSteps = 200;
  try {
    while (schedules < o.schedules) {
      if (o.signal) {
        // Let a SIGINT handler run: runOnce itself never yields to the event loop.
        await new Promise((r) => setImmediate(r));
        if (o.signal.aborted) break;
      }
      let chooser: Chooser;
      if (dfs) {
        dfs.begin();
        chooser = dfs;
      } else if (o.strategy === "pct")
        chooser = new PctChooser(rng, s.threads.length, o.pctDepth ?? 3, estSteps);
      else chooser = new RandomChooser(rng);
      const r = ex.runOnce(chooser);
      schedules++;
      if (!r.aborted) estSteps = Math.max(estSteps, r.choices.length);
      if (r.violation) {
        violations++;
        first ??= {
          schedule: encodeSchedule(s.name, o.bug, r.choices, o.mode ?? "tdp"),
          invariant: r.violation,
          trace: r.trace,
          steps: r.choices.length,
        };
        if (!o.all) break;
      }
      if (dfs && !dfs.next()) break;
    }
  } finally {
    await ex.close();
  }
  const elapsedMs = performance.now() - t0;
  return {
    scenario: s.name,
    mode: o.mode ?? "tdp",
    bug: o.bug ? s.bug : null,
    strategy: o.strategy,
    seed: o.seed,
    schedules,
    violations,
    firstViolation: first,
    steps: ex.totalSteps,
    handOffs: ex.handOffs,
    stepsPerSec: ex.totalSteps / (Math.max(1e-3, elapsedMs - ex.startMs) / 1000),
    elapsedMs,
    startMs: ex.startMs,
  };
}

/** Re-runs one schedule exactly. */
export async function replay(schedule: string): Promise<{
  violation: string | null;
  trace: Record<string, TraceEntry[]>;
  steps: number;
  schedule: string;
}> {
  const d = decodeSchedule(schedule);
  const ex = new Explorer(SCENARIOS[d.scenario], d.bug, Math.max(20000, d.choices.length), false, d.mode);
  try {
    const r = ex.runOnce(new ReplayChooser(d.choices));
    return {
      violation: r.violation,
      trace: r.trace,
      steps: r.choices.length,
      schedule: encodeSchedule(d.scenario, d.bug, r.choices, d.mode),
    };
  } finally {
    await ex.close();
  }
}

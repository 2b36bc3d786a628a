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
import { MessageChannel, MessagePort, Worker } from "node:worker_threads";
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
import { Chooser, DfsChooser } from "./explore_chooser.js";
import { decodeSchedule, encodeSchedule } from "./explore_schedule.js";
import { Chain, SPIN_WINDOW } from "./explore_chain.js";
import { scenarioApplies, withDesign } from "./explore_design.js";
import { DesignName } from "../mmu/design.js";
import type { TdpBugName } from "../mmu/tdp_mmu/tdp_mmu_bugs.js";

export { PctChooser } from "./explore_chooser.js";
export { decodeSchedule, encodeSchedule, MAX_SCHEDULE_STEPS } from "./explore_schedule.js";
import { vmKvm, vmShared } from "../vm/internal.js";
import {
  mergeRecorded,
  OP_NAMES,
  readThreadMessages,
  recordedRunOf,
  ThreadMessages,
  RecordedRun,
  RecordedStep,
  recordedTail,
  recordRun,
  TraceEntry,
  TRACE_KEEP,
} from "./explore_record.js";
import { nextChooser } from "./explore_chooser.js";

export type { TraceEntry } from "./explore_record.js";
import { locationName, TRACED_ARRAYS } from "./trace_names.js";
import { workerFlags } from "../sync/worker_flags.js";

export type Strategy = "random" | "pct" | "dfs";

export interface Violation {
  schedule: string;
  /** Generated programs: the program that ran (src/verify/program.ts). */
  program?: unknown;
  invariant: string;
  trace: Record<string, TraceEntry[]>;
  steps: number;
}

export interface ExploreResult {
  scenario: string;
  mode: MmuModeName;
  /** The design the VM ran, when the run overrode the scenario's own. */
  design?: DesignName;
  bug: BugName | TdpBugName | null;
  strategy: Strategy;
  seed: number;
  schedules: number;
  violations: number;
  firstViolation: Violation | null;
  steps: number;
  /** Hand-offs from the controller to the threads; each passes a chain of runs of steps. */
  handOffs: number;
  /** Runs of steps the threads took (each begins with a hand-off to another thread, or the controller's). */
  runs: number;
  /**
   * Explored steps per second of exploring: elapsedMs less startMs and recordMs. The start of the worker
   * threads is a cost per process, not per step (a later exploration reuses them).
   */
  stepsPerSec: number;
  elapsedMs: number;
  /** Of elapsedMs, the time spent waiting for new worker threads to start. */
  startMs: number;
  /** With ExploreOptions.record: the first violation's run (else the last run), every step. */
  recording?: RecordedRun;
  /** Steps of the recorded re-run of the first violation (or, with record, of the last run), not in `steps`. */
  recordedSteps: number;
  /** Of elapsedMs, the time that re-run took (function stacks on, one step per hand-off). */
  recordMs: number;
}

/** One run's outcome. */
interface RunOutcome {
  choices: number[];
  violation: string | null;
  trace: Record<string, TraceEntry[]>;
  aborted: boolean;
  /** Every step, when the run was recorded. */
  recorded: RecordedStep[] | null;
}

/** The step bound of generated programs, which are longer than the scenarios. */
export const GENERATED_MAX_STEPS = 60000;
/** Bytes of a shared buffer (guest memory, the pools) compared, and if changed restored, at a time between runs. */
const RESTORE_CHUNK = 16 << 10;

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
      ...workerFlags(),
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
/** Copies back into `live` the chunks of its first `end` bytes that differ from `copy`. */
function restoreChanged(live: Buffer, copy: Buffer, end: number): void {
  for (let a = 0; a < end; a += RESTORE_CHUNK) {
    const b = Math.min(a + RESTORE_CHUNK, end);
    if (live.compare(copy, a, b, a, b) !== 0) live.set(copy.subarray(a, b), a);
  }
}

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
    bufs: [Buffer, Buffer][];
    mem: Buffer;
    memCopy: Buffer;
    frameHigh: number;
  } | null = null;
  totalSteps = 0;
  /** Hand-offs from the controller to a thread (a chain of runs of steps each). */
  handOffs = 0;
  /** Runs of steps the threads took (switches from one thread to another, mostly). */
  runs = 0;
  private readonly chain = new Chain();
  /** Time spent waiting for new worker threads to start (isolates, modules). */
  startMs = 0;
  /** Record the next runs in full (explore_record.ts): each thread its steps, function stacks on. */
  recording = false;
  /** Steps and time of the recorded runs (not counted in totalSteps). */
  recordSteps = 0;
  recordMs = 0;

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
    /** The design of the scenario's VM instead of its own (src/verify/explore_design.ts). */
    readonly design?: DesignName,
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
    this.startRun(vm, scratch);
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
        this.unwind(runnable);
        break;
      }
      const c = this.chain;
      const len = batch
        ? c.plan(chooser, t, step, runnable, spinning, own, lastSpin, this.maxSteps)
        : c.one(t, own[t], step);
      const [p, r] = this.runChain(len);
      this.runs += p + 1;
      // The chain stopped short: the chooser's simulated steps from there on did not happen.
      if (r < c.k[p]) chooser.restore(c.saved[p][r]);
      else if (p < len - 1) chooser.restore(c.after[p]);
      for (let i = 0; i <= p; i++) {
        const ri = i < p ? c.k[i] : r;
        for (let j = 0; j < ri; j++) choices.push(c.t[i]);
        own[c.t[i]] += ri;
        step += ri;
      }
      this.readTrace(raw, own, p, r);
    }
    this.idle = true;
    this.totalSteps += choices.length;
    // Read before a refusal too: nothing of this run may be left for the next one to read.
    const msgs = this.threadMessages();
    if (notRunnable !== null) throw new KvmError("EINVAL", notRunnable);
    const o = this.outcome(vm, scratch, raw, choices, aborted, auditViolation, msgs);
    if (!this.recording) return o;
    // A recorded run: its threads' steps in schedule order, and the trace from them.
    const recorded = mergeRecorded(
      msgs.map((m) => m.recorded ?? []),
      choices,
    );
    const names = s.threads.map((x) => x.name);
    return { ...o, trace: recordedTail(recorded, names), recorded };
  }

  /** What each thread posted before its last hand-back (a failed thread, a recorded run: else nothing). */
  private threadMessages(): ThreadMessages[] {
    return this.scenario.threads.map((_, t) =>
      this.recording || Atomics.load(this.sc, SCHED_T.state(t)) === TS_FAILED
        ? readThreadMessages(this.ports[t])
        : {},
    );
  }

  /**
   * Runs the first `len` runs of the chain: grants the first, and waits for a thread to hand
   * back. Returns the run that handed back and the steps it took (those before it: all of theirs).
   */
  private runChain(len: number): [number, number] {
    const sc = this.sc;
    const c = this.chain;
    for (let i = 0; i < len; i++) {
      Atomics.store(sc, SCHED.chain + 2 * i, c.t[i]);
      Atomics.store(sc, SCHED.chain + 2 * i + 1, c.k[i] - 1);
    }
    Atomics.store(sc, SCHED.chainPos, 0);
    Atomics.store(sc, SCHED.chainLen, len);
    const b = Atomics.load(sc, SCHED.back);
    this.grant(c.t[0], c.k[0] - 1);
    this.handOffs++;
    handOffWait(sc, SCHED.back, b);
    const p = Atomics.load(sc, SCHED.chainPos);
    const r = p < len ? Atomics.load(sc, SCHED_T.ran(c.t[p])) - c.own[p] : -1;
    if (r < 1 || r > c.k[p]) throw new Error(`explore: run ${p} of ${len} took ${r} steps of ${c.k[p]}`);
    return [p, r];
  }

  /**
   * Adds the last TRACE_KEEP steps of each of the chain's runs 0..p (r steps of run p) to `raw`,
   * from the threads' rings, and keeps each thread's last TRACE_KEEP. A thread that ran twice in
   * the chain overwrote its ring: a point still there is one of its last SCHED_RING (`own`: after
   * the chain), which holds every step kept.
   */
  private readTrace(raw: number[][][], own: number[], p: number, r: number): void {
    const sc = this.sc;
    const c = this.chain;
    for (let i = 0; i <= p; i++) {
      const t = c.t[i];
      const ri = i < p ? c.k[i] : r;
      const tr = raw[t];
      for (let j = Math.max(0, ri - TRACE_KEEP); j < ri; j++) {
        if (c.own[i] + j <= own[t] - SCHED_RING) continue;
        const e = this.ringEntry(t, c.own[i] + j);
        tr.push([c.step[i] + j, sc[e], sc[e + 1], sc[e + 2]]);
      }
      if (tr.length > TRACE_KEEP) tr.splice(0, tr.length - TRACE_KEEP);
    }
  }

  /** Resets the control words, posts the VM where a worker lacks it, and waits for every thread at its first point. */
  private startRun(vm: Vm, scratch: SharedArrayBuffer): void {
    const sc = this.sc;
    const s = this.scenario;
    const n = s.threads.length;
    this.idle = false;
    Atomics.store(sc, SCHED.abort, 0);
    Atomics.store(sc, SCHED.chainLen, 0);
    Atomics.store(sc, SCHED.trace, this.recording ? 1 : 0);
    const b0 = Atomics.load(sc, SCHED.back);
    for (let t = 0; t < n; t++) {
      Atomics.store(sc, SCHED_T.steps(t), 0);
      Atomics.store(sc, SCHED_T.grant(t), 0);
      Atomics.store(sc, SCHED_T.budget(t), 0);
      Atomics.store(sc, SCHED_T.ran(t), 0);
      Atomics.store(sc, SCHED_T.state(t), TS_IDLE);
      Atomics.store(sc, SCHED_T.run(t), this.crew.go + 1);
      // A worker keeps the VM it was sent last: send it only when it is another one.
      if (this.crew.attached[t] !== scratch) {
        this.ports[t].postMessage({ shared: vmShared(vm), scenario: s.name, program: s.program, scratch });
        this.crew.attached[t] = scratch;
      }
    }
    Atomics.store(sc, SCHED.go, ++this.crew.go);
    Atomics.notify(sc, SCHED.go);
    const w0 = performance.now();
    const booting = this.crew.booted < n;
    for (let b = b0; b - b0 < n; b = Atomics.load(sc, SCHED.back)) handOffWait(sc, SCHED.back, b);
    if (booting) {
      this.startMs += performance.now() - w0;
      this.crew.booted = Math.max(this.crew.booted, n);
    }
  }

  /** Aborts the run: threads unwind through scheduling points that now throw; waits for all. */
  private unwind(runnable: number[]): void {
    const sc = this.sc;
    const n = this.scenario.threads.length;
    Atomics.store(sc, SCHED.abort, 1);
    Atomics.store(sc, SCHED.chainLen, 0);
    for (const t of runnable) this.grant(t, 0);
    // Threads unwind through scheduling points that now throw; wait for all to finish. `back`
    // is read before the state: a thread sets its state, then bumps it.
    for (let t = 0; t < n; t++) {
      for (;;) {
        const v = Atomics.load(sc, SCHED.back);
        const st = Atomics.load(sc, SCHED_T.state(t));
        if (st !== TS_AT_POINT && st !== TS_IDLE) break;
        this.grant(t, 0);
        waitChange(sc, SCHED.back, v);
      }
    }
  }

  /** The run's trace, and its violation: the audit's, a thread's failure, or the scenario's check. */
  private outcome(
    vm: Vm,
    scratch: SharedArrayBuffer,
    raw: number[][][],
    choices: number[],
    aborted: boolean,
    auditViolation: string | null,
    msgs: { error?: string }[],
  ): RunOutcome {
    const sc = this.sc;
    const s = this.scenario;
    const n = s.threads.length;
    const trace: Record<string, TraceEntry[]> = {};
    for (let t = 0; t < n; t++) {
      const thread = s.threads[t].name;
      // Named from the VM as the run left it (a recorded run names each step as it ran).
      trace[thread] = raw[t].map(([step, op, arr, idx]) => ({
        step,
        thread,
        op: `${OP_NAMES[op] ?? "?"} ${arr >= 0 ? locationName(vmKvm(vm), arr, idx) : `scenario scratch[${idx}]`}`,
        at: `${TRACED_ARRAYS[arr] ?? "scratch"}[${idx}]`,
      }));
    }
    let violation: string | null = null;
    const failures: string[] = [];
    for (let t = 0; t < n; t++) {
      if (Atomics.load(sc, SCHED_T.state(t)) === TS_FAILED)
        failures.push(`thread ${s.threads[t].name} failed: ${msgs[t].error ?? "?"}`);
    }
    if (auditViolation !== null) violation = auditViolation;
    else if (failures.length) violation = failures.join("; ");
    else if (!aborted) violation = s.check(vm, new Int32Array(scratch));
    return { choices, violation, trace, aborted, recorded: null };
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
      const vm = Vm.create(withDesign(s.vmOptions(this.bug ? [s.bug] : [], this.mode), this.design));
      const scratch = new SharedArrayBuffer(s.scratchWords * 4);
      s.setup(vm, new Int32Array(scratch));
      if (this.stepwise) return { vm, scratch };
      const bufs = [scratch, ...sharedBuffers(vmShared(vm))];
      this.template = {
        vm,
        scratch,
        bufs: bufs
          .filter((b) => b !== vmShared(vm).mem)
          .map((b) => [Buffer.from(b), Buffer.from(b.slice(0))]),
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
    restoreChanged(tp.mem, tp.memCopy, end);
    // The rest (page tables, pools, the host page table: ~300 KiB) the same way: a chunk a run
    // left alone is only read, not rewritten (a rewrite costs the workers' caches their lines).
    for (const [live, copy] of tp.bufs) restoreChanged(live, copy, live.length);
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

export interface ExploreOptions {
  scenario: string;
  /** A scenario object to run instead of the named one (generated programs). */
  scenarioObject?: Scenario;
  /** The design of the VM instead of the scenario's own. */
  design?: DesignName;
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
  /** Return the recording (explore_record.ts) of the first violation's run, or of the last run. */
  record?: boolean;
  /**
   * Record every schedule in full, as `record` records one, and hand each recording here: the
   * tracing-on path at its steady rate (src/bench/catalog.ts). Its steps count in `steps` and
   * `stepsPerSec`; the schedules are the same as without.
   */
  onRecording?: (run: RecordedRun) => void;
}

/** The scenario `o` explores: EINVAL for an unknown one or one that does not apply to o.design. */
function scenarioOf(o: ExploreOptions): Scenario {
  const s = o.scenarioObject ?? (Object.hasOwn(SCENARIOS, o.scenario) ? SCENARIOS[o.scenario] : undefined);
  if (!s)
    throw einval(
      "--scenario",
      `unknown scenario "${o.scenario}"; known: ${Object.keys(SCENARIOS).join(", ")}`,
    );
  const mode = o.mode ?? "tdp";
  const design = o.design ?? s.onlyDesign;
  if (design !== undefined && o.scenarioObject === undefined && !scenarioApplies(o.scenario, design, mode))
    throw einval(
      o.design !== undefined ? "--wp" : "--mode",
      `scenario "${o.scenario}" does not apply to design "${design}" in ${mode} mode (no shadow mode, an rmap scenario on a design without rmaps, or a scenario of another design's code)`,
    );
  return s;
}

function explorerOf(s: Scenario, o: ExploreOptions): Explorer {
  const mode = o.mode ?? "tdp";
  return new Explorer(s, o.bug, o.maxSteps, o.auditEveryStep ?? false, mode, o.stepwise ?? false, o.design);
}

export async function explore(o: ExploreOptions): Promise<ExploreResult> {
  const s = scenarioOf(o);
  const ex = explorerOf(s, o);
  const t0 = performance.now();
  let schedules = 0;
  let violations = 0;
  let first: Violation | null = null;
  const rng = new ParkMiller(o.seed);
  const dfs = o.strategy === "dfs" ? new DfsChooser(o.preemptions ?? 2) : null;
  let estSteps = 200;
  // The last run's choices until a violation, then the first violation's.
  let chosen: number[] = [];
  let recording: RecordedRun | undefined;
  try {
    while (schedules < o.schedules) {
      if (o.signal) {
        // Let a SIGINT handler run: runOnce itself never yields to the event loop.
        await new Promise((r) => setImmediate(r));
        if (o.signal.aborted) break;
      }
      ex.recording = o.onRecording !== undefined;
      const r = ex.runOnce(nextChooser(o, dfs, rng, s.threads.length, estSteps));
      schedules++;
      if (o.onRecording !== undefined)
        o.onRecording(
          recordedRunOf(s, encodeSchedule(s.name, o.bug, r.choices, o.mode ?? "tdp", o.design), r),
        );
      if (!r.aborted) estSteps = Math.max(estSteps, r.choices.length);
      if (first === null) chosen = r.choices;
      if (r.violation) {
        violations++;
        first ??= {
          schedule: encodeSchedule(s.name, o.bug, r.choices, o.mode ?? "tdp", o.design),
          ...(s.program !== undefined ? { program: s.program } : {}),
          invariant: r.violation,
          trace: r.trace,
          steps: r.choices.length,
        };
        if (!o.all) break;
      }
      if (dfs && !dfs.next()) break;
    }
    // The first violation's schedule once more, recorded: its trace names every step as it ran.
    if (first !== null || (o.record === true && schedules > 0)) {
      const rr = recordRun(
        ex,
        chosen,
        first?.schedule ?? encodeSchedule(s.name, o.bug, chosen, o.mode ?? "tdp", o.design),
      );
      if (first !== null) first.trace = rr.trace;
      if (o.record === true) recording = rr.recording;
    }
  } finally {
    await ex.close();
  }
  const elapsedMs = performance.now() - t0;
  return {
    scenario: s.name,
    mode: o.mode ?? "tdp",
    ...(o.design !== undefined ? { design: o.design } : {}),
    bug: o.bug ? s.bug : null,
    strategy: o.strategy,
    seed: o.seed,
    schedules,
    violations,
    firstViolation: first,
    steps: ex.totalSteps,
    handOffs: ex.handOffs,
    runs: ex.runs,
    stepsPerSec: ex.totalSteps / (Math.max(1e-3, elapsedMs - ex.startMs - ex.recordMs) / 1000),
    elapsedMs,
    startMs: ex.startMs,
    recordedSteps: ex.recordSteps,
    recordMs: ex.recordMs,
    ...(recording !== undefined ? { recording } : {}),
  };
}

/** Re-runs one schedule exactly (of a named scenario, or of `scenario` for generated ones). */
export async function replay(
  schedule: string,
  scenario?: Scenario,
  choices?: { bug: boolean; mode: MmuModeName; design?: DesignName; choices: number[] },
): Promise<{
  violation: string | null;
  trace: Record<string, TraceEntry[]>;
  steps: number;
  schedule: string;
  recording: RecordedRun;
}> {
  const d = choices ?? decodeSchedule(schedule);
  const s = scenario ?? SCENARIOS[decodeSchedule(schedule).scenario];
  const steps = Math.max(scenario ? GENERATED_MAX_STEPS : 20000, d.choices.length);
  const ex = new Explorer(s, d.bug, steps, false, d.mode, false, d.design);
  try {
    const r = recordRun(ex, d.choices, schedule);
    const steps = r.recording.steps.length;
    return {
      violation: r.recording.violation,
      trace: r.trace,
      steps,
      schedule: encodeSchedule(s.name, d.bug, d.choices.slice(0, steps), d.mode, d.design),
      recording: r.recording,
    };
  } finally {
    await ex.close();
  }
}

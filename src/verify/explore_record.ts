/**
 * The full recording of one controlled run (the explorer's `--trace`, `replay --trace`): every
 * step with its thread, operation, the named location (src/verify/trace_names.ts, decoded while
 * every thread is stopped at that step), the word's value before and after the step, and the
 * kernel functions the thread was in (src/sync/kfunc.ts). The explorer keeps only the last
 * steps of each thread while it searches; a violation's schedule is re-run recorded (replay is
 * deterministic): each thread records its own steps (ThreadRecorder) in the same runs of steps
 * as an unrecorded run, and the controller merges them in schedule order.
 */
import { MessagePort, receiveMessageOnPort } from "node:worker_threads";
import { Op } from "../sync/atomic.js";
import { SCHED_T, StepRecorder } from "../sync/sched.js";
import { kfunc_stack, kfuncName } from "../sync/kfunc.js";
import { Kvm } from "../kvm_host.js";
import { locationGfns, locationName, TRACED_ARRAYS } from "./trace_names.js";
import { Chooser, ReplayChooser } from "./explore_chooser.js";

/** Steps of each thread a violation's trace shows. */
export const TRACE_KEEP = 12;

export interface TraceEntry {
  step: number;
  thread: string;
  /** The operation and the named location: `xchg spte gfn 0x0 level 1 (sp 3 index 0)`, with values and functions when recorded. */
  op: string;
  /** The raw location: `spt[1536]`. */
  at: string;
}

/** What recordRun needs of an Explorer (explore.ts): its recording switch, counters and runOnce. */
export interface RecordingExplorer {
  recording: boolean;
  totalSteps: number;
  recordSteps: number;
  recordMs: number;
  readonly scenario: { name: string; threads: { name: string }[] };
  runOnce(c: Chooser): {
    trace: Record<string, TraceEntry[]>;
    recorded: RecordedStep[] | null;
    violation: string | null;
  };
}

export const OP_NAMES = [
  "load",
  "store",
  "xchg",
  "cas",
  "or",
  "and",
  "add",
  "guest-read",
  "guest-write",
  "spin",
];

/** Operations that can change the word (a cas or an or may leave it as it was). */
export const WRITE_OPS: ReadonlySet<number> = new Set([
  Op.Store,
  Op.Xchg,
  Op.Cas,
  Op.Or,
  Op.And,
  Op.Add,
  Op.GuestWrite,
]);

/** One step of a recorded run. */
export interface RecordedStep {
  /** Position in the schedule (0-based). */
  step: number;
  /** The scenario thread's index. */
  thread: number;
  op: number;
  /** Index in TRACED_ARRAYS, -1 for the scenario's scratch words. */
  arr: number;
  index: number;
  /** What the location is (trace_names.ts). */
  field: string;
  /** The guest pages the location covers (a spte's, a guest-memory word's): first gfn, or -1. */
  gfn: number;
  /** How many (0: none). */
  pages: number;
  /** The word before and after the step (the step runs the thread up to its next point). */
  old: number;
  new: number;
  /** Kernel functions the thread was in at the step, outermost first. */
  stack: string[];
  /** The same as recorded frames (src/sync/kfunc.ts): equal frames are the same call. */
  frames: number[];
}

export interface RecordedRun {
  scenario: string;
  schedule: string;
  threads: string[];
  steps: RecordedStep[];
  violation: string | null;
}

/**
 * A traced run's steps of one thread, recorded by that thread (explore_worker.ts, through the
 * controlled hook's StepRecorder) as it takes each step, while every other thread stands at a
 * point: the location is named, and its old value read, as the VM is at that step. The thread
 * keeps its runs of steps (no hand-off per step); the controller puts the threads' steps in
 * schedule order afterwards (mergeRecorded).
 */
export class ThreadRecorder implements StepRecorder {
  /** This thread's steps in order (`step` is set by mergeRecorded). */
  readonly steps: RecordedStep[] = [];
  private readonly arrays: Int32Array[];
  private pending: RecordedStep | null = null;
  private target: Int32Array | null = null;

  constructor(
    private readonly sc: Int32Array,
    private readonly tid: number,
    private readonly kvm: Kvm,
    private readonly scratch: Int32Array,
  ) {
    const k = kvm;
    this.arrays = [
      k.spt,
      k.rmapPool,
      k.desc,
      k.bitmapPool,
      k.vcpu,
      k.ctl,
      k.mem,
      k.hpt,
      k.spHdr,
      k.dirtyRing,
    ];
    if (this.arrays.length !== TRACED_ARRAYS.length) throw new Error("recorder: traced arrays differ");
  }

  /** The thread takes the step at its point: `op` on element `index` of traced array `arr` (-1: scratch). */
  step(op: number, arr: number, index: number): void {
    const a = arr >= 0 ? this.arrays[arr] : this.scratch;
    this.target = index < a.length ? a : null;
    const old = this.target !== null ? Atomics.load(this.target, index) : 0;
    const frames = kfunc_stack(this.sc, SCHED_T.kstack(this.tid));
    const stack = frames.map(kfuncName);
    const field = arr >= 0 ? locationName(this.kvm, arr, index) : `scenario scratch[${index}]`;
    const [gfn, pages] = locationGfns(this.kvm, arr, index) ?? [-1, 0];
    this.pending = {
      step: -1,
      thread: this.tid,
      op,
      arr,
      index,
      field,
      gfn,
      pages,
      old,
      new: old,
      stack,
      frames,
    };
  }

  /** The thread reached its next point, finished or failed: the pending step is over. */
  point(): void {
    const p = this.pending;
    if (p === null) return;
    if (this.target !== null) p.new = Atomics.load(this.target, p.index);
    this.steps.push(p);
    this.pending = null;
  }
}

/**
 * A traced run's steps in schedule order, from each thread's own (`perThread[t]`, ThreadRecorder):
 * step k is the next step of thread `choices[k]`. Throws if the counts disagree.
 */
export function mergeRecorded(perThread: RecordedStep[][], choices: number[]): RecordedStep[] {
  const next = perThread.map(() => 0);
  const out = choices.map((t, step) => {
    const s = perThread[t]?.[next[t]++];
    if (s === undefined)
      throw new Error(`explore: thread ${t} recorded fewer steps than the schedule gave it`);
    s.step = step;
    return s;
  });
  perThread.forEach((l, t) => {
    if (next[t] !== l.length)
      throw new Error(`explore: thread ${t} recorded ${l.length} steps, the schedule gave it ${next[t]}`);
  });
  return out;
}

/** What a run's thread posts before its last hand-back (explore_worker.ts): a failure's message, a recorded run's steps. */
export interface ThreadMessages {
  error?: string;
  recorded?: RecordedStep[];
}

/** Every message waiting on `port` from its thread's run, merged. */
export function readThreadMessages(port: MessagePort): ThreadMessages {
  const m: ThreadMessages = {};
  for (let x = receiveMessageOnPort(port); x !== undefined; x = receiveMessageOnPort(port))
    Object.assign(m, x.message);
  return m;
}

/** A recorded run (`r`: runOnce's outcome of a recorded run) of scenario `s`, as `schedule`. */
export function recordedRunOf(
  s: { name: string; threads: { name: string }[] },
  schedule: string,
  r: { recorded: RecordedStep[] | null; violation: string | null },
): RecordedRun {
  return {
    scenario: s.name,
    schedule,
    threads: s.threads.map((t) => t.name),
    steps: r.recorded ?? [],
    violation: r.violation,
  };
}

const hex = (v: number): string => `0x${(v >>> 0).toString(16)}`;

/** A step as one line: `xchg spte gfn 0x0 level 1 (sp 3 index 0) 0x...->0x... [fast_page_fault < mmu_spte_update]`. */
export function stepText(s: RecordedStep): string {
  const op = OP_NAMES[s.op] ?? "?";
  const val = s.old === s.new ? `= ${hex(s.old)}` : `${hex(s.old)} -> ${hex(s.new)}`;
  const fns = s.stack.length ? `  [${s.stack.join(" > ")}]` : "";
  return `${op} ${s.field} ${val}${fns}`;
}

/** The last TRACE_KEEP steps of each thread of a recorded run, as a violation's trace. */
export function recordedTail(steps: RecordedStep[], threads: string[]): Record<string, TraceEntry[]> {
  const trace: Record<string, TraceEntry[]> = {};
  threads.forEach((thread, t) => {
    trace[thread] = steps
      .filter((x) => x.thread === t)
      .slice(-TRACE_KEEP)
      .map((x) => ({
        step: x.step,
        thread,
        op: stepText(x),
        at: `${TRACED_ARRAYS[x.arr] ?? "scratch"}[${x.index}]`,
      }));
  });
  return trace;
}

/** Re-runs `choices` on `ex` with full recording. */
export function recordRun(
  ex: RecordingExplorer,
  choices: number[],
  schedule: string,
): { trace: Record<string, TraceEntry[]>; recording: RecordedRun } {
  ex.recording = true;
  const steps = ex.totalSteps;
  const t0 = performance.now();
  try {
    const r = ex.runOnce(new ReplayChooser(choices));
    return {
      trace: r.trace,
      recording: {
        scenario: ex.scenario.name,
        schedule,
        threads: ex.scenario.threads.map((t) => t.name),
        steps: r.recorded ?? [],
        violation: r.violation,
      },
    };
  } finally {
    ex.recording = false;
    // The recorded re-run is not an explored schedule.
    ex.recordSteps += ex.totalSteps - steps;
    ex.recordMs += performance.now() - t0;
    ex.totalSteps = steps;
  }
}

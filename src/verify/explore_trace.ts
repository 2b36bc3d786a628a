/**
 * A recorded controlled run (explore_record.ts) as a Trace Event Format file, for
 * ui.perfetto.dev, chrome://tracing and `kvmmu report`: one track per scenario thread, each step
 * an X slice named by its operation and location (old and new value in args), the kernel
 * functions as nested B/E slices around the steps, flow arrows from a write on one thread to
 * the first read of the same word by another thread that saw it (reads-from; spte, rmap, dirty
 * bitmap, dirty ring and guest memory words), an instant where a thread wrote guest memory after
 * another thread had read (copied) it for the last time, and the violation as a global instant
 * carrying the invariant's message.
 *
 * Time is the schedule: step k runs from k to k + 1 microseconds. Only one thread runs at a
 * time, so the tracks never overlap in time; what reads across them is the order.
 */
import { Op } from "../sync/atomic.js";
import { TraceWriter, memoryTraceSink } from "../sync/trace_event.js";
import { OP_NAMES, RecordedRun, RecordedStep, WRITE_OPS } from "./explore_record.js";
import { ARR_BITMAP, ARR_MEM, ARR_RING, ARR_RMAP, ARR_SPT, TRACED_ARRAYS } from "./trace_names.js";

const PID = 1;
/** Flows drawn at most (a long run reads the same words many times). */
const MAX_FLOWS = 256;
const FLOW_ARRAYS: ReadonlySet<number> = new Set([ARR_SPT, ARR_RMAP, ARR_BITMAP, ARR_RING, ARR_MEM]);
const READ_OPS: ReadonlySet<number> = new Set([Op.Load, Op.GuestRead, Op.Cas, Op.Xchg]);

const hex = (v: number): string => `0x${(v >>> 0).toString(16)}`;

/** For each step index: the step whose write it read from, where that write was another thread's. */
export function readsFrom(steps: readonly RecordedStep[]): Map<number, number> {
  const lastWrite = new Map<string, number>();
  const seen = new Set<string>();
  const out = new Map<number, number>();
  steps.forEach((s, i) => {
    if (!FLOW_ARRAYS.has(s.arr)) return;
    const key = `${s.arr}/${s.index}`;
    const w = lastWrite.get(key);
    if (w !== undefined && READ_OPS.has(s.op) && steps[w].thread !== s.thread && out.size < MAX_FLOWS) {
      // One arrow per write and reading thread: the first read that saw it.
      const pair = `${w}/${s.thread}`;
      if (!seen.has(pair)) {
        seen.add(pair);
        out.set(i, w);
      }
    }
    if (WRITE_OPS.has(s.op) && s.old !== s.new) lastWrite.set(key, i);
  });
  return out;
}

/** Guest-memory writes made after another thread's last read of that word (a copy that missed them). */
export function missedWrites(steps: readonly RecordedStep[]): Map<number, number> {
  const lastRead = new Map<string, number>();
  steps.forEach((s, i) => {
    if (s.arr === ARR_MEM && s.op !== (Op.GuestWrite as number)) lastRead.set(`${s.index}`, i);
  });
  const out = new Map<number, number>();
  steps.forEach((s, i) => {
    const r = lastRead.get(`${s.index}`);
    if (
      s.arr === ARR_MEM &&
      s.op === (Op.GuestWrite as number) &&
      s.old !== s.new &&
      r !== undefined &&
      r < i
    )
      if (steps[r].thread !== s.thread) out.set(i, r);
  });
  return out;
}

function stepArgs(s: RecordedStep): Record<string, unknown> {
  return {
    step: s.step,
    op: OP_NAMES[s.op] ?? "?",
    field: s.field,
    at: `${TRACED_ARRAYS[s.arr] ?? "scratch"}[${s.index}]`,
    old: hex(s.old),
    new: hex(s.new),
    functions: s.stack.join(" > "),
  };
}

/** Writes `run` through `w` (the caller closes it). */
export function writeRecordedRun(w: TraceWriter, run: RecordedRun): void {
  const n = run.threads.length;
  w.nameThread(PID, 0, "invariant check", `kvmmu explore ${run.scenario}`);
  run.threads.forEach((name, t) => w.nameThread(PID, t + 1, name));
  const open: number[][] = run.threads.map(() => []);
  const lastEnd: number[] = new Array<number>(n).fill(0);
  const from = readsFrom(run.steps);
  const missed = missedWrites(run.steps);
  // Per write, the reads it flows to; per read, its flow's id once the write started it.
  const readers = new Map<number, number[]>();
  for (const [r, wi] of from) readers.set(wi, [...(readers.get(wi) ?? []), r]);
  const flowIds = new Map<number, number>();
  run.steps.forEach((s, i) => {
    const tid = s.thread + 1;
    const st = open[s.thread];
    let keep = 0;
    while (keep < st.length && keep < s.frames.length && st[keep] === s.frames[keep]) keep++;
    while (st.length > keep) {
      st.pop();
      w.end(PID, tid, lastEnd[s.thread]);
    }
    for (let k = keep; k < s.frames.length; k++) {
      st.push(s.frames[k]);
      w.begin(PID, tid, s.step, s.stack[k], undefined, "kvm");
    }
    const name = `${OP_NAMES[s.op] ?? "?"} ${s.field}`;
    w.complete(PID, tid, s.step, 1, name, stepArgs(s), "step");
    lastEnd[s.thread] = s.step + 1;
    const fid = flowIds.get(i);
    if (fid !== undefined) w.flowEnd(fid, PID, tid, s.step, "reads-from");
    for (const r of readers.get(i) ?? []) flowIds.set(r, w.flowStart(PID, tid, s.step, "reads-from"));
    const r = missed.get(i);
    if (r !== undefined)
      w.instant(PID, tid, s.step, "write after the last copy", {
        field: s.field,
        copiedAt: run.steps[r].step,
        copiedBy: run.threads[run.steps[r].thread],
      });
  });
  run.threads.forEach((_, t) => {
    while (open[t].length > 0) {
      open[t].pop();
      w.end(PID, t + 1, lastEnd[t]);
    }
  });
  const end = run.steps.length > 0 ? run.steps[run.steps.length - 1].step + 1 : 0;
  if (run.violation !== null)
    w.instant(PID, 0, end, "violation", { invariant: run.violation, schedule: run.schedule }, "g");
}

/** The whole trace file of `run`, as text. */
export function recordedRunTrace(run: RecordedRun): string {
  const m = memoryTraceSink();
  const w = new TraceWriter(m.sink, {
    tool: "kvmmu explore",
    scenario: run.scenario,
    schedule: run.schedule,
    violation: run.violation,
    steps: run.steps.length,
  });
  writeRecordedRun(w, run);
  w.close();
  return m.text();
}

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
 * A guest write through a stale TLB entry has no read to point at: the vCPU hit its private TLB,
 * which the steps do not show. It is found from the sptes instead: a guest write to a gfn whose
 * spte (the last change of a spte covering that gfn, by another thread) cleared W or D can only
 * have hit a TLB entry filled before that change (a miss would have faulted and set W again), so
 * the flush that should have followed the change never reached the vCPU. That write is a
 * "stale TLB hit" instant, with a "no TLB flush" flow arrow from the spte change to it.
 *
 * Time is the schedule: step k runs from k to k + 1 microseconds. Only one thread runs at a
 * time, so the tracks never overlap in time; what reads across them is the order.
 */
import { Op } from "../sync/atomic.js";
import { TraceWriter, memoryTraceSink } from "../sync/trace_event.js";
import { OP_NAMES, RecordedRun, RecordedStep, WRITE_OPS } from "./explore_record.js";
import { ARR_BITMAP, ARR_MEM, ARR_RING, ARR_RMAP, ARR_SPT, TRACED_ARRAYS } from "./trace_names.js";
import { PT_WRITABLE_MASK, SPTE_DIRTY } from "../mmu/spte.js";

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

/** Bits a TLB entry caches whose loss needs a flush before the change counts (the dirty log's). */
const FLUSHED_BITS = PT_WRITABLE_MASK | SPTE_DIRTY;

/**
 * Guest writes through a stale TLB entry: for each such step, the spte change (another thread's
 * W or D clear, the last change of a spte covering the written gfn) whose flush never came.
 */
export function staleTlbHits(steps: readonly RecordedStep[]): Map<number, number> {
  // The last change of any spte covering each gfn: the spte steps by gfn range, replayed in order.
  const changes: number[] = [];
  const out = new Map<number, number>();
  steps.forEach((s, i) => {
    if (s.arr === ARR_SPT && s.pages > 0 && WRITE_OPS.has(s.op) && s.old !== s.new) changes.push(i);
    if (s.arr !== ARR_MEM || s.op !== (Op.GuestWrite as number) || s.pages === 0) return;
    for (let k = changes.length - 1; k >= 0; k--) {
      const c = steps[changes[k]];
      if (s.gfn < c.gfn || s.gfn >= c.gfn + c.pages) continue;
      const lost = c.old & ~c.new & FLUSHED_BITS;
      if (lost !== 0 && c.thread !== s.thread) out.set(i, changes[k]);
      break;
    }
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
  const stale = staleTlbHits(run.steps);
  const staleFrom = new Map<number, number[]>();
  for (const [r, wi] of stale) staleFrom.set(wi, [...(staleFrom.get(wi) ?? []), r]);
  const staleIds = new Map<number, number>();
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
    const sid = staleIds.get(i);
    if (sid !== undefined) w.flowEnd(sid, PID, tid, s.step, "no TLB flush", "stale-tlb");
    for (const r of staleFrom.get(i) ?? [])
      staleIds.set(r, w.flowStart(PID, tid, s.step, "no TLB flush", "stale-tlb"));
    const c = stale.get(i);
    if (c !== undefined)
      w.instant(PID, tid, s.step, "stale TLB hit", {
        field: s.field,
        spte: run.steps[c].field,
        changedAt: run.steps[c].step,
        changedBy: run.threads[run.steps[c].thread],
        change: `${hex(run.steps[c].old)} -> ${hex(run.steps[c].new)}`,
        missing: "the TLB flush after the spte change (kvm_flush_remote_tlbs) never reached this vCPU",
      });
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

/**
 * The Trace Event Format (the JSON that chrome://tracing and ui.perfetto.dev open): the event
 * types, a writer that keeps a file well formed while it is written, and the check a reader can
 * run on any file. Timestamps are microseconds (fractions allowed), as the format says.
 *
 * Well formed here means: every B has its E on the same thread, in order (slices nest); the
 * timestamps of one thread never go back; every flow start ("s") has exactly one finish ("f")
 * with the same id, not before it. The writer refuses what would break these rules, so a trace
 * that kvmmu writes always passes `checkTraceEvents`.
 *
 * Pure: no I/O. The writer hands out chunks of JSON text to a sink the caller provides (a file
 * stream, an array), so a long benchmark can stream its timeline instead of holding it.
 */

/** Phases used by kvmmu: slices (B/E, X), instants (i), counters (C), flows (s/f), metadata (M). */
export type TracePhase = "B" | "E" | "X" | "i" | "C" | "s" | "f" | "M";

export interface TraceEvent {
  name: string;
  ph: TracePhase;
  /** Microseconds. */
  ts: number;
  pid: number;
  tid: number;
  cat?: string;
  /** X: duration in microseconds. */
  dur?: number;
  /** i: scope, "t" thread, "p" process, "g" global. */
  s?: "t" | "p" | "g";
  /** s/f: the flow's id, the same on both ends. */
  id?: number;
  /** f: bind to the enclosing slice ("e"), as Perfetto expects. */
  bp?: "e";
  args?: Record<string, unknown>;
}

/** A violation of the rules above: which event (its index in the file) and why. */
export interface TraceProblem {
  index: number;
  message: string;
}

/** Checks a list of events against the rules above; returns every problem found (none: well formed). */
export function checkTraceEvents(events: readonly TraceEvent[]): TraceProblem[] {
  const problems: TraceProblem[] = [];
  const open = new Map<string, { name: string; ts: number }[]>();
  const lastTs = new Map<string, number>();
  const flows = new Map<number, { started: number; finished: number }>();
  events.forEach((e, index) => {
    const bad = (message: string): void => void problems.push({ index, message });
    if (typeof e.name !== "string" || typeof e.ph !== "string") return bad("event without name or ph");
    if (e.ph === "M") return;
    if (!Number.isFinite(e.ts) || e.ts < 0) return bad(`${e.name}: ts ${e.ts} is not a time`);
    const thread = `${e.pid}/${e.tid}`;
    const prev = lastTs.get(thread) ?? 0;
    if (e.ts < prev) bad(`${e.name}: ts ${e.ts} goes back on thread ${thread} (last ${prev})`);
    lastTs.set(thread, Math.max(prev, e.ts));
    const stack = open.get(thread) ?? [];
    open.set(thread, stack);
    if (e.ph === "B") stack.push({ name: e.name, ts: e.ts });
    else if (e.ph === "E") {
      const top = stack.pop();
      if (top === undefined) bad(`E ${e.name} without a B on thread ${thread}`);
      else if (top.name !== e.name) bad(`E ${e.name} closes B ${top.name} on thread ${thread}`);
    } else if (e.ph === "X" && !(Number.isFinite(e.dur) && (e.dur ?? -1) >= 0))
      bad(`X ${e.name} without dur`);
    else if (e.ph === "s" || e.ph === "f") {
      if (typeof e.id !== "number") return bad(`flow ${e.name} without id`);
      const f = flows.get(e.id) ?? { started: -1, finished: -1 };
      if (e.ph === "s") {
        if (f.started >= 0) bad(`flow ${e.id} started twice`);
        f.started = index;
      } else {
        if (f.finished >= 0) bad(`flow ${e.id} finished twice`);
        if (f.started < 0) bad(`flow ${e.id} finishes before it starts`);
        f.finished = index;
      }
      flows.set(e.id, f);
    }
  });
  for (const [thread, stack] of open)
    for (const b of stack)
      problems.push({ index: -1, message: `B ${b.name} at ${b.ts} never ends on thread ${thread}` });
  for (const [id, f] of flows)
    if (f.started < 0 || f.finished < 0)
      problems.push({ index: f.started, message: `flow ${id} is not paired` });
  return problems;
}

/**
 * Writes one trace file as a JSON object `{"traceEvents": [...], "displayTimeUnit": "ns", ...}`
 * through `sink`. Each method checks the rules for the event it adds and throws a RangeError on a
 * break (a bug in the tracer, not user input). `close()` ends open slices and writes the tail.
 */
export class TraceWriter {
  private first = true;
  private closed = false;
  private nextFlow = 1;
  private readonly stacks = new Map<string, { name: string }[]>();
  private readonly lastTs = new Map<string, number>();
  private readonly openFlows = new Set<number>();
  /** Events written so far (metadata included). */
  events = 0;

  constructor(
    private readonly sink: (chunk: string) => void,
    private readonly metadata: Record<string, unknown> = {},
  ) {
    sink('{"traceEvents":[\n');
  }

  /** Names a process and a thread (Perfetto shows these as the track names). */
  nameThread(pid: number, tid: number, name: string, processName?: string): void {
    if (processName !== undefined)
      this.emit({ name: "process_name", ph: "M", ts: 0, pid, tid, args: { name: processName } });
    this.emit({ name: "thread_name", ph: "M", ts: 0, pid, tid, args: { name } });
  }

  begin(
    pid: number,
    tid: number,
    ts: number,
    name: string,
    args?: Record<string, unknown>,
    cat?: string,
  ): void {
    this.advance(pid, tid, ts, name);
    this.stack(pid, tid).push({ name });
    this.emit({ name, ph: "B", ts, pid, tid, cat, args });
  }

  end(pid: number, tid: number, ts: number, args?: Record<string, unknown>): void {
    const top = this.stack(pid, tid).pop();
    if (top === undefined) throw new RangeError(`trace: end without begin on ${pid}/${tid}`);
    this.advance(pid, tid, ts, top.name);
    this.emit({ name: top.name, ph: "E", ts, pid, tid, args });
  }

  /** Names of the slices open on a thread, outermost first. */
  openSlices(pid: number, tid: number): string[] {
    return this.stack(pid, tid).map((s) => s.name);
  }

  complete(
    pid: number,
    tid: number,
    ts: number,
    dur: number,
    name: string,
    args?: Record<string, unknown>,
    cat?: string,
  ): void {
    if (!(dur >= 0)) throw new RangeError(`trace: ${name}: dur ${dur}`);
    this.advance(pid, tid, ts, name);
    this.emit({ name, ph: "X", ts, dur, pid, tid, cat, args });
  }

  instant(
    pid: number,
    tid: number,
    ts: number,
    name: string,
    args?: Record<string, unknown>,
    scope: "t" | "p" | "g" = "t",
  ): void {
    this.advance(pid, tid, ts, name);
    this.emit({ name, ph: "i", s: scope, ts, pid, tid, args });
  }

  counter(pid: number, ts: number, name: string, values: Record<string, number>): void {
    this.advance(pid, 0, ts, name);
    this.emit({ name, ph: "C", ts, pid, tid: 0, args: values });
  }

  /** Starts a flow arrow at (pid, tid, ts); returns its id for `flowEnd`. Put it inside a slice. */
  flowStart(pid: number, tid: number, ts: number, name: string, cat = "flow"): number {
    const id = this.nextFlow++;
    this.advance(pid, tid, ts, name);
    this.openFlows.add(id);
    this.emit({ name, ph: "s", ts, pid, tid, id, cat });
    return id;
  }

  flowEnd(id: number, pid: number, tid: number, ts: number, name: string, cat = "flow"): void {
    if (!this.openFlows.delete(id)) throw new RangeError(`trace: flow ${id} is not open`);
    this.advance(pid, tid, ts, name);
    this.emit({ name, ph: "f", bp: "e", ts, pid, tid, id, cat });
  }

  /** Ends every open slice at `ts` (each thread's own last time if later) and writes the tail. */
  close(ts = 0): void {
    if (this.closed) return;
    for (const [key, stack] of this.stacks) {
      const [pid, tid] = key.split("/").map(Number);
      while (stack.length > 0) this.end(pid, tid, Math.max(ts, this.lastTs.get(key) ?? 0));
    }
    if (this.openFlows.size > 0) throw new RangeError(`trace: ${this.openFlows.size} flows left open`);
    this.closed = true;
    this.sink(`\n],"displayTimeUnit":"ns","otherData":${JSON.stringify(this.metadata)}}\n`);
  }

  private stack(pid: number, tid: number): { name: string }[] {
    const key = `${pid}/${tid}`;
    let s = this.stacks.get(key);
    if (s === undefined) this.stacks.set(key, (s = []));
    return s;
  }

  private advance(pid: number, tid: number, ts: number, name: string): void {
    if (this.closed) throw new RangeError("trace: written after close");
    const key = `${pid}/${tid}`;
    const last = this.lastTs.get(key) ?? 0;
    if (!(ts >= last)) throw new RangeError(`trace: ${name} at ${ts} before ${last} on ${key}`);
    this.lastTs.set(key, ts);
  }

  private emit(e: TraceEvent): void {
    const clean = Object.fromEntries(Object.entries(e).filter(([, v]) => v !== undefined));
    this.sink((this.first ? "" : ",\n") + JSON.stringify(clean));
    this.first = false;
    this.events++;
  }
}

/** Writes into an array of chunks; `text()` is the whole file. For tests and small traces. */
export function memoryTraceSink(): { sink: (chunk: string) => void; text: () => string } {
  const chunks: string[] = [];
  return { sink: (c) => void chunks.push(c), text: () => chunks.join("") };
}

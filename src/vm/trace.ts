/**
 * The runtime trace of real runs (dirty-log-perf, dirty-log-test, migrate --trace): vm_enable_trace
 * gives a VM its rings (sync/trace_ring.ts) before its vCPUs exist; a TraceTimeline drains the
 * rings of one or more VMs on the main thread and writes them as Trace Event Format through a
 * TraceWriter: one process per VM, one track per thread, lock waits and holds and the ioctls as
 * slices, the tracepoints as instants with their named fields, each TLB flush request to the
 * vCPU's ack as a flow, and counters of guest writes/s and faults/s.
 */
import { CTL, Kvm, ST } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { allocTraceBuffer, TracePhase, TraceReader, TraceRecord, Tracer } from "../sync/trace_ring.js";
import { TRACEPOINTS, type Tracepoint } from "../sync/tracepoints.js";
import type { TraceWriter } from "../sync/trace_event.js";
import { isInt } from "./state.js";

/** The largest --trace-sample. */
export const TRACE_SAMPLE_MAX = 2 ** 30;

/**
 * Gives the VM its trace rings: `sample` (1..2^30) records one in `sample` per-access events.
 * Before any vCPU exists (EINVAL after, EEXIST twice), so every worker attaches to the rings.
 */
export function vm_enable_trace(kvm: Kvm, vcpusCreated: number, sample: number): void {
  if (!isInt(sample) || sample < 1 || sample > TRACE_SAMPLE_MAX)
    throw einval("sample", `must be an integer in 1..${TRACE_SAMPLE_MAX}, got ${String(sample)}`);
  if (kvm.shared.trace !== undefined) throw new KvmError("EEXIST", "enableTrace: the VM is traced already");
  if (vcpusCreated !== 0) throw einval("enableTrace", "must come before any vCPU exists");
  let buffer: SharedArrayBuffer;
  try {
    buffer = allocTraceBuffer(sample);
  } catch (e) {
    throw new KvmError("ENOMEM", `enableTrace: cannot allocate the rings (${(e as Error).message})`);
  }
  kvm.shared.trace = buffer;
  kvm.trace = new Tracer(buffer, kvm.shared.epochMs);
  kvm.trace.setName("main (ioctls)");
  kvm.mmu_lock.tracer = kvm.trace;
}

/** What a timeline reads of one VM. */
export interface TraceSource {
  /** The process's name in the trace (the design, "source", ...). */
  name: string;
  buffer: SharedArrayBuffer;
  /** The VM's clock origin (KvmShared.epochMs). */
  epochMs: number;
  /** Cumulative guest writes and faults, all vCPUs. */
  counters(): { writes: number; faults: number };
}

/** A traced VM as a TraceSource (null when the VM has no trace). */
export function vm_trace_source(kvm: Kvm, name: string): TraceSource | null {
  const buffer = kvm.shared.trace;
  if (buffer === undefined) return null;
  return {
    name,
    buffer,
    epochMs: kvm.shared.epochMs,
    counters: () => {
      let writes = 0;
      let faults = 0;
      const n = Atomics.load(kvm.ctl, CTL.nr_vcpus);
      for (let v = 0; v < n; v++) {
        writes += kvm.vcpuStats[ST.writes(v)];
        faults += kvm.vcpuStats[ST.fast_pf(v)] + kvm.vcpuStats[ST.slow_pf(v)];
      }
      return { writes, faults };
    },
  };
}

interface Proc {
  pid: number;
  src: TraceSource;
  reader: TraceReader;
  /** µs to add to a record's ts (its VM's epoch against the timeline's origin). */
  shiftUs: number;
  names: string[];
  last: { writes: number; faults: number; ts: number };
  /** vCPU id -> its track (learnt from acks), to end a flow whose ack never came. */
  vcpuTid: Map<number, number>;
}

/** Drains VMs' rings into a TraceWriter; see the file's comment. */
export class TraceTimeline {
  private readonly procs: Proc[] = [];
  private readonly originMs = performance.timeOrigin + performance.now();
  private readonly lastTs = new Map<string, number>();
  /** A request's flow (pid/flow) -> the writer's flow id and the vCPU it goes to. */
  private readonly flows = new Map<string, { id: number; vcpu: number; pid: number; tid: number }>();
  /** Acks drained before their request (rings are read one after the other): pid/flow -> track. */
  private readonly early = new Map<string, { tid: number; ts: number }>();
  private timer: NodeJS.Timeout | null = null;
  /** Records written to the trace, records lost to full rings (set at close). */
  records = 0;
  dropped = 0;

  constructor(private readonly writer: TraceWriter) {}

  /** Adds a VM: its process track, named `src.name`. */
  add(src: TraceSource): void {
    const pid = this.procs.length + 1;
    this.procs.push({
      pid,
      src,
      reader: new TraceReader(src.buffer),
      shiftUs: (src.epochMs - this.originMs) * 1000,
      names: [],
      last: { ...src.counters(), ts: this.now() },
      vcpuTid: new Map(),
    });
    this.writer.nameThread(pid, 0, "counters", src.name);
  }

  /** Drains every `ms` on the main thread's event loop (between a run's awaits). */
  start(ms = 100): void {
    this.timer ??= setInterval(() => this.drain(), ms);
    this.timer.unref();
  }

  /** µs since the timeline's origin. */
  private now(): number {
    return (performance.timeOrigin + performance.now() - this.originMs) * 1000;
  }

  /** Writes what the rings hold now, in time order, and one sample of each counter. */
  drain(): void {
    for (const p of this.procs) {
      const recs = p.reader.drain();
      for (const r of recs) r.ts = Math.max(0, r.ts + p.shiftUs);
      recs.sort((a, b) => a.ts - b.ts);
      for (const r of recs) this.record(p, r);
      this.records += recs.length;
      this.counters(p);
    }
  }

  /**
   * The last drain, every open slice ended, unpaired flows ended; the writer closed. `meta`: the
   * writer's metadata object, given records and dropped before the writer writes it.
   */
  close(meta?: Record<string, unknown>): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    this.drain();
    const end = this.now();
    for (const [, f] of this.flows)
      this.writer.flowEnd(f.id, f.pid, f.tid, this.at(f.pid, f.tid, end), "tlb_flush");
    this.flows.clear();
    this.dropped = this.procs.reduce((n, p) => n + p.reader.dropped(), 0);
    if (meta !== undefined) Object.assign(meta, { records: this.records, dropped: this.dropped });
    this.writer.close(end);
  }

  private counters(p: Proc): void {
    const c = p.src.counters();
    const ts = this.at(p.pid, 0, this.now());
    const dt = (ts - p.last.ts) / 1e6;
    if (dt > 0) {
      this.writer.counter(p.pid, ts, "guest writes/s", {
        writes: Math.round((c.writes - p.last.writes) / dt),
      });
      this.writer.counter(p.pid, ts, "faults/s", { faults: Math.round((c.faults - p.last.faults) / dt) });
    }
    p.last = { ...c, ts };
  }

  /** A track's time: never before its last event (clocks of threads agree to a few µs only). */
  private at(pid: number, tid: number, ts: number): number {
    const k = `${pid}/${tid}`;
    const t = Math.max(ts, this.lastTs.get(k) ?? 0);
    this.lastTs.set(k, t);
    return t;
  }

  private nameTrack(p: Proc, thread: number): void {
    const name = p.reader.threadName(thread) || `thread ${thread}`;
    if (p.names[thread] === name) return;
    p.names[thread] = name;
    this.writer.nameThread(p.pid, thread + 1, name);
  }

  private record(p: Proc, r: TraceRecord): void {
    const tp = TRACEPOINTS[r.tp] as Tracepoint | undefined;
    if (tp === undefined) return;
    this.nameTrack(p, r.thread);
    const pid = p.pid;
    const tid = r.thread + 1;
    const ts = this.at(pid, tid, r.ts);
    const names = r.phase === TracePhase.End ? (tp.endFields ?? []) : tp.fields;
    const args: Record<string, number> = {};
    names.forEach((n, i) => (args[n] = r.fields[i]));
    if (tp.kind === "slice") {
      if (r.phase === TracePhase.Begin) this.writer.begin(pid, tid, ts, tp.name, args, tp.system);
      else this.endSlice(pid, tid, ts, tp.name, args);
    } else if (tp.kind === "flow_s") this.flowStart(p, tid, ts, tp, args);
    else if (tp.kind === "flow_f") this.flowEnd(p, tid, ts, tp, args);
    else this.writer.instant(pid, tid, ts, tp.name, args);
  }

  /** Ends `name` (and what is open inside it); an end whose begin was lost is skipped. */
  private endSlice(pid: number, tid: number, ts: number, name: string, args: Record<string, number>): void {
    const open = this.writer.openSlices(pid, tid);
    const at = open.lastIndexOf(name);
    if (at < 0) return;
    for (let i = open.length - 1; i > at; i--) this.writer.end(pid, tid, ts);
    this.writer.end(pid, tid, ts, args);
  }

  private flowStart(p: Proc, tid: number, ts: number, tp: Tracepoint, args: Record<string, number>): void {
    this.writer.complete(p.pid, tid, ts, 0, tp.name, args, tp.system);
    const id = this.writer.flowStart(p.pid, tid, ts, "tlb_flush");
    const key = `${p.pid}/${args.flow}`;
    const early = this.early.get(key);
    if (early !== undefined) {
      this.early.delete(key);
      this.writer.flowEnd(
        id,
        p.pid,
        early.tid,
        this.at(p.pid, early.tid, Math.max(ts, early.ts)),
        "tlb_flush",
      );
      return;
    }
    this.flows.set(key, { id, vcpu: args.vcpu_id, pid: p.pid, tid: p.vcpuTid.get(args.vcpu_id) ?? tid });
  }

  private flowEnd(p: Proc, tid: number, ts: number, tp: Tracepoint, args: Record<string, number>): void {
    p.vcpuTid.set(args.vcpu_id, tid);
    this.writer.complete(p.pid, tid, ts, 0, tp.name, args, tp.system);
    const key = `${p.pid}/${args.flow}`;
    const f = this.flows.get(key);
    if (f === undefined) {
      this.early.set(key, { tid, ts });
      return;
    }
    this.flows.delete(key);
    this.writer.flowEnd(f.id, p.pid, tid, ts, "tlb_flush");
  }
}

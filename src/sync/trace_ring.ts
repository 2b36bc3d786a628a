/**
 * The runtime trace's recording: one SharedArrayBuffer per VM holding a ring of fixed-size records
 * per thread (a vCPU worker, the host thread, the main thread), each written by its thread only
 * and drained by the main thread (src/vm/trace.ts). A thread claims its ring at its first record.
 *
 * A record: ts (µs since the VM's epoch, on the clock every thread shares: performance.timeOrigin +
 * performance.now()), the code (tracepoint << 2 | phase), MAX_FIELDS numbers. A full ring drops
 * the record and counts it: tracing never blocks a vCPU.
 *
 * Cost when off: the Tracer of a VM without a trace has `on` false; callers test it once per call.
 */
import { MAX_FIELDS } from "./tracepoints.js";
import { defineBlock, defineRows, KVM_MAX_VCPUS } from "../layout.js";

/** Record phases (the code's low 2 bits). */
export const enum TracePhase {
  Instant = 0,
  Begin = 1,
  End = 2,
}

/** Rings per VM: one per thread that records (vCPUs, host thread, main thread, migration). */
export const TRACE_MAX_THREADS = 72;
/** Records per ring (a drain every 100 ms empties it well before: see src/vm/trace.ts). */
export const TRACE_RING_RECORDS = 8192;
/** Float64 words a record: ts, code, fields. */
export const TRACE_REC_WORDS = 2 + MAX_FIELDS + 1;
/** Characters of a thread's name. */
const NAME_CHARS = 32;

/** The trace buffer's header (Int32 words), then one TRACE_RING row per ring. */
export const TRACE_HDR = defineBlock("trace buffer header", "trace buffer (Int32 view)", {
  sample: { by: "written before any thread records", doc: "one in `sample` per-access events is recorded" },
  next_slot: { by: "atomic add (a thread claims its ring)", doc: "rings claimed" },
  next_flow: { by: "atomic add", doc: "the next flow id" },
  pending: {
    words: KVM_MAX_VCPUS,
    by: "cmpxchg by a flusher, xchg by the vCPU",
    doc: "per vCPU: the flow id of a flush request not yet acked (0: none)",
  },
});

/** Per ring: its counters and its thread's name. */
export const TRACE_RING = defineRows(
  "trace ring control",
  "trace buffer (Int32 view)",
  {
    write: { by: "its thread stores it (a release: the record before it is whole)", doc: "records written" },
    read: { by: "the main thread (the drainer) stores it", doc: "records drained" },
    dropped: { by: "its thread (atomic add)", doc: "records lost to a full ring" },
    name: {
      words: NAME_CHARS / 2,
      by: "its thread, when it claims the ring",
      doc: "the thread's name (Uint16 chars)",
    },
  },
  { base: TRACE_HDR.WORDS },
);

const HEADER_WORDS = TRACE_RING.row(TRACE_MAX_THREADS);
const HEADER_BYTES = Math.ceil((HEADER_WORDS * 4) / 8) * 8;
const RING_WORDS = TRACE_RING_RECORDS * TRACE_REC_WORDS;

/** Allocates a VM's trace buffer; `sample`: one in `sample` per-access events is recorded. */
export function allocTraceBuffer(sample: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(HEADER_BYTES + TRACE_MAX_THREADS * RING_WORDS * 8);
  const h = new Int32Array(sab, 0, HEADER_WORDS);
  h[TRACE_HDR.sample] = sample;
  h[TRACE_HDR.next_flow] = 1;
  return sab;
}

/** The per-thread view of a trace buffer: the one writer of its ring. */
export class Tracer {
  /** Tracing on for this thread's VM: read once per traced call. */
  readonly on: boolean;
  /** µs to add to performance.now()*1000 for the VM's clock (this thread's timeOrigin - epoch). */
  private readonly offsetUs: number;
  private readonly hdr: Int32Array | null;
  private readonly recs: Float64Array | null;
  private slot = -1;
  private base = 0;
  private written = 0;
  private readonly sample: number;
  private countdown: number;
  private name = "";
  /**
   * This thread's mmu_lock holds and remote flushes are per-access events (a vCPU's faults, the
   * host thread's page migrations): sampled like them. Elsewhere (the ioctls) all are recorded.
   */
  perAccessLocks = false;

  constructor(buffer: SharedArrayBuffer | null, epochMs: number) {
    this.on = buffer !== null && buffer.byteLength > 8;
    this.offsetUs = (performance.timeOrigin - epochMs) * 1000;
    this.hdr = this.on ? new Int32Array(buffer!, 0, HEADER_WORDS) : null;
    this.recs = this.on ? new Float64Array(buffer!, HEADER_BYTES) : null;
    this.sample = this.hdr !== null ? Math.max(1, this.hdr[TRACE_HDR.sample]) : 1;
    this.countdown = this.sample;
  }

  /** Now, µs since the VM's epoch. */
  now(): number {
    return this.offsetUs + performance.now() * 1000;
  }

  /** One in `sample` calls returns true: whether this per-access event is recorded. */
  sampled(): boolean {
    if (--this.countdown > 0) return false;
    this.countdown = this.sample;
    return true;
  }

  /** Names this thread's track ("vcpu 0", "main"); kept for the ring it claims. */
  setName(name: string): void {
    this.name = name;
    if (this.slot >= 0) this.writeName();
  }

  /** Records one event now. Fields missing are 0. */
  emit(tp: number, phase: TracePhase, a = 0, b = 0, c = 0, d = 0, e = 0, f = 0, g = 0): void {
    this.emitAt(this.now(), tp, phase, a, b, c, d, e, f, g);
  }

  /** Records one event at `ts` (µs, from now()): for a wait whose start is known only later. */
  emitAt(ts: number, tp: number, phase: TracePhase, a = 0, b = 0, c = 0, d = 0, e = 0, f = 0, g = 0): void {
    if (!this.on || (this.slot < 0 && !this.claim())) return;
    const h = this.hdr!;
    if (this.written - Atomics.load(h, TRACE_RING.read(this.slot)) >= TRACE_RING_RECORDS) {
      Atomics.add(h, TRACE_RING.dropped(this.slot), 1);
      return;
    }
    const r = this.recs!;
    const o = this.base + (this.written % TRACE_RING_RECORDS) * TRACE_REC_WORDS;
    r[o] = ts;
    r[o + 1] = tp * 4 + phase;
    r[o + 2] = a;
    r[o + 3] = b;
    r[o + 4] = c;
    r[o + 5] = d;
    r[o + 6] = e;
    r[o + 7] = f;
    r[o + 8] = g;
    // Release: the drainer reads the record only after it loads WRITE.
    Atomics.store(h, TRACE_RING.write(this.slot), ++this.written);
  }

  /** A new flow id (shared by every thread of the VM). */
  flowId(): number {
    return Atomics.add(this.hdr!, TRACE_HDR.next_flow, 1);
  }

  /** A flusher's flow to vCPU v, unless one is pending already (then the same ack serves both). */
  flushPending(v: number, flow: number): boolean {
    return v < KVM_MAX_VCPUS && Atomics.compareExchange(this.hdr!, TRACE_HDR.pending + v, 0, flow) === 0;
  }

  /** vCPU v takes the flow of the flush it serves (0: none pending). */
  flushAck(v: number): number {
    return v < KVM_MAX_VCPUS ? Atomics.exchange(this.hdr!, TRACE_HDR.pending + v, 0) : 0;
  }

  private claim(): boolean {
    const h = this.hdr!;
    const slot = Atomics.add(h, TRACE_HDR.next_slot, 1);
    if (slot >= TRACE_MAX_THREADS) return false;
    this.slot = slot;
    this.base = slot * RING_WORDS;
    this.writeName();
    return true;
  }

  private writeName(): void {
    const h = this.hdr!;
    const chars = new Uint16Array(h.buffer, TRACE_RING.name(this.slot) * 4, NAME_CHARS);
    const n = this.name.slice(0, NAME_CHARS);
    for (let i = 0; i < NAME_CHARS; i++) chars[i] = i < n.length ? n.charCodeAt(i) : 0;
  }
}

/** One record as the drainer sees it. */
export interface TraceRecord {
  /** The ring (thread) it came from. */
  thread: number;
  ts: number;
  tp: number;
  phase: TracePhase;
  fields: number[];
}

/** The main thread's reader of a trace buffer (the one consumer of every ring). */
export class TraceReader {
  private readonly hdr: Int32Array;
  private readonly recs: Float64Array;

  constructor(buffer: SharedArrayBuffer) {
    this.hdr = new Int32Array(buffer, 0, HEADER_WORDS);
    this.recs = new Float64Array(buffer, HEADER_BYTES);
  }

  /** Rings claimed so far. */
  threads(): number {
    return Math.min(Atomics.load(this.hdr, TRACE_HDR.next_slot), TRACE_MAX_THREADS);
  }

  /** The name a ring's thread gave itself ("" if none). */
  threadName(slot: number): string {
    const chars = new Uint16Array(this.hdr.buffer, TRACE_RING.name(slot) * 4, NAME_CHARS);
    let s = "";
    for (const c of chars) {
      if (c === 0) break;
      s += String.fromCharCode(c);
    }
    return s;
  }

  /** Records lost to full rings, all threads. */
  dropped(): number {
    let n = 0;
    for (let t = 0; t < this.threads(); t++) n += Atomics.load(this.hdr, TRACE_RING.dropped(t));
    return n;
  }

  /** Takes every record written since the last drain, ring by ring (each ring's in its order). */
  drain(): TraceRecord[] {
    const out: TraceRecord[] = [];
    for (let t = 0; t < this.threads(); t++) {
      const w = Atomics.load(this.hdr, TRACE_RING.write(t));
      const r0 = Atomics.load(this.hdr, TRACE_RING.read(t));
      for (let i = r0; i < w; i++) {
        const o = t * RING_WORDS + (i % TRACE_RING_RECORDS) * TRACE_REC_WORDS;
        const code = this.recs[o + 1];
        out.push({
          thread: t,
          ts: this.recs[o],
          tp: code >> 2,
          phase: code & 3,
          fields: Array.from(this.recs.subarray(o + 2, o + 2 + MAX_FIELDS)),
        });
      }
      Atomics.store(this.hdr, TRACE_RING.read(t), w);
    }
    return out;
  }
}

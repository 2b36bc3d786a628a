import { test } from "node:test";
import assert from "node:assert/strict";
import {
  checkTraceEvents,
  memoryTraceSink,
  TraceWriter,
  type TraceEvent,
} from "../../src/sync/trace_event.js";

function written(build: (w: TraceWriter) => void): { traceEvents: TraceEvent[]; otherData: unknown } {
  const m = memoryTraceSink();
  const w = new TraceWriter(m.sink, { scenario: "t" });
  build(w);
  w.close();
  return JSON.parse(m.text()) as { traceEvents: TraceEvent[]; otherData: unknown };
}

test("the writer writes a well-formed file: nested slices, a flow, an instant, a counter", () => {
  const f = written((w) => {
    w.nameThread(1, 1, "vcpu0", "kvmmu");
    w.nameThread(1, 2, "harvester");
    w.begin(1, 1, 0, "fast_page_fault");
    w.complete(1, 1, 1, 1, "cas spte", { gfn: 0x12 });
    const id = w.flowStart(1, 1, 1.5, "dirty");
    w.end(1, 1, 3);
    w.begin(1, 2, 2, "kvm_vm_ioctl_get_dirty_log");
    w.flowEnd(id, 1, 2, 2.5, "dirty");
    w.instant(1, 2, 2.6, "violation", { message: "lost" });
    w.counter(1, 3, "writes/s", { writes: 10 });
    // left open: close() ends it
  });
  assert.deepEqual(f.otherData, { scenario: "t" });
  assert.deepEqual(checkTraceEvents(f.traceEvents), []);
  const phases = f.traceEvents.map((e) => e.ph).join("");
  assert.equal(phases, "MMMBXsEBfiCE");
  assert.equal(f.traceEvents.at(-1)?.name, "kvm_vm_ioctl_get_dirty_log");
});

test("the writer refuses time going back on a thread, an end without a begin, an unknown flow", () => {
  const w = new TraceWriter(() => {});
  w.begin(1, 1, 5, "a");
  assert.throws(() => w.complete(1, 1, 4, 0, "b"), RangeError);
  w.complete(1, 2, 1, 0, "other thread has its own clock");
  w.end(1, 1, 6);
  assert.throws(() => w.end(1, 1, 7), RangeError);
  assert.throws(() => w.flowEnd(99, 1, 1, 8, "f"), RangeError);
  w.flowStart(1, 1, 8, "open");
  assert.throws(() => w.close(), RangeError);
});

test("checkTraceEvents finds each kind of break", () => {
  const ev = (ph: TraceEvent["ph"], ts: number, name = "a", tid = 1, id?: number): TraceEvent => ({
    name,
    ph,
    ts,
    pid: 1,
    tid,
    id,
  });
  const msgs = (events: TraceEvent[]): string =>
    checkTraceEvents(events)
      .map((p) => p.message)
      .join("|");
  assert.match(msgs([ev("B", 0)]), /never ends/);
  assert.match(msgs([ev("E", 0)]), /without a B/);
  assert.match(msgs([ev("B", 0, "a"), ev("E", 1, "b")]), /closes B a/);
  assert.match(msgs([ev("X", 2), ev("i", 1)]), /goes back/);
  assert.match(msgs([ev("s", 0, "f", 1, 7)]), /not paired/);
  assert.match(msgs([ev("f", 0, "f", 1, 7), ev("s", 1, "f", 2, 7)]), /before it starts/);
  assert.match(msgs([{ name: "x", ph: "X", ts: 0, pid: 1, tid: 1 }]), /without dur/);
  assert.deepEqual(checkTraceEvents([ev("i", 5, "a", 1), ev("i", 1, "a", 2)]), []);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  allocTraceBuffer,
  TRACE_RING_RECORDS,
  TracePhase,
  TraceReader,
  Tracer,
} from "../../src/sync/trace_ring.js";
import { MAX_FIELDS, TP, TRACEPOINTS, type Tracepoint } from "../../src/sync/tracepoints.js";
import { RwLock, RWLOCK_WORDS } from "../../src/sync/rwlock.js";

const EPOCH = performance.timeOrigin + performance.now();

test("the table: unique names, at most MAX_FIELDS fields, KVM's systems and field names", () => {
  const names = TRACEPOINTS.map((t) => t.name);
  assert.equal(new Set(names).size, names.length);
  for (const t of TRACEPOINTS as readonly Tracepoint[]) {
    assert.ok(t.fields.length <= MAX_FIELDS && (t.endFields?.length ?? 0) <= MAX_FIELDS, t.name);
    assert.equal(TRACEPOINTS[TP[t.name as keyof typeof TP]].name, t.name);
  }
  const fields = (n: string): readonly string[] => TRACEPOINTS.find((t) => t.name === n)!.fields;
  // As in Linux's mmutrace.h and trace/events/kvm.h.
  assert.deepEqual(fields("kvm_mmu_spte_requested"), ["gfn", "pfn", "level"]);
  assert.deepEqual(fields("kvm_tdp_mmu_spte_changed"), ["as_id", "gfn", "level", "old_spte", "new_spte"]);
  assert.deepEqual(fields("kvm_dirty_ring_push"), ["index", "dirty_index", "reset_index", "slot", "offset"]);
  assert.deepEqual(fields("kvm_mmu_split_huge_page"), ["gfn", "spte", "level", "errno"]);
});

test("a Tracer off records nothing and costs no ring; on, the reader gets its records in order", () => {
  const off = new Tracer(null, EPOCH);
  assert.equal(off.on, false);
  off.emit(TP.kvm_mmu_set_spte, TracePhase.Instant, 1, 2, 3, 4);
  const buf = allocTraceBuffer(1);
  const t = new Tracer(buf, EPOCH);
  t.setName("vcpu 3");
  t.emit(TP.kvm_mmu_set_spte, TracePhase.Instant, 0x12, 0x3407, 99, 1);
  t.emit(TP.mmu_lock_write, TracePhase.Begin);
  t.emit(TP.mmu_lock_write, TracePhase.End);
  const r = new TraceReader(buf);
  assert.equal(r.threads(), 1);
  assert.equal(r.threadName(0), "vcpu 3");
  const recs = r.drain();
  assert.deepEqual(
    recs.map((x) => [x.tp, x.phase]),
    [
      [TP.kvm_mmu_set_spte, TracePhase.Instant],
      [TP.mmu_lock_write, TracePhase.Begin],
      [TP.mmu_lock_write, TracePhase.End],
    ],
  );
  assert.deepEqual(recs[0].fields.slice(0, 4), [0x12, 0x3407, 99, 1]);
  assert.ok(recs[0].ts <= recs[1].ts && recs[1].ts <= recs[2].ts);
  assert.equal(r.drain().length, 0, "a drain takes each record once");
});

test("sampled(): one call in `sample` is true", () => {
  const t = new Tracer(allocTraceBuffer(8), EPOCH);
  let n = 0;
  for (let i = 0; i < 800; i++) if (t.sampled()) n++;
  assert.equal(n, 100);
});

test("a full ring drops and counts; after a drain it records again", () => {
  const buf = allocTraceBuffer(1);
  const t = new Tracer(buf, EPOCH);
  for (let i = 0; i < TRACE_RING_RECORDS + 5; i++) t.emit(TP.kvm_dirty_ring_exit, TracePhase.Instant, i);
  const r = new TraceReader(buf);
  assert.equal(r.dropped(), 5);
  const recs = r.drain();
  assert.equal(recs.length, TRACE_RING_RECORDS);
  assert.equal(recs.at(-1)!.fields[0], TRACE_RING_RECORDS - 1, "the newest are the ones dropped");
  t.emit(TP.kvm_dirty_ring_exit, TracePhase.Instant, 7);
  assert.deepEqual(
    r.drain().map((x) => x.fields[0]),
    [7],
  );
});

test("each thread claims its own ring; a flush flow is pending once per vCPU until acked", () => {
  const buf = allocTraceBuffer(1);
  const a = new Tracer(buf, EPOCH);
  const b = new Tracer(buf, EPOCH);
  a.emit(TP.kvm_dirty_ring_exit, TracePhase.Instant, 1);
  b.emit(TP.kvm_dirty_ring_exit, TracePhase.Instant, 2);
  const f1 = a.flowId();
  const f2 = a.flowId();
  assert.notEqual(f1, f2);
  assert.equal(a.flushPending(3, f1), true);
  assert.equal(a.flushPending(3, f2), false, "the pending flush's ack serves the second");
  assert.equal(b.flushAck(3), f1);
  assert.equal(b.flushAck(3), 0);
  const recs = new TraceReader(buf).drain();
  assert.deepEqual(
    recs.map((x) => [x.thread, x.fields[0]]),
    [
      [0, 1],
      [1, 2],
    ],
  );
});

/** A traced RwLock whose lock is held by "another thread" until the waiter's first sleep. */
function contended(mode: "write" | "read"): string[] {
  const words = new Int32Array(new SharedArrayBuffer(RWLOCK_WORDS * 4));
  const lock = new RwLock(words, 0);
  const buf = allocTraceBuffer(1);
  lock.tracer = new Tracer(buf, EPOCH);
  words[0] = 0xff; // another writer holds it
  // The other holder unlocks when the waiter is about to sleep: the wait ends, deterministically.
  lock.onWait = () => void Atomics.sub(words, 0, 0xff);
  if (mode === "write") {
    lock.write_lock();
    lock.write_unlock();
  } else {
    lock.read_lock();
    lock.read_lock(); // nested: one hold in the trace
    lock.read_unlock();
    lock.read_unlock();
  }
  lock.onWait = null;
  // Uncontended: a hold without a wait.
  if (mode === "write") {
    lock.write_lock();
    lock.write_unlock();
  } else {
    lock.read_lock();
    lock.read_unlock();
  }
  return new TraceReader(buf)
    .drain()
    .map((r) => `${r.phase === TracePhase.Begin ? "B" : "E"} ${TRACEPOINTS[r.tp].name}`);
}

test("mmu_lock: a contended write lock is a wait slice then a hold slice; uncontended, a hold only", () => {
  assert.deepEqual(contended("write"), [
    "B mmu_lock_write_wait",
    "E mmu_lock_write_wait",
    "B mmu_lock_write",
    "E mmu_lock_write",
    "B mmu_lock_write",
    "E mmu_lock_write",
  ]);
});

test("mmu_lock: a contended read lock likewise; a nested read hold is one slice", () => {
  assert.deepEqual(contended("read"), [
    "B mmu_lock_read_wait",
    "E mmu_lock_read_wait",
    "B mmu_lock_read",
    "E mmu_lock_read",
    "B mmu_lock_read",
    "E mmu_lock_read",
  ]);
});

test("mmu_lock on a per-access thread: one hold in the sample is traced", () => {
  const words = new Int32Array(new SharedArrayBuffer(RWLOCK_WORDS * 4));
  const lock = new RwLock(words, 0);
  const buf = allocTraceBuffer(4);
  const t = new Tracer(buf, EPOCH);
  t.perAccessLocks = true;
  lock.tracer = t;
  for (let i = 0; i < 8; i++) {
    lock.write_lock();
    lock.write_unlock();
    lock.read_lock();
    lock.read_unlock();
  }
  assert.equal(new TraceReader(buf).drain().length, 8, "4 of 16 holds, two records each");
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { explore, replay } from "../../src/verify/explore.js";
import { recordedRunTrace, readsFrom, staleTlbHits } from "../../src/verify/explore_trace.js";
import { RecordedStep } from "../../src/verify/explore_record.js";
import { Op } from "../../src/sync/atomic.js";
import { ARR_MEM, ARR_SPT } from "../../src/verify/trace_names.js";
import { checkTraceEvents, TraceEvent } from "../../src/sync/trace_event.js";
import {
  KF,
  kfunc_enter,
  kfunc_exit,
  kfunc_record,
  kfunc_ret,
  kfunc_stack,
  kfuncName,
} from "../../src/sync/kfunc.js";
import { runKvmmu } from "../helpers/cli.js";

const dir = mkdtempSync(join(tmpdir(), "kvmmu-trace-"));

test("kfunc: no-op until recording is on; exits restore the depth a throw skipped", () => {
  assert.equal(kfunc_enter(KF.fast_page_fault), 0);
  const w = new Int32Array(12);
  kfunc_record(w, 1);
  try {
    const a = kfunc_enter(KF.kvm_mmu_page_fault);
    const b = kfunc_enter(KF.fast_page_fault);
    kfunc_enter(KF.mmu_spte_update); // its exit skipped, as by a throw
    assert.deepEqual(kfunc_stack(w, 1).map(kfuncName), [
      "kvm_mmu_page_fault",
      "fast_page_fault",
      "mmu_spte_update",
    ]);
    kfunc_exit(b);
    assert.deepEqual(kfunc_stack(w, 1).map(kfuncName), ["kvm_mmu_page_fault"]);
    const c = kfunc_enter(KF.fast_page_fault);
    // A second call of the same function is another frame.
    assert.notEqual(kfunc_stack(w, 1)[1], b);
    kfunc_exit(c);
    // An early return: the value is evaluated inside the frame, then the depth goes back.
    const d = kfunc_enter(KF.mmu_spte_update);
    assert.equal(kfunc_ret(d, kfunc_stack(w, 1).length), 2);
    assert.equal(w[1], 1);
    kfunc_exit(a);
    assert.equal(w[1], 0);
  } finally {
    kfunc_record(null);
  }
  const before = w.slice();
  kfunc_exit(kfunc_enter(KF.fast_page_fault));
  assert.equal(kfunc_ret(kfunc_enter(KF.fast_page_fault), 7), 7);
  assert.deepEqual(w, before, "off again: nothing written");
});

test("explore --bug skip-flush, recorded: a well-formed trace naming the spte, the functions and the violation; replay records the same", async () => {
  const r = await explore({
    scenario: "skip-flush",
    strategy: "pct",
    schedules: 2000,
    seed: 1,
    bug: true,
    all: false,
    record: true,
  });
  assert.ok(r.firstViolation && r.recording, "pct finds skip-flush");
  const rec = r.recording;
  assert.equal(rec.violation, r.firstViolation.invariant);
  assert.equal(rec.steps.length, r.firstViolation.steps);
  // The harvester write-protects the spte of gfn 0x64 inside kvm_get_dirty_log.
  const wp = rec.steps.find((s) => /^spte gfn 0x64 level 1 /.test(s.field) && s.old !== s.new);
  assert.ok(wp, "a step changes the spte of gfn 0x64");
  assert.ok(wp.stack.includes("kvm_get_dirty_log"), wp.stack.join(" > "));
  assert.equal(wp.old & 2, 2, "the spte was writable");
  assert.equal(wp.new & 2, 0, "and is write-protected");
  const json = JSON.parse(recordedRunTrace(rec)) as { traceEvents: TraceEvent[] };
  const ev = json.traceEvents;
  assert.deepEqual(checkTraceEvents(ev), []);
  assert.ok(ev.some((e) => e.ph === "X" && e.name.includes("spte gfn 0x64 level 1")));
  assert.ok(ev.some((e) => e.ph === "B" && e.name === "kvm_get_dirty_log"));
  assert.ok(ev.some((e) => e.ph === "B" && e.name === "guest_write"));
  const v = ev.find((e) => e.ph === "i" && e.name === "violation");
  assert.equal(v?.args?.["invariant"], r.firstViolation.invariant);
  assert.ok(ev.some((e) => e.ph === "s") && ev.some((e) => e.ph === "f"), "a reads-from flow");
  // Each flow goes from a write of one thread to a later read of another of the same word.
  for (const [ri, wi] of readsFrom(rec.steps)) {
    const [rs, ws] = [rec.steps[ri], rec.steps[wi]];
    assert.ok(wi < ri && rs.thread !== ws.thread && rs.arr === ws.arr && rs.index === ws.index);
  }
  // The flush that never came: the vCPU's later write to gfn 0x64 hit its stale TLB entry; a
  // "no TLB flush" arrow runs from the write-protect to it, and the write is a marked instant.
  const hit = rec.steps.findIndex(
    (s) => s.arr === ARR_MEM && s.op === (Op.GuestWrite as number) && s.gfn === 0x64 && s.step > wp.step,
  );
  assert.ok(hit >= 0, "the vCPU writes gfn 0x64 after the write-protect");
  assert.deepEqual([...staleTlbHits(rec.steps)], [[hit, rec.steps.indexOf(wp)]]);
  const fs = ev.filter((e) => e.cat === "stale-tlb");
  assert.deepEqual(
    fs.map((e) => [e.ph, e.ts, e.tid]),
    [
      ["s", wp.step, wp.thread + 1],
      ["f", rec.steps[hit].step, rec.steps[hit].thread + 1],
    ],
  );
  assert.equal(fs[0].id, fs[1].id, "one flow, paired");
  const si = ev.find((e) => e.ph === "i" && e.name === "stale TLB hit");
  assert.equal(si?.ts, rec.steps[hit].step);
  assert.match(String(si?.args?.["spte"]), /^spte gfn 0x64 level 1 /);
  const again = await replay(r.firstViolation.schedule);
  assert.deepEqual(again.recording.steps, rec.steps);
  assert.deepEqual(again.trace, r.firstViolation.trace);
  assert.equal(recordedRunTrace(again.recording), recordedRunTrace(rec));
});

test("staleTlbHits: a guest write after another thread cleared W of its spte, unless a change set it again", () => {
  const step = (
    i: number,
    thread: number,
    arr: number,
    op: Op,
    gfn: number,
    pages: number,
    old: number,
    nw: number,
  ): RecordedStep => ({
    step: i,
    thread,
    op,
    arr,
    index: 0,
    field: "",
    gfn,
    pages,
    old,
    new: nw,
    stack: [],
    frames: [],
  });
  const wp = step(0, 1, ARR_SPT, Op.Cas, 0x200, 512, 0x7, 0x5); // a 2 MiB spte loses W
  const write = step(1, 0, ARR_MEM, Op.GuestWrite, 0x264, 1, 1, 2);
  assert.deepEqual([...staleTlbHits([wp, write])], [[1, 0]]);
  // The vCPU's own fault made it writable again: its TLB entry is fresh.
  const fault = step(1, 0, ARR_SPT, Op.Cas, 0x200, 512, 0x5, 0x7);
  assert.deepEqual([...staleTlbHits([wp, fault, { ...write, step: 2 }])], []);
  // Another gfn, or a change by the writing thread itself: no stale hit.
  assert.deepEqual([...staleTlbHits([wp, { ...write, gfn: 0x400 }])], []);
  assert.deepEqual([...staleTlbHits([{ ...wp, thread: 0 }, write])], []);
});

test("kvmmu explore --trace and replay --trace write the same trace; report draws it as a timeline", async () => {
  const a = join(dir, "explore.json");
  const b = join(dir, "replay.json");
  const e = await runKvmmu(["explore", "--bug", "skip-flush", "--trace", a, "--json"]);
  assert.equal(e.code, 1, e.err);
  const res = JSON.parse(e.out) as { firstViolation: { schedule: string }; recording?: unknown };
  assert.equal(res.recording, undefined, "the recording goes to the file, not stdout");
  const r = await runKvmmu(["replay", res.firstViolation.schedule, "--trace", b]);
  assert.equal(r.code, 1, r.err);
  assert.match(r.out, /guest-write guest memory gfn 0x64/);
  const ta = readFileSync(a, "utf8");
  assert.equal(readFileSync(b, "utf8"), ta);
  assert.deepEqual(checkTraceEvents((JSON.parse(ta) as { traceEvents: TraceEvent[] }).traceEvents), []);
  const html = join(dir, "r.html");
  const rep = await runKvmmu(["report", a, "-o", html]);
  assert.equal(rep.code, 0, rep.err);
  const h = readFileSync(html, "utf8");
  assert.match(h, /<svg[^>]*class="timeline"/);
  assert.match(h, /spte gfn 0x64 level 1/);
  assert.match(h, /kvm_get_dirty_log/);
  assert.match(h, /class="violation".*lost dirty page/s);
  assert.match(h, /class="flow"/);
  // The flush that never came, drawn as a red dashed arrow into the stale TLB hit.
  assert.match(
    h,
    /<g class="flow no-flush"><title>no TLB flush<\/title><line [^>]*marker-end="url\(#arrow-red\)"/,
  );
  assert.match(h, /<marker id="arrow-red"/);
  assert.match(h, /stale TLB hit/);
  const bad = await runKvmmu(["explore", "--bug", "skip-flush", "--trace", join(dir, "no/such/dir/t.json")]);
  assert.equal(bad.code, 2, bad.err);
});

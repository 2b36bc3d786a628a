import { test } from "node:test";
import assert from "node:assert/strict";
import { explore, Explorer, replay } from "../../src/verify/explore.js";
import { mergeRecorded, RecordedRun, RecordedStep, recordRun } from "../../src/verify/explore_record.js";
import { SCENARIOS } from "../../src/verify/scenarios.js";
import { decodeSchedule } from "../../src/verify/explore_schedule.js";

// A recorded run keeps its runs of steps (each thread records its own steps): it must record
// what one hand-off per step records, step for step, in fewer hand-offs.
for (const [scenario, strategy] of [
  ["backward-move", "pct"],
  ["skip-flush", "pct"],
  ["tdp-zap-yield-noflush", "pct"],
] as const)
  test(`${scenario} (${strategy}): the recorded re-run with runs of steps records as one step per hand-off does`, async () => {
    const o = { scenario, strategy, schedules: 2000, seed: 1, bug: true, all: false, record: true };
    const fast = await explore(o);
    const slow = await explore({ ...o, stepwise: true });
    assert.ok(fast.recording && slow.recording && fast.firstViolation, `${strategy} finds ${scenario}`);
    assert.equal(fast.firstViolation.schedule, slow.firstViolation?.schedule);
    assert.ok(fast.recording.steps.length > 0);
    assert.deepEqual(fast.recording.steps, slow.recording.steps);
    assert.deepEqual(
      fast.recording.steps.map((s) => s.step),
      fast.recording.steps.map((_, i) => i),
    );
    assert.deepEqual(fast.firstViolation.trace, slow.firstViolation?.trace);
    // The re-run alone: far fewer hand-offs than steps once it keeps its runs.
    const d = decodeSchedule(fast.firstViolation.schedule);
    const ex = new Explorer(SCENARIOS[scenario], true, 20000, false, d.mode, false, d.design);
    try {
      const r = recordRun(ex, d.choices, fast.firstViolation.schedule);
      assert.deepEqual(r.recording.steps, fast.recording.steps);
      assert.ok(
        ex.handOffs < r.recording.steps.length / 2,
        `${ex.handOffs} hand-offs, ${r.recording.steps.length} steps`,
      );
    } finally {
      await ex.close();
    }
  });

test("onRecording: every schedule recorded, the same schedules explored, each recording as replay records it", async () => {
  const o = {
    scenario: "plain-clear",
    strategy: "pct" as const,
    schedules: 30,
    seed: 2,
    bug: false,
    all: false,
  };
  const runs: RecordedRun[] = [];
  const traced = await explore({ ...o, onRecording: (r) => runs.push(r) });
  const plain = await explore(o);
  assert.equal(traced.schedules, plain.schedules);
  assert.equal(traced.steps, plain.steps);
  assert.equal(traced.violations, plain.violations);
  assert.equal(runs.length, traced.schedules);
  assert.equal(
    runs.reduce((n, r) => n + r.steps.length, 0),
    traced.steps,
  );
  for (const r of [runs[0], runs[runs.length - 1]]) {
    const again = await replay(r.schedule);
    assert.deepEqual(again.recording.steps, r.steps);
    assert.equal(again.recording.violation, r.violation);
  }
});

test("mergeRecorded: the threads' steps in schedule order; a count that disagrees throws", () => {
  const st = (thread: number, index: number): RecordedStep => ({
    step: -1,
    thread,
    op: 0,
    arr: 0,
    index,
    field: "",
    gfn: -1,
    pages: 0,
    old: 0,
    new: 0,
    stack: [],
    frames: [],
  });
  const m = mergeRecorded([[st(0, 10), st(0, 11)], [st(1, 20)]], [0, 1, 0]);
  assert.deepEqual(
    m.map((s) => [s.step, s.thread, s.index]),
    [
      [0, 0, 10],
      [1, 1, 20],
      [2, 0, 11],
    ],
  );
  assert.throws(() => mergeRecorded([[st(0, 1)], []], [0, 1]), /thread 1 recorded fewer/);
  assert.throws(() => mergeRecorded([[st(0, 1), st(0, 2)]], [0]), /thread 0 recorded 2 steps/);
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { explore, replay, decodeSchedule, encodeSchedule } from "../../src/verify/explore.js";
import { BUG_SCENARIO, SCENARIOS } from "../../src/verify/scenarios.js";
import { BUG, BugName } from "../../src/kvm_host.js";
import { BUG_TDP, TdpBugName } from "../../src/mmu/tdp_mmu/tdp_mmu_bugs.js";

const bugs = Object.keys(BUG) as BugName[];

for (const bug of bugs) {
  test(`explore finds bug ${bug} and not its fixed twin`, async () => {
    const found = await explore({
      scenario: BUG_SCENARIO[bug],
      strategy: "pct",
      schedules: 1000,
      seed: 1,
      bug: true,
      all: false,
    });
    assert.equal(found.violations, 1, `bug ${bug} not found in ${found.schedules} schedules`);
    assert.ok(found.firstViolation);
    assert.match(found.firstViolation.schedule, new RegExp(`^${BUG_SCENARIO[bug]}@bug:`));
    const fixed = await explore({
      scenario: BUG_SCENARIO[bug],
      strategy: "pct",
      schedules: 60,
      seed: 1,
      bug: false,
      all: false,
    });
    assert.equal(fixed.schedules, 60);
    assert.equal(fixed.violations, 0, fixed.firstViolation?.invariant);
  });
}

// The TDP MMU's bugs (design tdp-mmu, TDP mode): found by pct and random
// within the catalog's budget of 2,000 schedules, and their fixed twins clean.
const tdpBugs = (Object.keys(BUG_TDP) as TdpBugName[]).filter((b) => BUG_SCENARIO[b] !== undefined);

test("every one of the TDP MMU's six catalog bugs has a scenario", () => {
  assert.deepEqual(tdpBugs.sort(), [
    "tdp-clear-dirty-nonpresent",
    "tdp-iter-skip",
    "tdp-plain-write",
    "tdp-wrong-lock",
    "tdp-wrprot-early-break",
    "tdp-zap-yield-noflush",
  ]);
  for (const b of tdpBugs) assert.equal(SCENARIOS[BUG_SCENARIO[b]!].onlyDesign, "tdp-mmu");
});

for (const bug of tdpBugs)
  for (const strategy of ["pct", "random"] as const)
    test(`explore finds TDP MMU bug ${bug} (${strategy}) and not its fixed twin`, async () => {
      const scenario = BUG_SCENARIO[bug]!;
      const found = await explore({ scenario, strategy, schedules: 2000, seed: 1, bug: true, all: false });
      assert.equal(found.violations, 1, `bug ${bug} not found in ${found.schedules} schedules`);
      assert.match(found.firstViolation!.schedule, new RegExp(`^${scenario}@bug:`));
      const a = await replay(found.firstViolation!.schedule);
      assert.equal(a.violation, found.firstViolation!.invariant, "the schedule replays");
      const fixed = await explore({ scenario, strategy, schedules: 60, seed: 1, bug: false, all: false });
      assert.equal(fixed.schedules, 60);
      assert.equal(fixed.violations, 0, fixed.firstViolation?.invariant);
    });

test("a TDP MMU scenario is refused in shadow mode and on another design", async () => {
  const o = {
    scenario: "tdp-wrong-lock",
    strategy: "pct" as const,
    schedules: 1,
    seed: 1,
    bug: false,
    all: false,
  };
  await assert.rejects(explore({ ...o, mode: "shadow" }), /EINVAL: --mode.*tdp-wrong-lock/);
  await assert.rejects(explore({ ...o, design: "locked" }), /EINVAL: --wp.*tdp-wrong-lock/);
});

test("a failing schedule replays exactly, twice", async () => {
  const r = await explore({
    scenario: "skip-flush",
    strategy: "pct",
    schedules: 2000,
    seed: 1,
    bug: true,
    all: false,
  });
  assert.ok(r.firstViolation, "pct finds skip-flush");
  const a = await replay(r.firstViolation.schedule);
  const b = await replay(r.firstViolation.schedule);
  assert.equal(a.violation, r.firstViolation.invariant);
  assert.equal(b.violation, a.violation);
  assert.deepEqual(b.trace, a.trace);
  assert.equal(a.schedule, r.firstViolation.schedule);
});

test("dfs enumerates distinct schedules and finds a bug", async () => {
  const r = await explore({
    scenario: "backward-move",
    strategy: "dfs",
    schedules: 3000,
    seed: 1,
    bug: true,
    all: false,
    preemptions: 2,
  });
  assert.equal(r.violations, 1);
});

test("the structural audit runs after every step and stays clean without bugs", async () => {
  const r = await explore({
    scenario: "no-notifier-retry",
    strategy: "random",
    schedules: 40,
    seed: 3,
    bug: false,
    all: false,
    auditEveryStep: true,
  });
  assert.equal(r.violations, 0, r.firstViolation?.invariant);
  const b = await explore({
    scenario: "no-notifier-retry",
    strategy: "pct",
    schedules: 1000,
    seed: 1,
    bug: true,
    all: false,
    auditEveryStep: true,
  });
  assert.equal(b.violations, 1);
  assert.match(b.firstViolation!.invariant, /audit after step|guest write lost/);
});

test("schedule strings round-trip and bad ones are refused", () => {
  const c = [0, 0, 0, 1, 0, 1, 1, 0];
  const s = encodeSchedule("skip-flush", true, c);
  assert.equal(s, "skip-flush@bug:0*3,1,0,1*2,0");
  assert.deepEqual(decodeSchedule(s), { scenario: "skip-flush", bug: true, choices: c, mode: "tdp" });
  assert.equal(decodeSchedule(encodeSchedule("skip-flush", false, c, "shadow")).mode, "shadow");
  assert.throws(() => decodeSchedule("nope"), /EINVAL: SCHEDULE/);
  assert.throws(() => decodeSchedule("unknown@bug:0"), /unknown scenario/);
  // skip-flush has threads 0 and 1; counts are bounded before anything is expanded
  assert.throws(() => decodeSchedule("skip-flush@bug:0,2"), /SCHEDULE: item "2"/);
  assert.throws(() => decodeSchedule("skip-flush@bug:1*0"), /SCHEDULE: bad item "1\*0"/);
  assert.throws(() => decodeSchedule("skip-flush@bug:0*999999,1*2"), /more than 1000000 steps/);
  assert.throws(() => decodeSchedule("constructor@bug:0"), /unknown scenario/);
});

// The same catalog on the shadow MMU (guest paging off: the shadow MMU's direct pages). fast-pf-large
// cannot arise there: nonpaging maps 4 KiB only, and with guest paging
// fast_page_fault is not used, as in 3.11.
for (const bug of bugs.filter((b) => b !== "fast-pf-large")) {
  test(`explore finds bug ${bug} on the shadow MMU, and not its fixed twin`, async () => {
    const s = BUG_SCENARIO[bug];
    const found = await explore({
      scenario: s,
      strategy: "pct",
      schedules: 1000,
      seed: 1,
      bug: true,
      all: false,
      mode: "shadow",
    });
    assert.equal(found.violations, 1, `bug ${bug} not found in ${found.schedules} schedules`);
    assert.match(found.firstViolation!.schedule, new RegExp(`^${s}@bug/shadow:`));
    const fixed = await explore({
      scenario: s,
      strategy: "pct",
      schedules: 30,
      seed: 1,
      bug: false,
      all: false,
      mode: "shadow",
    });
    assert.equal(fixed.violations, 0, fixed.firstViolation?.invariant);
  });
}

test("a shadow-mode schedule replays on the shadow MMU", async () => {
  const r = await explore({
    scenario: "early-free",
    strategy: "pct",
    schedules: 1000,
    seed: 1,
    bug: true,
    all: false,
    mode: "shadow",
  });
  assert.ok(r.firstViolation);
  const a = await replay(r.firstViolation.schedule);
  assert.equal(a.violation, r.firstViolation.invariant);
  assert.equal(a.schedule, r.firstViolation.schedule);
});

// Runs of steps granted in one hand-off, and the VM restored between schedules, must explore
// exactly what one hand-off per step on a new VM does: same schedules, steps, violations.
for (const [scenario, strategy, bug] of [
  ["plain-clear", "pct", true],
  ["early-free", "random", false],
  ["no-notifier-retry", "pct", false],
  ["backward-move", "dfs", true],
] as const) {
  test(`runs of steps explore ${scenario} (${strategy}, ${bug ? "bug" : "fixed"}) as one step per hand-off does`, async () => {
    const o = { scenario, strategy, schedules: 40, seed: 7, bug, all: true, preemptions: 1 };
    const fast = await explore(o);
    const slow = await explore({ ...o, stepwise: true });
    assert.equal(fast.schedules, slow.schedules);
    assert.equal(fast.steps, slow.steps);
    assert.equal(fast.violations, slow.violations);
    assert.equal(fast.firstViolation?.schedule, slow.firstViolation?.schedule);
    assert.deepEqual(fast.firstViolation?.trace, slow.firstViolation?.trace);
    // A random walk switches threads about every other step; the others keep one for long runs.
    const fewer = strategy === "random" ? 1.5 : 3;
    assert.ok(fast.handOffs < slow.handOffs / fewer, `${fast.handOffs} hand-offs vs ${slow.handOffs}`);
  });
}

// need_resched under the explorer is a choice of the schedule (sched_preempted_at): the TDP MMU's
// yields must explore the same with runs of steps as with one step per hand-off.
for (const [strategy, bug] of [
  ["random", false],
  ["pct", true],
] as const)
  test(`tdp-zap-yield-noflush (${strategy}, ${bug ? "bug" : "fixed"}): runs of steps explore as one step per hand-off`, async () => {
    const o = { scenario: "tdp-zap-yield-noflush", strategy, schedules: 25, seed: 5, bug, all: true };
    const fast = await explore(o);
    const slow = await explore({ ...o, stepwise: true });
    assert.equal(fast.steps, slow.steps);
    assert.equal(fast.violations, slow.violations);
    assert.equal(fast.firstViolation?.schedule, slow.firstViolation?.schedule);
    assert.deepEqual(fast.firstViolation?.trace, slow.firstViolation?.trace);
  });

// Every scenario, both MMUs: the VM restored between schedules must be the VM its setup makes
// (a scenario whose state lives outside shared memory would explore differently here).
test("every scenario explores the same on a restored VM as on new ones", async () => {
  for (const scenario of Object.keys(SCENARIOS))
    for (const mode of ["tdp", "shadow"] as const) {
      if (mode === "shadow" && SCENARIOS[scenario].onlyDesign === "tdp-mmu") continue; // no shadow mode
      const o = { scenario, strategy: "pct" as const, schedules: 12, seed: 3, bug: true, all: true, mode };
      const fast = await explore(o);
      const slow = await explore({ ...o, stepwise: true });
      const what = `${scenario} (${mode})`;
      assert.equal(fast.steps, slow.steps, what);
      assert.equal(fast.violations, slow.violations, what);
      assert.equal(fast.firstViolation?.schedule, slow.firstViolation?.schedule, what);
    }
});

/**
 * Every scenario's code as it should be, at full budget: both MMUs, every registered design,
 * pct and random, FULL_BUDGET schedules each, on a pool of worker threads (one per core). No
 * schedule may break an invariant. `npm run test:explore` runs this file and the generated ones.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { explorePool, fullBudgetJobs } from "../../src/verify/explore_pool.js";
import { SCENARIOS } from "../../src/verify/scenarios.js";
import { designNames } from "../../src/mmu/design.js";
import { scenarioApplies } from "../../src/verify/explore_design.js";

const FULL_BUDGET = 2000;

test(`every scenario's fixed code: both MMUs, every design, pct and random, ${FULL_BUDGET} schedules each`, async () => {
  const jobs = fullBudgetJobs(FULL_BUDGET);
  let expected = 0;
  for (const s of Object.keys(SCENARIOS))
    for (const m of ["tdp", "shadow"] as const)
      for (const d of designNames()) if (scenarioApplies(s, d, m)) expected += 2;
  assert.equal(jobs.length, expected);
  // The TDP MMU has no shadow mode and no rmaps; the rmap designs run everything.
  assert.ok(!jobs.some((j) => j.design === "tdp-mmu" && j.mode === "shadow"));
  assert.ok(!jobs.some((j) => j.design === "tdp-mmu" && SCENARIOS[j.scenario].rmapOnly));
  const general = Object.values(SCENARIOS).filter((s) => s.onlyDesign === undefined).length;
  assert.equal(jobs.filter((j) => j.design === "locked").length, general * 2 * 2);
  // The TDP MMU's own scenarios run on it alone, in TDP mode.
  for (const [name, s] of Object.entries(SCENARIOS))
    if (s.onlyDesign !== undefined)
      assert.deepEqual(
        jobs.filter((j) => j.scenario === name).map((j) => `${j.design} ${j.mode} ${j.strategy}`),
        [`${s.onlyDesign} tdp pct`, `${s.onlyDesign} tdp random`],
      );
  const rs = await explorePool(jobs);
  assert.equal(rs.length, jobs.length);
  const short = rs.filter((r) => r.schedules !== FULL_BUDGET);
  assert.deepEqual(
    short.map((r) => `${r.scenario} ${r.mode} ${r.design} ${r.strategy}: ${r.schedules}`),
    [],
    "every job ran its whole budget",
  );
  const bad = rs.filter((r) => r.violations > 0);
  assert.deepEqual(
    bad.map(
      (r) =>
        `${r.scenario} ${r.mode} ${r.design} ${r.strategy}: ${r.firstViolation?.invariant} (replay ${r.firstViolation?.schedule})`,
    ),
    [],
  );
});

test("the pool returns each job's own result, in job order", async () => {
  const jobs = fullBudgetJobs(3).slice(0, 6);
  const rs = await explorePool(jobs, 2);
  assert.deepEqual(
    rs.map((r) => [r.scenario, r.mode, r.design, r.strategy, r.schedules]),
    jobs.map((j) => [j.scenario, j.mode, j.design, j.strategy, 3]),
  );
});

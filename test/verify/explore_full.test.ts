/**
 * Every scenario's code as it should be, at full budget: both MMUs, every registered design,
 * pct and random, FULL_BUDGET schedules each, on a pool of worker threads (one per core). No
 * schedule may break an invariant. `npm run test:explore` runs this file and the generated ones.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { explorePool, fullBudgetJobs, longestFirst } from "../../src/verify/explore_pool.js";
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
  // Longest first (a probe of each job ranks them): the pool's last jobs are then short ones.
  const rs = await explorePool(jobs, undefined, await longestFirst(jobs));
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

test("the pool returns each job's own result, in job order, whatever order it runs them in", async () => {
  const jobs = fullBudgetJobs(3).slice(0, 6);
  const want = jobs.map((j) => [j.scenario, j.mode, j.design, j.strategy, 3]);
  const rs = await explorePool(jobs, 2);
  assert.deepEqual(
    rs.map((r) => [r.scenario, r.mode, r.design, r.strategy, r.schedules]),
    want,
  );
  const back = await explorePool(jobs, 2, [5, 4, 3, 2, 1, 0]);
  assert.deepEqual(
    back.map((r) => [r.scenario, r.mode, r.design, r.strategy, r.schedules]),
    want,
  );
  // The same exploration either way: each job's schedules do not depend on the pool's order.
  assert.deepEqual(
    back.map((r) => r.steps),
    rs.map((r) => r.steps),
  );
  await assert.rejects(explorePool(jobs, 2, [0, 1]), /order must name every job once/);
});

test("longestFirst orders every job once, a costly scenario before a cheap one", async () => {
  // initially-set-zero runs about 3,200 steps a schedule; skip-flush under a hundred.
  const jobs = fullBudgetJobs(2000).filter(
    (j) =>
      (j.scenario === "skip-flush" || j.scenario === "initially-set-zero") &&
      j.mode === "tdp" &&
      j.design === "locked",
  );
  const order = await longestFirst(jobs, 2, 3);
  assert.deepEqual(
    [...order].sort((a, b) => a - b),
    jobs.map((_, i) => i),
  );
  const ranked = order.map((i) => `${jobs[i].scenario} ${jobs[i].strategy}`);
  assert.equal(ranked[0], "initially-set-zero random", ranked.join(", "));
  assert.equal(ranked[ranked.length - 1], "skip-flush pct", ranked.join(", "));
  // The same order again: it is computed from counts, not times.
  assert.deepEqual(await longestFirst(jobs, 2, 3), order);
});

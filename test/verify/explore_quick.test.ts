/**
 * The explorer at a small budget, as `npm run mutation`'s tests: every scenario's fixed code on
 * both MMUs with pct (QUICK schedules each, on the pool's worker threads; the locked design in
 * TDP mode only), and a few generated programs on every design. explore_full runs every job at
 * 2,000 schedules; a mutant run pays this file's cost once per mutant, so it stays small.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { explorePool, fullBudgetJobs } from "../../src/verify/explore_pool.js";
import { generate } from "../../src/verify/generate.js";
import { designNames } from "../../src/mmu/design.js";

const QUICK = 8;

test(`every scenario's fixed code at ${QUICK} schedules: no violation, every job runs its budget`, async () => {
  const jobs = fullBudgetJobs(QUICK, 7).filter(
    (j) => j.strategy === "pct" && (j.design !== "locked" || j.mode === "tdp"),
  );
  assert.ok(jobs.some((j) => j.design === "locked") && jobs.some((j) => j.mode === "shadow"));
  const rs = await explorePool(jobs);
  assert.equal(rs.length, jobs.length);
  assert.deepEqual(
    rs
      .filter((r) => r.schedules !== QUICK || r.violations > 0)
      .map(
        (r) =>
          `${r.scenario} ${r.mode} ${r.design} ${r.strategy}: ${r.schedules} schedules, ${r.firstViolation?.invariant} (replay ${r.firstViolation?.schedule})`,
      ),
    [],
  );
});

test("generated programs, every design and both MMUs: no violation", async () => {
  const r = await generate({
    programs: 2,
    schedules: QUICK,
    seed: 7,
    strategy: "pct",
    modes: ["tdp", "shadow"],
    designs: designNames(),
    bug: null,
  });
  assert.equal(r.programs, 2);
  assert.equal(
    r.violations,
    0,
    r.firstViolation ? `${r.firstViolation.text}: ${r.firstViolation.invariant}` : "",
  );
});

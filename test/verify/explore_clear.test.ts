/**
 * Manual dirty-log protection (KVM_CLEAR_DIRTY_LOG) under the explorer at a small budget: its two
 * scenarios on both MMUs and every design, and generated programs that use CLEAR. Every CLEAR
 * here runs in an explore worker thread (the controller only sets up and checks), so this file
 * is also the mutation run's proof that mutants are active in worker threads (docs/verification.md).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { explore } from "../../src/verify/explore.js";
import { generate } from "../../src/verify/generate.js";
import { designNames } from "../../src/mmu/design.js";
import { scenarioApplies } from "../../src/verify/explore_design.js";

for (const scenario of ["clear-protect-first", "initially-set-zero"])
  test(`${scenario}: the bug is found, and the fixed code holds on every design and both MMUs`, async () => {
    const found = await explore({
      scenario,
      strategy: "pct",
      schedules: 1000,
      seed: 1,
      bug: true,
      all: false,
    });
    assert.equal(found.violations, 1, `bug not found in ${found.schedules} schedules`);
    for (const design of designNames())
      for (const mode of ["tdp", "shadow"] as const)
        for (const strategy of ["pct", "random"] as const) {
          if (!scenarioApplies(scenario, design, mode)) continue;
          const r = await explore({
            scenario,
            strategy,
            schedules: 150,
            seed: 2,
            bug: false,
            all: false,
            mode,
            design,
          });
          assert.equal(
            r.violations,
            0,
            `${design} ${mode} ${strategy}: ${r.firstViolation?.invariant} (${r.firstViolation?.schedule})`,
          );
        }
  });

test("generated programs with CLEAR: no violation on any design or MMU", async () => {
  const r = await generate({
    programs: 4,
    schedules: 60,
    seed: 3,
    strategy: "pct",
    modes: ["tdp", "shadow"],
    designs: designNames(),
    bug: null,
    logs: ["manual", "manual-init"],
  });
  assert.equal(
    r.violations,
    0,
    r.firstViolation ? `${r.firstViolation.text}: ${r.firstViolation.invariant}` : "",
  );
  assert.equal(r.programs, 4);
});

/** The software-TLB micro-benchmark: warm-up rounds left out, statistics over the others. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { tlbHitBench } from "../../src/bench/tlb_hit.js";
import { median } from "../../src/bench/stats.js";
import { KvmError } from "../../src/errors.js";

test("tlb-hit: warm-up rounds excluded, paired ratio of the measured rounds", () => {
  const r = tlbHitBench({ rounds: 3, warmup: 1, accesses: 20_000 });
  assert.deepEqual(
    r.rounds.map((x) => x.warmup),
    [true, false, false, false],
  );
  const m = r.rounds.filter((x) => !x.warmup);
  assert.equal(r.tlbNsPerAccess.n, 3);
  assert.equal(r.tlbNsPerAccess.median, median(m.map((x) => x.tlbNs)));
  assert.equal(r.plainNsPerAccess.median, median(m.map((x) => x.plainNs)));
  assert.equal(r.ratio.median, r.tlbNsPerAccess.median / r.plainNsPerAccess.median);
  assert.ok(r.ratio.ci95[0] <= r.ratio.median && r.ratio.median <= r.ratio.ci95[1]);
  assert.throws(
    () => tlbHitBench({ rounds: 0, warmup: 0, accesses: 1000 }),
    (e: unknown) => e instanceof KvmError && e.code === "EINVAL",
  );
});

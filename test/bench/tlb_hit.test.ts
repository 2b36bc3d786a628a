/** The software-TLB micro-benchmark: tinybench per task, warm-up rounds left out, paired ratios. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { formatTlbHit, OWN_IMPL, tlbHitBench, TLB_HIT_TASKS, TlbHitImpl } from "../../src/bench/tlb_hit.js";
import { median } from "../../src/bench/stats.js";
import { KvmError } from "../../src/errors.js";

test("tlb-hit: warm-up rounds excluded, every task measured, paired ratios of the measured rounds", () => {
  const r = tlbHitBench({ rounds: 3, warmup: 1, accesses: 2048, timeMs: 5 });
  assert.equal(r.harness, "tinybench");
  assert.deepEqual(
    r.rounds.map((x) => x.warmup),
    [true, false, false, false],
  );
  const m = r.rounds.filter((x) => !x.warmup);
  for (const t of TLB_HIT_TASKS) {
    const s = r.tasks[t];
    assert.ok(s !== undefined, t);
    assert.equal(s.n, 3);
    assert.equal(s.median, median(m.map((x) => x.tasks[t]?.p50Ns ?? NaN)), t);
    assert.ok(s.median > 0 && Number.isFinite(s.median), `${t}: ${s.median} ns`);
    for (const x of r.rounds) assert.ok((x.tasks[t]?.samples ?? 0) >= 10, `${t}: tinybench took samples`);
  }
  assert.equal(r.tlbNsPerAccess, r.tasks["vcpu-read"]);
  assert.equal(r.plainNsPerAccess.median, median(m.map((x) => x.plainNs)));
  assert.equal(r.ratio.median, r.tlbNsPerAccess.median / r.plainNsPerAccess.median);
  const q6 = [r.ratios.vcpuRead, r.ratios.vcpuWrite, r.ratios.ctxRead, r.ratios.ctxWrite];
  for (const q of [...q6, r.ratios.guestRead, r.ratios.guestWrite]) {
    assert.ok(q !== undefined);
    assert.ok(q.ci95[0] <= q.median && q.median <= q.ci95[1]);
  }
  assert.match(formatTlbHit(r), /ctx write \d/);
  assert.match(formatTlbHit(r), /guest write \d/);
});

test("tlb-hit: a build without a guest context is measured through the vCPU only", () => {
  const impl: TlbHitImpl = {
    label: "no ctx",
    createVcpu: () => ({ ...OWN_IMPL.createVcpu(), ctx: null }),
  };
  const r = tlbHitBench({ rounds: 1, warmup: 0, accesses: 1024, timeMs: 2 }, impl);
  assert.equal(r.impl, "no ctx");
  assert.equal(r.tasks["ctx-read"], undefined);
  assert.equal(r.ratios.ctxRead, undefined);
  assert.equal(r.tasks["guest-read"], undefined);
  assert.equal(r.ratios.guestWrite, undefined);
  assert.ok(r.ratios.vcpuWrite.median > 0);
});

test("tlb-hit: bad options are EINVAL", () => {
  for (const o of [
    { rounds: 0, warmup: 0, accesses: 1024 },
    { rounds: 1, warmup: -1, accesses: 1024 },
    { rounds: 1, warmup: 0, accesses: 1000 },
    { rounds: 1, warmup: 0, accesses: 1024, timeMs: 0 },
  ])
    assert.throws(
      () => tlbHitBench(o),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL",
      JSON.stringify(o),
    );
});

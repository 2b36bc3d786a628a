/** src/bench/stats.ts against known values, and the bootstrap's properties. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  bootstrapMedianCi,
  formatRatio,
  median,
  mulberry32,
  pairedRatio,
  summarize,
  verdict,
} from "../../src/bench/stats.js";
import { KvmError } from "../../src/errors.js";

const close = (a: number, b: number, eps = 1e-9): void => assert.ok(Math.abs(a - b) <= eps, `${a} != ${b}`);

test("summarize: known values", () => {
  const s = summarize([2, 4, 4, 4, 5, 5, 7, 9]);
  assert.equal(s.n, 8);
  assert.equal(s.median, 4.5);
  assert.equal(s.mean, 5);
  close(s.stdev, Math.sqrt(32 / 7)); // sample standard deviation (n - 1)
  assert.equal(s.min, 2);
  assert.equal(s.max, 9);
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(summarize([7]).stdev, 0);
});

test("bootstrap CI: contains the median, inside [min, max], reproducible, exact on constant data", () => {
  const rnd = mulberry32(7);
  const xs = Array.from({ length: 25 }, () => 10 + rnd() * 5);
  const s = summarize(xs);
  assert.ok(s.ci95[0] <= s.median && s.median <= s.ci95[1], `${s.ci95.join(", ")} around ${s.median}`);
  assert.ok(s.ci95[0] >= s.min && s.ci95[1] <= s.max);
  assert.ok(s.ci95[0] < s.ci95[1], "a real interval on noisy data");
  assert.deepEqual(bootstrapMedianCi(xs), s.ci95, "same data, same seed: same interval");
  assert.deepEqual(summarize([3, 3, 3, 3]).ci95, [3, 3]);
  // More samples from the same distribution: a narrower interval.
  const many = Array.from({ length: 400 }, () => 10 + rnd() * 5);
  const w = (c: [number, number]): number => c[1] - c[0];
  assert.ok(w(summarize(many).ci95) < w(s.ci95));
});

test("paired ratio: exact pairs, a shown difference, and no difference shown", () => {
  const rnd = mulberry32(3);
  const b = Array.from({ length: 12 }, () => 5 + rnd() * 10);
  const half = pairedRatio(
    b.map((x) => x / 2),
    b,
  );
  assert.equal(half.median, 0.5);
  assert.deepEqual(half.ci95, [0.5, 0.5], "pairs resampled together: a constant ratio has no spread");
  // The pairing matters: machine drift (b) cancels out, the 0.6x effect with 5% noise shows.
  const a = b.map((x) => x * 0.6 * (0.95 + rnd() * 0.1));
  const r = pairedRatio(a, b);
  assert.ok(r.ci95[0] <= r.median && r.median <= r.ci95[1]);
  assert.ok(r.ci95[1] < 0.7 && r.ci95[0] > 0.5, `${formatRatio(r)}`);
  assert.equal(verdict(r, "lockless faster", "lockless slower"), "lockless faster");
  const same = pairedRatio(
    b.map((x) => x * (0.9 + rnd() * 0.2)),
    b,
  );
  assert.equal(verdict(same, "faster", "slower"), "no difference shown", formatRatio(same));
  assert.equal(verdict({ median: 1.5, ci95: [1.2, 1.8] }, "faster", "slower"), "slower");
  const two = pairedRatio([1, 1.1], [2, 2.1]);
  assert.equal(two.n, 2);
  assert.equal(verdict(two, "faster", "slower"), "too few samples for a verdict");
  assert.equal(formatRatio({ median: 0.6234, ci95: [0.5512, 0.7049] }), "0.62x [0.55, 0.70]");
});

test("stats: bad input is a typed EINVAL", () => {
  for (const f of [
    () => summarize([]),
    () => summarize([1, NaN]),
    () => pairedRatio([1, 2], [1]),
    () => median([]),
  ])
    assert.throws(f, (e: unknown) => e instanceof KvmError && e.code === "EINVAL");
});

/**
 * Statistics for the benchmarks: descriptive statistics from simple-statistics, and percentile
 * bootstrap confidence intervals with a seeded RNG so a result file can be reproduced from its
 * samples. Ratios of two designs are bootstrapped pairwise: the designs alternate iteration by
 * iteration, so iteration k of one and iteration k of the other saw the same machine state.
 */
import {
  max,
  mean,
  median as ssMedian,
  min,
  quantileSorted,
  sampleStandardDeviation,
} from "simple-statistics";
import { einval } from "../errors.js";

export interface Summary {
  n: number;
  median: number;
  mean: number;
  /** Sample standard deviation (n - 1); 0 for one sample. */
  stdev: number;
  min: number;
  max: number;
  /** Percentile bootstrap 95% CI of the median. */
  ci95: [number, number];
}

export interface RatioSummary {
  /** median(a) / median(b). */
  median: number;
  ci95: [number, number];
  /** Pairs; absent when the interval was not bootstrapped here. */
  n?: number;
}

/** Fewer pairs than this get no verdict: a bootstrap of 1 or 2 pairs has no real spread. */
export const MIN_VERDICT_SAMPLES = 3;

/** Resamples drawn for every bootstrap interval. */
export const BOOTSTRAP_RESAMPLES = 2000;
/** The fixed RNG seed of the bootstrap (a result must not depend on when it was computed). */
export const BOOTSTRAP_SEED = 0x5eed;

/** mulberry32: a small, well-distributed 32-bit PRNG; uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function check(name: string, xs: readonly number[]): void {
  if (xs.length === 0) throw einval(name, "no samples");
  if (!xs.every((x) => Number.isFinite(x))) throw einval(name, "a sample is not a finite number");
}

export function median(xs: readonly number[]): number {
  check("samples", xs);
  return ssMedian([...xs]);
}

/** 2.5th and 97.5th percentiles of the bootstrap distribution. */
function interval(stats: number[]): [number, number] {
  stats.sort((a, b) => a - b);
  return [quantileSorted(stats, 0.025), quantileSorted(stats, 0.975)];
}

/** Percentile bootstrap 95% CI of the median of xs. */
export function bootstrapMedianCi(
  xs: readonly number[],
  resamples = BOOTSTRAP_RESAMPLES,
  seed = BOOTSTRAP_SEED,
): [number, number] {
  check("samples", xs);
  const rnd = mulberry32(seed);
  const n = xs.length;
  const buf = new Array<number>(n);
  const stats: number[] = [];
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < n; i++) buf[i] = xs[Math.floor(rnd() * n)];
    stats.push(ssMedian(buf));
  }
  return interval(stats);
}

export function summarize(xs: readonly number[]): Summary {
  check("samples", xs);
  const a = [...xs];
  return {
    n: a.length,
    median: ssMedian(a),
    mean: mean(a),
    stdev: a.length > 1 ? sampleStandardDeviation(a) : 0,
    min: min(a),
    max: max(a),
    ci95: bootstrapMedianCi(a),
  };
}

/**
 * median(a) / median(b) with a paired percentile bootstrap CI: each resample draws iteration
 * indices once and takes both designs' samples of those iterations.
 */
export function pairedRatio(
  a: readonly number[],
  b: readonly number[],
  resamples = BOOTSTRAP_RESAMPLES,
  seed = BOOTSTRAP_SEED,
): RatioSummary {
  check("a", a);
  check("b", b);
  if (a.length !== b.length) throw einval("b", `has ${b.length} samples, a has ${a.length}: pairs needed`);
  const rnd = mulberry32(seed);
  const n = a.length;
  const ba = new Array<number>(n);
  const bb = new Array<number>(n);
  const stats: number[] = [];
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < n; i++) {
      const k = Math.floor(rnd() * n);
      ba[i] = a[k];
      bb[i] = b[k];
    }
    stats.push(ssMedian(ba) / ssMedian(bb));
  }
  return { median: ssMedian([...a]) / ssMedian([...b]), ci95: interval(stats), n };
}

/** "faster" when the whole interval is below 1, "slower" above; otherwise no difference shown. */
export function verdict(r: RatioSummary, below: string, above: string): string {
  if (r.n !== undefined && r.n < MIN_VERDICT_SAMPLES) return "too few samples for a verdict";
  if (r.ci95[1] < 1) return below;
  if (r.ci95[0] > 1) return above;
  return "no difference shown";
}

/** `0.62x [0.55, 0.70]`. */
export function formatRatio(r: RatioSummary): string {
  return `${r.median.toFixed(2)}x [${r.ci95[0].toFixed(2)}, ${r.ci95[1].toFixed(2)}]`;
}

/** A Summary of nanoseconds as ms: `median 12.30 ms [11.9, 12.8], mean 12.4 ± 0.5, min .. max`. */
export function formatMs(s: Summary): string {
  const f = (ns: number): string => (ns / 1e6).toFixed(2);
  return `median ${f(s.median)} ms [${f(s.ci95[0])}, ${f(s.ci95[1])}], mean ${f(s.mean)} ± ${f(s.stdev)}, min ${f(s.min)}, max ${f(s.max)} (n=${s.n})`;
}

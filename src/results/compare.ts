/**
 * `kvmmu compare`: each figure of the first file (the baseline) against the same figure of every
 * other file, as the ratio of medians other/baseline with a 95% percentile-bootstrap interval.
 * The runs are independent (different processes, maybe machines), so each resample draws each
 * file's samples on its own, unlike the paired ratio of two designs within one run.
 */
import { quantileSorted, median as ssMedian } from "simple-statistics";
import { einval } from "../errors.js";
import { BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, MIN_VERDICT_SAMPLES, mulberry32 } from "../bench/stats.js";
import { Figure, figures } from "./figures.js";
import type { Loaded } from "./load.js";

export interface Side {
  n: number;
  median: number;
}

export interface CompareRow {
  figure: string;
  unit: string;
  better: "lower" | "higher";
  file: string;
  baseline: Side;
  other: Side;
  /** median(other) / median(baseline). */
  ratio: number;
  /** null: fewer than MIN_VERDICT_SAMPLES samples on a side, or a zero baseline. */
  ci95: [number, number] | null;
  /** "better"/"worse": the interval excludes 1.00x; "no change shown"; "no interval". */
  verdict: "better" | "worse" | "no change shown" | "no interval";
}

export interface CompareResult {
  command: string;
  schemaVersion: number;
  baseline: string;
  files: string[];
  rows: CompareRow[];
  /** Differences in options or machine between the baseline and another file: the ratios then mix effects. */
  warnings: string[];
}

function show(v: unknown): string {
  return v === undefined ? "(absent)" : JSON.stringify(v);
}

/** Each option or machine field whose value differs from the baseline's, as one line per file. */
export function differences(base: Loaded, other: Loaded): string[] {
  const out: string[] = [];
  const diff = (what: string, a: Record<string, unknown>, b: Record<string, unknown>): void => {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    const d = keys.filter((k) => JSON.stringify(a[k]) !== JSON.stringify(b[k]));
    if (d.length > 0)
      out.push(
        `${other.file}: ${what} differ from ${base.file}: ${d.map((k) => `${k} ${show(a[k])} -> ${show(b[k])}`).join(", ")}`,
      );
  };
  const rec = (x: unknown): Record<string, unknown> => (x ?? {}) as Record<string, unknown>;
  diff("options", rec(base.doc.options), rec(other.doc.options));
  diff("machines", rec(base.doc.machine), rec(other.doc.machine));
  return out;
}

/** Percentile bootstrap 95% CI of median(b)/median(a), a and b resampled independently. */
export function bootstrapRatioCi(
  a: readonly number[],
  b: readonly number[],
  resamples = BOOTSTRAP_RESAMPLES,
  seed = BOOTSTRAP_SEED,
): [number, number] {
  const rnd = mulberry32(seed);
  const ba = new Array<number>(a.length);
  const bb = new Array<number>(b.length);
  const stats: number[] = [];
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < a.length; i++) ba[i] = a[Math.floor(rnd() * a.length)];
    for (let i = 0; i < b.length; i++) bb[i] = b[Math.floor(rnd() * b.length)];
    const q = ssMedian(bb) / ssMedian(ba);
    if (Number.isFinite(q)) stats.push(q);
  }
  stats.sort((x, y) => x - y);
  return [quantileSorted(stats, 0.025), quantileSorted(stats, 0.975)];
}

function row(base: Figure, other: Figure, file: string): CompareRow {
  const mb = ssMedian(base.samples);
  const mo = ssMedian(other.samples);
  const ratio = mb === 0 ? (mo === 0 ? 1 : Infinity) : mo / mb;
  const enough =
    base.samples.length >= MIN_VERDICT_SAMPLES && other.samples.length >= MIN_VERDICT_SAMPLES && mb !== 0;
  const ci95 = enough ? bootstrapRatioCi(base.samples, other.samples) : null;
  let verdict: CompareRow["verdict"] = "no interval";
  if (ci95) {
    const up = ci95[0] > 1;
    const down = ci95[1] < 1;
    verdict = !up && !down ? "no change shown" : up === (base.better === "higher") ? "better" : "worse";
  }
  return {
    figure: base.key,
    unit: base.unit,
    better: base.better,
    file,
    baseline: { n: base.samples.length, median: mb },
    other: { n: other.samples.length, median: mo },
    ratio,
    ci95,
    verdict,
  };
}

/** Files of one command, of schema versions this kvmmu reads (load() refused others). */
export function compare(files: Loaded[]): CompareResult {
  if (files.length < 2) throw einval("FILES", "compare needs at least two result files");
  const [base, ...others] = files;
  for (const f of others) {
    if (f.doc.command !== base.doc.command)
      throw einval(
        f.file,
        `is a ${f.doc.command} result, ${base.file} is a ${base.doc.command} result: compare files of one command`,
      );
  }
  const baseFigs = figures(base.doc);
  const rows: CompareRow[] = [];
  const warnings = others.flatMap((f) => differences(base, f));
  // load() read only versions this kvmmu reads, each a superset of the one before: the figures
  // are named alike, so an old file compares with a new one.
  for (const f of others)
    if (f.doc.schemaVersion !== base.doc.schemaVersion)
      warnings.push(
        `${f.file}: schema version ${f.doc.schemaVersion}, ${base.file} has ${base.doc.schemaVersion} (read alike)`,
      );
  for (const f of others) {
    const theirs = new Map(figures(f.doc).map((x) => [x.key, x]));
    for (const b of baseFigs) {
      const o = theirs.get(b.key);
      if (o) rows.push(row(b, o, f.file));
    }
  }
  return {
    command: base.doc.command,
    schemaVersion: base.doc.schemaVersion,
    baseline: base.file,
    files: others.map((f) => f.file),
    rows,
    warnings,
  };
}

function num(x: number): string {
  if (!Number.isFinite(x)) return String(x);
  const a = Math.abs(x);
  if (a === 0) return "0";
  if (a >= 1000) return x.toFixed(0);
  if (a >= 10) return x.toFixed(1);
  if (a >= 1) return x.toFixed(2);
  return x.toPrecision(3);
}

function cells(r: CompareRow): string[] {
  const ratio = `${r.ratio.toFixed(2)}x`;
  const ci = r.ci95 ? `[${r.ci95[0].toFixed(2)}, ${r.ci95[1].toFixed(2)}]` : "-";
  const flag = r.verdict === "better" || r.verdict === "worse" ? `* ${r.verdict}` : r.verdict;
  return [
    r.figure,
    r.unit,
    `${num(r.baseline.median)} (n=${r.baseline.n})`,
    `${num(r.other.median)} (n=${r.other.n})`,
    ratio,
    ci,
    flag,
  ];
}

const HEAD = ["figure", "unit", "baseline median", "median", "ratio", "95% CI", "change"];

function intro(c: CompareResult, f: string): string {
  return `${c.command}: ${f} against baseline ${c.baseline} (ratio of medians, 95% bootstrap CI; * the interval excludes 1.00x)`;
}

export function formatCompare(c: CompareResult): string {
  const out: string[] = [];
  for (const f of c.files) {
    const rows = c.rows.filter((r) => r.file === f).map(cells);
    const w = HEAD.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    const line = (r: string[]): string =>
      r
        .map((x, i) => (i === 0 || i === 1 || i === 6 ? x.padEnd(w[i]) : x.padStart(w[i])))
        .join("  ")
        .trimEnd();
    out.push(intro(c, f), line(HEAD), line(w.map((n) => "-".repeat(n))), ...rows.map(line), "");
  }
  for (const m of c.warnings) out.push(`warning: ${m}`);
  return out.join("\n").trimEnd();
}

export function formatCompareMarkdown(c: CompareResult): string {
  const out: string[] = [];
  const esc = (s: string): string => s.replace(/\|/g, "\\|");
  for (const f of c.files) {
    out.push(`### ${esc(intro(c, f))}`, "", `| ${HEAD.join(" | ")} |`, "|---|---|--:|--:|--:|--:|---|");
    for (const r of c.rows.filter((x) => x.file === f))
      out.push(
        `| ${cells(r)
          .map((x, i) => (i === 6 && x.startsWith("*") ? `**${esc(x)}**` : esc(x)))
          .join(" | ")} |`,
      );
    out.push("");
  }
  for (const m of c.warnings) out.push(`> **Warning:** ${esc(m)}`, "");
  return out.join("\n").trimEnd();
}

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
import { markdownTable } from "markdown-table";

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
  /**
   * "within noise": the interval lies within 1 ± noise (criterion's noise threshold); else
   * "better"/"worse": the interval excludes 1.00x; "no change shown"; "no interval".
   */
  verdict: Verdict;
  /** Shown slower (worse) beyond --fail-on-regression: the whole interval (or, with one sample, the ratio) past it. */
  regression?: boolean;
}

export type Verdict = "better" | "worse" | "within noise" | "no change shown" | "no interval";

export interface CompareOptions {
  /** A change whose CI lies within 1 ± noise is "within noise" (0.02: 2%). Default 0. */
  noise?: number;
  /** A figure shown worse by more than this fraction (0.05: 5%) is a regression. */
  failOnRegression?: number;
}

export interface CompareResult {
  command: string;
  schemaVersion: number;
  baseline: string;
  files: string[];
  rows: CompareRow[];
  /** Differences in options, command line, kvmmu or machine between the baseline and another file: the ratios then mix effects. */
  warnings: string[];
  noise: number;
  /** --fail-on-regression as a fraction; null when not asked. */
  failOnRegression: number | null;
  /** The rows shown worse beyond failOnRegression (the command exits 1 when any). */
  regressions: CompareRow[];
}

function show(v: unknown): string {
  return v === undefined ? "(absent)" : JSON.stringify(v);
}

/** The command line without the values of --output and --csv (file names differ by nature). */
function argvOf(doc: Loaded["doc"]): string[] | undefined {
  const a = (doc as { argv?: string[] }).argv;
  if (!a) return undefined;
  return a.filter((_, i) => !["--output", "--csv", "-o"].includes(a[i - 1] ?? ""));
}

/** Load averages this far apart (1-minute, in runnable threads) make timings incomparable. */
export const LOAD_DIFFERENCE = 1;

/**
 * Each option, provenance or machine field whose value differs from the baseline's, as one line
 * per kind: options, the command line, kvmmu's version and commit, the machine (CPU model,
 * kernel, Node, ...), and the load average when it differs by LOAD_DIFFERENCE or more.
 */
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
  const prov = (d: Loaded["doc"]) => ({
    argv: argvOf(d)?.join(" "),
    kvmmuVersion: (d as { kvmmuVersion?: string }).kvmmuVersion,
    gitCommit: d.gitCommit ?? undefined,
  });
  diff("command lines or kvmmu builds", prov(base.doc), prov(other.doc));
  const { loadAverage: la, ...ma } = rec(base.doc.machine);
  const { loadAverage: lb, ...mb } = rec(other.doc.machine);
  diff("machines", ma, mb);
  const load = (x: unknown): number[] => {
    const l = x as { start: number; end: number | null } | undefined;
    return l ? [l.start, l.end ?? l.start] : [];
  };
  const [a0, a1] = load(la);
  const [b0, b1] = load(lb);
  if (
    a0 !== undefined &&
    b0 !== undefined &&
    Math.max(Math.abs(a0 - b0), Math.abs(a1 - b1)) >= LOAD_DIFFERENCE
  )
    out.push(
      `${other.file}: load average ${b0.toFixed(2)} -> ${b1.toFixed(2)}, ${base.file} had ${a0.toFixed(2)} -> ${a1.toFixed(2)}`,
    );
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

/** criterion's rule: within noise first, then the side of 1.00x the interval lies on. */
export function verdictOf(ci95: [number, number] | null, better: "lower" | "higher", noise: number): Verdict {
  if (!ci95) return "no interval";
  if (ci95[0] >= 1 - noise && ci95[1] <= 1 + noise) return "within noise";
  const up = ci95[0] > 1;
  const down = ci95[1] < 1;
  if (!up && !down) return "no change shown";
  return up === (better === "higher") ? "better" : "worse";
}

/** Shown worse by more than `limit`: the whole interval past 1 ± limit, or the ratio with one sample. */
export function isRegression(r: Pick<CompareRow, "ci95" | "ratio" | "better">, limit: number): boolean {
  const [lo, hi] = r.ci95 ?? [r.ratio, r.ratio];
  return r.better === "lower" ? lo > 1 + limit : hi < 1 - limit;
}

function row(base: Figure, other: Figure, file: string, o: CompareOptions): CompareRow {
  const mb = ssMedian(base.samples);
  const mo = ssMedian(other.samples);
  const ratio = mb === 0 ? (mo === 0 ? 1 : Infinity) : mo / mb;
  const enough =
    base.samples.length >= MIN_VERDICT_SAMPLES && other.samples.length >= MIN_VERDICT_SAMPLES && mb !== 0;
  const ci95 = enough ? bootstrapRatioCi(base.samples, other.samples) : null;
  const r: CompareRow = {
    figure: base.key,
    unit: base.unit,
    better: base.better,
    file,
    baseline: { n: base.samples.length, median: mb },
    other: { n: other.samples.length, median: mo },
    ratio,
    ci95,
    verdict: verdictOf(ci95, base.better, o.noise ?? 0),
  };
  if (o.failOnRegression !== undefined && Number.isFinite(ratio))
    r.regression = isRegression(r, o.failOnRegression);
  return r;
}

/** Files of one command, of schema versions this kvmmu reads (load() refused others). */
export function compare(files: Loaded[], o: CompareOptions = {}): CompareResult {
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
      const x = theirs.get(b.key);
      if (x) rows.push(row(b, x, f.file, o));
    }
  }
  return {
    command: base.doc.command,
    schemaVersion: base.doc.schemaVersion,
    baseline: base.file,
    files: others.map((f) => f.file),
    rows,
    warnings,
    noise: o.noise ?? 0,
    failOnRegression: o.failOnRegression ?? null,
    regressions: rows.filter((r) => r.regression === true),
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
  return [
    r.figure,
    r.unit,
    `${num(r.baseline.median)} (n=${r.baseline.n})`,
    `${num(r.other.median)} (n=${r.other.n})`,
    ratio,
    ci,
    r.verdict + (r.regression ? " (REGRESSION)" : ""),
  ];
}

/** Marks the significant verdicts: "* worse" in text, bold in Markdown. */
function flagged(r: CompareRow): boolean {
  return r.verdict === "better" || r.verdict === "worse";
}

const HEAD = ["figure", "unit", "baseline median", "median", "ratio", "95% CI", "change"];

function intro(c: CompareResult, f: string): string {
  const noise = c.noise > 0 ? `; within noise: the CI inside ±${(c.noise * 100).toFixed(1)}%` : "";
  const fail =
    c.failOnRegression !== null
      ? `; REGRESSION: shown worse by more than ${(c.failOnRegression * 100).toFixed(1)}%`
      : "";
  return `${c.command}: ${f} against baseline ${c.baseline} (ratio of medians, 95% bootstrap CI; * the interval excludes 1.00x${noise}${fail})`;
}

export function formatCompare(c: CompareResult): string {
  const out: string[] = [];
  for (const f of c.files) {
    const rows = c.rows
      .filter((r) => r.file === f)
      .map((r) => {
        const x = cells(r);
        if (flagged(r)) x[6] = `* ${x[6]}`;
        return x;
      });
    const w = HEAD.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    const line = (r: string[]): string =>
      r
        .map((x, i) => (i === 0 || i === 1 || i === 6 ? x.padEnd(w[i]) : x.padStart(w[i])))
        .join("  ")
        .trimEnd();
    out.push(intro(c, f), line(HEAD), line(w.map((n) => "-".repeat(n))), ...rows.map(line), "");
  }
  return out.join("\n").trimEnd();
}

/** Markdown's special characters in a cell, escaped so they show as typed. */
export function escapeMarkdown(s: string): string {
  return s.replace(/[\\`*_[\]|<>]/g, (ch) => `\\${ch}`);
}

/** GitHub-flavoured Markdown, tables built by markdown-table; the warnings are the CLI's (stderr). */
export function formatCompareMarkdown(c: CompareResult): string {
  const out: string[] = [];
  for (const f of c.files) {
    const rows = c.rows
      .filter((x) => x.file === f)
      .map((r) => {
        const x = cells(r).map(escapeMarkdown);
        if (flagged(r)) x[6] = `**${x[6]}**`;
        return x;
      });
    out.push(
      `### ${escapeMarkdown(intro(c, f))}`,
      "",
      markdownTable([HEAD, ...rows], { align: ["l", "l", "r", "r", "r", "r", "l"] }),
      "",
    );
  }
  return out.join("\n").trimEnd();
}

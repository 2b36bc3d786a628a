/**
 * The report's migrate-perf plots, in the order of the dirty-log-perf ones: first the answer
 * (each design against the baseline, per metric, as a forest plot of paired ratios with CIs),
 * then the runs behind it (every measured migration's total time, downtime and rounds, with each
 * design's median and CI as `kvmmu migrate-perf` computed them).
 */
import * as Plot from "@observablehq/plot";
import type { MigrateMetric } from "../bench/migrate_perf.js";
import {
  Band,
  commands,
  forestPlot,
  PlotSpec,
  Point,
  RatioRow,
  seriesName,
  stripMarks,
} from "./perf_plots.js";
import type { MigratePerfDocT } from "./schema.js";

type MigratePerf = Pick<MigratePerfDocT, "options" | "results" | "ratio"> & {
  ratios?: MigratePerfDocT["ratios"];
};
export interface MigratePerfRun {
  file: string;
  perf: MigratePerf;
  cmd: string;
}

/** Each metric as the terminal table names it, its unit and how a value is drawn. */
const METRICS: { m: MigrateMetric; name: string; unit: string; scale: (x: number) => number }[] = [
  { m: "totalTimeMs", name: "total time", unit: "ms", scale: (x) => x },
  { m: "downtimeMs", name: "downtime", unit: "ms", scale: (x) => x },
  { m: "rounds", name: "rounds", unit: "pre-copy rounds", scale: (x) => x },
  { m: "transferredBytes", name: "transferred", unit: "MiB", scale: (x) => x / 2 ** 20 },
  { m: "guestRate", name: "guest throughput", unit: "M incr/s", scale: (x) => x / 1e6 },
  { m: "finalSyncMs", name: "final sync", unit: "ms", scale: (x) => x },
  { m: "bulkBytesPerSec", name: "bulk round", unit: "MiB/s", scale: (x) => x / 2 ** 20 },
];

/** Each design against the baseline, one row per metric, as the file saved them. */
export function migrateRatioRows(runs: MigratePerfRun[]): RatioRow[] {
  const many = runs.length > 1;
  const out: RatioRow[] = [];
  for (const { file, perf } of runs) {
    // Files of `npm run bench` keep lockless/locked only.
    const ratios = perf.ratios ?? (perf.ratio ? { "lockless/locked": perf.ratio } : {});
    for (const [key, q] of Object.entries(ratios)) {
      if (!q) continue;
      const pair = seriesName(many, key, file);
      for (const { m, name } of METRICS) {
        const r = q[m];
        if (r)
          out.push({
            pair,
            figure: `migration ${name}`,
            median: r.median,
            lo: r.ci95[0],
            hi: r.ci95[1],
            verdict: r.verdict ?? "",
          });
      }
    }
  }
  return out;
}

/** The measured runs that completed and verified (those the statistics are over), per metric. */
function runPoints(
  runs: MigratePerfRun[],
  metric: (typeof METRICS)[number],
): { points: Point[]; bands: Band[] } {
  const many = runs.length > 1;
  const points: Point[] = [];
  const bands: Band[] = [];
  for (const { file, perf } of runs)
    for (const [wp, d] of Object.entries(perf.results)) {
      const s = d.stats[metric.m];
      if (!s) continue;
      const series = seriesName(many, wp, file);
      const call = metric.name;
      // Point's `ms` is the y value, in the metric's unit.
      d.runs
        .filter((x) => !x.warmup && x.verified)
        .forEach((x, k) => {
          const v = x[metric.m];
          if (v !== undefined) points.push({ series, call, iteration: k + 1, ms: metric.scale(v) });
        });
      bands.push({
        series,
        call,
        median: metric.scale(s.median),
        lo: metric.scale(s.ci95[0]),
        hi: metric.scale(s.ci95[1]),
      });
    }
  return { points, bands };
}

/** The downtime limits of the runs, drawn where they fall near the data (else only named). */
function limitMarks(runs: MigratePerfRun[], bands: Band[]): { marks: Plot.Markish[]; text: string } {
  const limits = [...new Set(runs.map((r) => r.perf.options.downtimeLimitMs))];
  const top = Math.max(0, ...bands.map((b) => b.hi));
  const shown = limits.filter((l) => l <= 2 * top);
  const text = `downtime limit ${limits.map((l) => `${l} ms`).join(", ")}${shown.length < limits.length ? " (off the scale where not drawn)" : ""}`;
  return {
    text,
    marks: shown.flatMap((l) => [
      Plot.ruleY([l], { stroke: "#b00", strokeDasharray: "6,3" }),
      Plot.text([`limit ${l} ms`], {
        frameAnchor: "right",
        y: l,
        dy: -7,
        dx: -4,
        textAnchor: "end",
        fill: "#b00",
      }),
    ]),
  };
}

function runsPlot(runs: MigratePerfRun[], m: MigrateMetric, cmd: string): PlotSpec[] {
  const metric = METRICS.find((x) => x.m === m)!;
  const { points, bands } = runPoints(runs, metric);
  if (points.length === 0) return [];
  const domain = [...new Set(bands.map((b) => b.series))];
  const limit = m === "downtimeMs" ? limitMarks(runs, bands) : { marks: [], text: "" };
  return [
    {
      id: `migrate-perf-${metric.name.replace(/ /g, "-")}`,
      title: `migrate-perf: ${metric.name} of every measured migration`,
      caption:
        `Each measured migration that completed and verified (dots), the design's median (black tick) and its 95% bootstrap CI (bar)` +
        `${limit.text ? `; red: the ${limit.text}` : ""}. From: ${cmd}`,
      options: {
        color: { legend: true, domain },
        x: { label: null, domain },
        y: { label: `${metric.name} (${metric.unit})`, grid: true, zero: true },
        marks: [...stripMarks(points, bands, false), ...limit.marks],
      },
    },
  ];
}

/** The migrate-perf plots: ratios against the baseline, then total time, downtime and rounds per run. */
export function migratePerfPlots(runs: MigratePerfRun[]): PlotSpec[] {
  if (runs.length === 0) return [];
  const cmd = commands(runs);
  const rows = migrateRatioRows(runs);
  const forest =
    rows.length === 0
      ? []
      : [
          forestPlot(
            "migrate-perf-ratios",
            "migrate-perf: each design against the baseline",
            rows,
            "Ratio of medians (design / baseline) over whole migrations, run k of each design paired, with its 95% bootstrap CI (bar); " +
              "1.0: no difference. Below 1: shorter, fewer or faster; guest throughput above 1 is faster. " +
              `The verdict names a difference only where the CI excludes 1. From: ${cmd}`,
          ),
        ];
  return [
    ...forest,
    ...runsPlot(runs, "totalTimeMs", cmd),
    ...runsPlot(runs, "downtimeMs", cmd),
    ...runsPlot(runs, "rounds", cmd),
  ];
}

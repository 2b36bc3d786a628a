/**
 * The report's dirty-log-perf plots, in the order a reader asks: first the answer (each design
 * against the baseline: ratios with their CIs), then the distributions behind it (every measured
 * iteration, median and CI), then where the time of the call that write-protects goes. Every
 * call is named as KVM's test names it and costed per dirty page by dirty_log_perf_calls.ts.
 */
import { basename } from "node:path";
import * as Plot from "@observablehq/plot";
import { bootstrapMedianCi, median } from "../bench/stats.js";
import {
  harvestCalls,
  KERNEL_NS_PER_PAGE,
  LogMode,
  logModeOfIterations,
  nsPerDirtyPage,
  protectingCall,
} from "../bench/dirty_log_perf_calls.js";
import { designNames } from "../mmu/design.js";
import type { DirtyLogPerfDocT } from "./schema.js";

type Perf = Pick<DirtyLogPerfDocT, "options" | "results" | "ratio"> & {
  ratios?: DirtyLogPerfDocT["ratios"];
  baseline?: string;
};
export interface PerfRun {
  file: string;
  perf: Perf;
  /** The exact command line (argv) when the file has it, else rebuilt from its options. */
  cmd: string;
}

export interface PlotSpec {
  /** Stable id, the section's data-plot attribute (tests look plots up by it). */
  id: string;
  title: string;
  caption: string;
  options: Plot.PlotOptions;
}

/** One row of the forest plot and of the ratio table. */
export interface RatioRow {
  /** "<design>/<baseline>" and the file when several are drawn. */
  pair: string;
  figure: string;
  median: number;
  lo: number;
  hi: number;
  verdict: string;
}

/** "lockless" alone, or "lockless (run-b.json)" when several files are drawn together. */
export function seriesName(many: boolean, design: string, file: string): string {
  return many ? `${design} (${basename(file)})` : design;
}

export function commands(runs: { cmd: string }[]): string {
  return [...new Set(runs.map((r) => r.cmd))].join("; ");
}

/** Registered designs first, in registry order; then any other name a file holds. */
function byRegistry(a: string, b: string): number {
  const order = designNames();
  const rank = (x: string): number => {
    const i = order.indexOf(x.split("/")[0]);
    return i < 0 ? order.length : i;
  };
  return rank(a) - rank(b);
}

/** Each design against its baseline, one row per call (KVM's names) and guest throughput. */
export function ratioRows(runs: PerfRun[]): RatioRow[] {
  const many = runs.length > 1;
  const out: RatioRow[] = [];
  for (const { file, perf } of runs) {
    const ratios = perf.ratios ?? (perf.ratio ? { "lockless/locked": perf.ratio } : {});
    for (const key of Object.keys(ratios).sort(byRegistry)) {
      const q = ratios[key];
      const pair = seriesName(many, key, file);
      const calls = q.calls ?? {
        "get dirty log": q.getDirtyLog,
        ...(q.clearDirtyLog ? { "clear dirty log": q.clearDirtyLog } : {}),
      };
      for (const [figure, r] of [...Object.entries(calls), ["guest throughput", q.guestThroughput] as const])
        out.push({ pair, figure, median: r.median, lo: r.ci95[0], hi: r.ci95[1], verdict: r.verdict ?? "" });
    }
  }
  return out;
}

function ratioPlot(rows: RatioRow[], cmd: string): PlotSpec {
  return forestPlot(
    "ratios",
    "each design against the baseline",
    rows,
    "Ratio of medians (design / baseline), paired by iteration, with its 95% bootstrap CI (bar); 1.0: no difference. " +
      "Below 1 a call is faster; guest throughput above 1 is faster. The verdict names a difference only where the CI excludes 1. " +
      `From: ${cmd}`,
  );
}

/** A forest plot: one row per ratio, its CI as a bar, the median as a dot, 1.0 marked, the verdict. */
export function forestPlot(id: string, title: string, rows: RatioRow[], caption: string): PlotSpec {
  const label = (d: RatioRow): string => `${d.pair}: ${d.figure}`;
  const xs = rows.flatMap((r) => [r.lo, r.hi]).filter((x) => x > 0 && Number.isFinite(x));
  const domain = [Math.min(0.5, ...xs) / 1.1, Math.max(2, ...xs) * 1.6];
  return {
    id,
    title,
    caption,
    options: {
      marginLeft: 250,
      marginRight: 150,
      height: Math.max(140, 26 * rows.length + 60),
      color: { legend: true, domain: [...new Set(rows.map((r) => r.verdict))] },
      x: {
        label: "ratio to the baseline (×, log scale)",
        type: "log",
        domain,
        grid: true,
        tickFormat: (d: number) => String(+d.toPrecision(2)),
      },
      // The rows name themselves; a y title would sit on the first row's label.
      y: { label: null, domain: rows.map(label) },
      marks: [
        Plot.ruleX([1], { stroke: "#555", strokeDasharray: "4,3" }),
        Plot.ruleY(rows, { y: label, x1: "lo", x2: "hi", stroke: "verdict", strokeWidth: 3 }),
        Plot.dot(rows, { y: label, x: "median", fill: "verdict", r: 4 }),
        Plot.text(rows, {
          y: label,
          x: "hi",
          text: (d: RatioRow) => `${d.median.toFixed(2)}× ${d.verdict}`,
          dx: 6,
          textAnchor: "start",
          fontSize: 11,
        }),
      ],
    },
  };
}

export interface Point {
  series: string;
  call: string;
  iteration: number;
  ms: number;
}
export interface Band {
  series: string;
  call: string;
  median: number;
  lo: number;
  hi: number;
}

/** Every measured iteration of every call, and each call's median with its CI, per series. */
function distributions(runs: PerfRun[]): { points: Point[]; bands: Band[]; tput: Point[]; tbands: Band[] } {
  const many = runs.length > 1;
  const points: Point[] = [];
  const bands: Band[] = [];
  const tput: Point[] = [];
  const tbands: Band[] = [];
  const band = (series: string, call: string, xs: number[]): Band => {
    const ci = bootstrapMedianCi(xs);
    return { series, call, median: median(xs), lo: ci[0], hi: ci[1] };
  };
  for (const { file, perf } of runs)
    for (const [wp, s] of Object.entries(perf.results)) {
      const m = s ? s.iterations.filter((i) => !i.warmup) : [];
      if (!s || m.length === 0) continue;
      const series = seriesName(many, wp, file);
      for (const c of harvestCalls(logModeOfIterations(s.iterations, s.logMode))) {
        const xs = m.map((i) => c.ns(i) / 1e6);
        xs.forEach((ms, k) => points.push({ series, call: c.name, iteration: k + 1, ms }));
        bands.push(band(series, c.name, xs));
      }
      const ts = m.map((i) => i.guestThroughput / 1e6);
      ts.forEach((ms, k) => tput.push({ series, call: "guest", iteration: k + 1, ms }));
      tbands.push(band(series, "guest", ts));
    }
  return { points, bands, tput, tbands };
}

/** A strip of points per series (one panel per call) with the median tick and the CI bar. */
export function stripMarks(points: Point[], bands: Band[], facet: boolean): Plot.Markish[] {
  const fx = facet ? "call" : undefined;
  return [
    Plot.ruleX(bands, {
      x: "series",
      y1: "lo",
      y2: "hi",
      stroke: "series",
      strokeWidth: 6,
      strokeOpacity: 0.3,
      fx,
    }),
    Plot.tickY(bands, { x: "series", y: "median", stroke: "black", strokeWidth: 2, fx }),
    Plot.dot(points, { x: "series", y: "ms", stroke: "series", r: 3, fx }),
  ];
}

function distributionPlots(runs: PerfRun[], cmd: string): PlotSpec[] {
  const { points, bands, tput, tbands } = distributions(runs);
  const domain = [...new Set(bands.map((b) => b.series))];
  const x = { label: null, axis: null, domain } as const;
  return [
    {
      id: "get-dirty-log",
      title: "each call of the harvest, every measured iteration",
      caption:
        "One panel per call as KVM's dirty_log_perf_test names it (get dirty log; clear dirty log under manual protect; " +
        "ring harvest and ring reset with a dirty ring; then their total). Dots: each measured iteration; black tick: " +
        `median; bar: its 95% bootstrap CI. From: ${cmd}`,
      options: {
        color: { legend: true, domain },
        fx: { label: null, domain: [...new Set(bands.map((b) => b.call))] },
        x,
        y: { label: "time per call (ms)", grid: true, zero: true },
        marks: stripMarks(points, bands, true),
      },
    },
    {
      id: "guest-throughput",
      title: "guest throughput, every measured iteration",
      caption: `Guest writes per second from resume to pause of each measured iteration (dots), median (tick) and its 95% CI (bar). From: ${cmd}`,
      options: {
        color: { legend: true, domain },
        x: { ...x, axis: "bottom" },
        y: { label: "guest throughput (M writes/s)", grid: true, zero: true },
        marks: stripMarks(tput, tbands, false),
      },
    },
  ];
}

interface PerPage {
  series: string;
  call: string;
  ns: number;
  lo: number;
  hi: number;
}

/** The kernel's figure matching the runs: vCPUs parked (24 ns) or writing (50 ns). */
function kernelLine(parked: boolean): { ns: number; text: string } {
  return parked
    ? { ns: KERNEL_NS_PER_PAGE.parked, text: `kernel, vCPUs parked: ${KERNEL_NS_PER_PAGE.parked} ns` }
    : {
        ns: KERNEL_NS_PER_PAGE.running,
        text: `kernel, ${KERNEL_NS_PER_PAGE.runningVcpus} vCPUs writing: ${KERNEL_NS_PER_PAGE.running} ns`,
      };
}

function perPagePlot(runs: PerfRun[], cmd: string): PlotSpec {
  const many = runs.length > 1;
  const rows: PerPage[] = [];
  for (const { file, perf } of runs)
    for (const [wp, s] of Object.entries(perf.results)) {
      if (!s) continue;
      const c = protectingCall(logModeOfIterations(s.iterations, s.logMode));
      const r = nsPerDirtyPage(c, s.iterations);
      if (r.n > 0)
        rows.push({
          series: seriesName(many, wp, file),
          call: c.name,
          ns: r.median,
          lo: r.ci95[0],
          hi: r.ci95[1],
        });
    }
  const lines = [...new Set(runs.map((r) => r.perf.options.park))].map(kernelLine);
  const calls = [...new Set(rows.map((r) => r.call))].join(" / ");
  return {
    id: "ns-per-page",
    title: `${calls}: cost per dirty page against the kernel`,
    caption:
      `Median ns per dirty page of the call that write-protects (${calls}: the kernel's figure is for GET without manual protect ` +
      `or CLEAR with it), per iteration's call time / its dirty pages, with its 95% CI. Reference: ${lines.map((l) => l.text).join("; ")}, ` +
      `the kernel's figure for the same condition${runs.some((r) => r.perf.options.vcpus !== KERNEL_NS_PER_PAGE.runningVcpus && !r.perf.options.park) ? ` (measured with ${KERNEL_NS_PER_PAGE.runningVcpus} vCPUs)` : ""}. From: ${cmd}`,
    options: {
      color: { legend: true, domain: rows.map((d) => d.series) },
      marginBottom: many ? 70 : 40,
      x: { label: null, tickRotate: many ? -12 : 0 },
      y: { label: `${calls} per dirty page (ns)`, grid: true, zero: true },
      marks: [
        Plot.barY(rows, { x: "series", y: "ns", fill: "series" }),
        Plot.ruleX(rows, { x: "series", y1: "lo", y2: "hi", strokeWidth: 2 }),
        ...lines.flatMap((l) => [
          Plot.ruleY([l.ns], { stroke: "#b00", strokeDasharray: "6,3" }),
          Plot.text([l.text], {
            frameAnchor: "right",
            y: l.ns,
            dy: -7,
            dx: -4,
            textAnchor: "end",
            fill: "#b00",
          }),
        ]),
      ],
    },
  };
}

function decompositionPlot(runs: PerfRun[], cmd: string): PlotSpec {
  const many = runs.length > 1;
  const parts: { series: string; iteration: number; part: string; ms: number }[] = [];
  const modes = new Set<LogMode>();
  for (const { file, perf } of runs)
    for (const [wp, s] of Object.entries(perf.results)) {
      if (!s) continue;
      const mode = logModeOfIterations(s.iterations, s.logMode);
      modes.add(mode);
      const series = seriesName(many, wp, file);
      s.iterations
        .filter((i) => !i.warmup)
        .forEach((it, k) => {
          for (const p of protectingCall(mode).parts)
            parts.push({ series, iteration: k + 1, part: p.name, ms: p.ns(it) / 1e6 });
        });
    }
  const call = [...modes].map((m) => protectingCall(m).name).join(" / ");
  return {
    id: "decomposition",
    title: `where the ${call} time goes`,
    caption: `Each measured iteration's ${call} call (the one that write-protects) split into waiting for mmu_lock, harvesting and write-protecting, and the remote TLB flush, one panel per design. From: ${cmd}`,
    options: {
      color: { legend: true, domain: ["mmu_lock wait", "harvest + write-protect", "remote TLB flush"] },
      fx: { label: null },
      x: { label: "iteration" },
      y: { label: `${call} time (ms)`, grid: true },
      marks: [Plot.barY(parts, { fx: "series", x: "iteration", y: "ms", fill: "part" }), Plot.ruleY([0])],
    },
  };
}

function sweepPlot(runs: PerfRun[], cmd: string): PlotSpec[] {
  const sizes = new Set(runs.map((r) => r.perf.options.vcpus * r.perf.options.bytesPerVcpu));
  if (sizes.size < 2) return [];
  const sweep: { design: string; gib: number; msPerGib: number; lo: number; hi: number }[] = [];
  for (const { perf } of runs) {
    const gib = (perf.options.vcpus * perf.options.bytesPerVcpu) / 2 ** 30;
    for (const [wp, s] of Object.entries(perf.results)) {
      if (!s) continue;
      const g = s.getDirtyLog;
      sweep.push({
        design: wp,
        gib,
        msPerGib: g.medianNs / 1e6 / gib,
        lo: g.ci95Ns[0] / 1e6 / gib,
        hi: g.ci95Ns[1] / 1e6 / gib,
      });
    }
  }
  sweep.sort((a, b) => a.gib - b.gib);
  return [
    {
      id: "scale-sweep",
      title: "get dirty log time per GiB against guest size",
      caption: `Median get dirty log time divided by guest memory, with its 95% CI, for each guest size given. From: ${cmd}`,
      options: {
        color: { legend: true },
        x: { label: "guest memory (GiB)", type: "log", tickFormat: (d: number) => String(+d.toPrecision(3)) },
        y: { label: "get dirty log time per GiB (ms/GiB)", grid: true, zero: true },
        marks: [
          Plot.ruleX(sweep, { x: "gib", y1: "lo", y2: "hi", stroke: "design" }),
          Plot.line(sweep, { x: "gib", y: "msPerGib", stroke: "design", marker: "dot" }),
        ],
      },
    },
  ];
}

/** The dirty-log-perf plots: ratios, distributions, cost per page, decomposition, size sweep. */
export function perfPlots(runs: PerfRun[]): PlotSpec[] {
  if (runs.length === 0) return [];
  const cmd = commands(runs);
  const rows = ratioRows(runs);
  return [
    ...(rows.length > 0 ? [ratioPlot(rows, cmd)] : []),
    ...distributionPlots(runs, cmd),
    perPagePlot(runs, cmd),
    decompositionPlot(runs, cmd),
    ...sweepPlot(runs, cmd),
  ];
}

/**
 * `kvmmu report`: one self-contained HTML file from saved results. The plots are drawn here, in
 * Node, with Observable Plot on a linkedom document, and inlined as SVG with their CSS: the
 * file needs no script and no network to be viewed. Each plot shows up only when the given files
 * hold its data.
 */
import { basename } from "node:path";
import * as Plot from "@observablehq/plot";
import { parseHTML } from "linkedom";
import { bootstrapMedianCi, median } from "../bench/stats.js";
import type { Loaded } from "./load.js";
import type { CatalogDocT, DirtyLogPerfDocT, KernbenchDocT, MigrateDocT, ResultDoc } from "./schema.js";

/** The kernel's get-dirty-log cost per dirty page on machines like this one (ns). */
export const KERNEL_NS_PER_PAGE = { parked: 24, running: 50 } as const;

type Perf = Pick<DirtyLogPerfDocT, "options" | "results" | "ratio">;
interface PerfRun {
  file: string;
  perf: Perf;
  cmd: string;
}

export interface PlotSpec {
  /** Stable id, the section's data-plot attribute (tests look plots up by it). */
  id: string;
  title: string;
  caption: string;
  options: Plot.PlotOptions;
}

const WIDTH = 760;

function mib(b: number): string {
  return b % 2 ** 30 === 0 ? `${b / 2 ** 30}G` : `${b / 2 ** 20}M`;
}

/** The command line that produced a result, rebuilt from its recorded options. */
export function commandLine(doc: ResultDoc): string {
  switch (doc.command) {
    case "dirty-log-perf":
      return perfCommand(doc.options);
    case "bench":
      return "npm run bench";
    case "kernbench": {
      const o = doc.options;
      return `kvmmu kernbench -v ${o.vcpus} -p ${o.processes} -j ${o.jobs} -n ${o.runs} --mode ${o.modes.join(",")} --logging ${o.logging.join(",")}`;
    }
    case "dirty-log-test": {
      const o = doc.options;
      return `kvmmu dirty-log-test -v ${o.vcpus} -b ${mib(o.bytesPerVcpu)} --wp ${o.wp.join(",")} --oracle ${o.oracles.join(",")} --seed ${o.seed}`;
    }
    case "explore": {
      const o = doc.options;
      return `kvmmu explore --scenario ${o.scenario} --strategy ${o.strategy} --schedules ${o.schedules} --seed ${o.seed}`;
    }
    case "catalog": {
      const o = doc.options;
      return `node dist/src/bench/catalog.js --budget ${o.budget} --seeds ${o.seeds}${o.mode === "shadow" ? " --shadow" : ""}`;
    }
    case "migrate":
      return `kvmmu migrate --local${doc.options.wp ? ` --wp ${doc.options.wp}` : ""}${doc.results.mode === "postcopy" ? " --postcopy" : ""}`;
    case "migrate-perf": {
      const o = doc.options;
      return `kvmmu migrate-perf -n ${o.runs} -b ${mib(o.memoryBytes)} -v ${o.vcpus} --max-bandwidth ${o.maxBandwidth} --downtime-limit ${o.downtimeLimitMs} --min-rounds ${o.minRounds}`;
    }
  }
}

function perfCommand(o: DirtyLogPerfDocT["options"]): string {
  if (o.preset) return `kvmmu dirty-log-perf --preset ${o.preset}`;
  return (
    `kvmmu dirty-log-perf -v ${o.vcpus} -b ${mib(o.bytesPerVcpu)} -i ${o.iterations} --wp ${o.wp.join(",")}` +
    `${o.mode === "shadow" ? " --mode shadow" : ""}${o.park ? " --park" : ""}${o.thp ? "" : " --no-thp"}`
  );
}

function perfRuns(files: Loaded[]): PerfRun[] {
  const out: PerfRun[] = [];
  for (const { file, doc } of files) {
    if (doc.command === "dirty-log-perf") out.push({ file, perf: doc, cmd: perfCommand(doc.options) });
    else if (doc.command === "bench")
      out.push({ file, perf: doc.results.dirtyLogPerf, cmd: "npm run bench" });
  }
  return out;
}

/** "lockless" alone, or "lockless (run-b.json)" when several files are drawn together. */
function seriesName(many: boolean, design: string, file: string): string {
  return many ? `${design} (${basename(file)})` : design;
}

function commands(runs: { cmd: string }[]): string {
  return [...new Set(runs.map((r) => r.cmd))].join("; ");
}

function measured<T extends { warmup: boolean }>(xs: T[]): T[] {
  return xs.filter((x) => !x.warmup);
}

function perfPlots(runs: PerfRun[]): PlotSpec[] {
  if (runs.length === 0) return [];
  const many = runs.length > 1;
  const iters: { series: string; iteration: number; ms: number; mwps: number }[] = [];
  const bands: { series: string; x1: number; x2: number; lo: number; hi: number; median: number }[] = [];
  const parts: { series: string; iteration: number; part: string; ms: number }[] = [];
  const perPage: { series: string; park: boolean; ns: number; lo: number; hi: number }[] = [];
  for (const { file, perf } of runs)
    for (const [wp, s] of Object.entries(perf.results)) {
      if (!s) continue;
      const series = seriesName(many, wp, file);
      const m = measured(s.iterations);
      if (m.length === 0) continue;
      m.forEach((it, k) => {
        iters.push({ series, iteration: k + 1, ms: it.getDirtyLogNs / 1e6, mwps: it.guestThroughput / 1e6 });
        parts.push(
          { series, iteration: k + 1, part: "mmu_lock wait", ms: it.lockWaitNs / 1e6 },
          { series, iteration: k + 1, part: "harvest + write-protect", ms: it.protectNs / 1e6 },
          { series, iteration: k + 1, part: "remote TLB flush", ms: it.flushNs / 1e6 },
        );
      });
      bands.push({
        series,
        x1: 1,
        x2: Math.max(m.length, 1.001),
        lo: s.getDirtyLog.ci95Ns[0] / 1e6,
        hi: s.getDirtyLog.ci95Ns[1] / 1e6,
        median: s.getDirtyLog.medianNs / 1e6,
      });
      const nsp = m.filter((i) => i.dirtyPages > 0).map((i) => i.getDirtyLogNs / i.dirtyPages);
      if (nsp.length) {
        const ci = bootstrapMedianCi(nsp);
        perPage.push({ series, park: perf.options.park, ns: median(nsp), lo: ci[0], hi: ci[1] });
      }
    }
  const cmd = commands(runs);
  const color = { legend: true, domain: [...new Set(iters.map((d) => d.series))] };
  const out: PlotSpec[] = [
    {
      id: "get-dirty-log",
      title: "get-dirty-log time per iteration",
      caption: `Each measured iteration's KVM_GET_DIRTY_LOG time per write-protect design; dashed line: median, band: its 95% bootstrap CI. From: ${cmd}`,
      options: {
        color,
        x: { label: "iteration", type: "point" },
        y: { label: "get-dirty-log time (ms)", grid: true, zero: true },
        marks: [
          Plot.rect(bands, { x1: "x1", x2: "x2", y1: "lo", y2: "hi", fill: "series", fillOpacity: 0.15 }),
          Plot.ruleY(bands, { y: "median", x1: "x1", x2: "x2", stroke: "series", strokeDasharray: "4,3" }),
          Plot.line(iters, { x: "iteration", y: "ms", stroke: "series", marker: "dot" }),
        ],
      },
    },
    {
      id: "ns-per-page",
      title: "get-dirty-log cost per dirty page against the kernel",
      caption: `Median ns per dirty page (get-dirty-log time / dirty pages, per iteration) with its 95% CI; reference lines: the kernel's ${KERNEL_NS_PER_PAGE.parked} ns with vCPUs parked and ${KERNEL_NS_PER_PAGE.running} ns with vCPUs writing. From: ${cmd}`,
      options: {
        color: { legend: true, domain: perPage.map((d) => d.series) },
        marginBottom: many ? 80 : 50,
        x: { label: "design", tickRotate: many ? -15 : 0, labelOffset: many ? 72 : 40 },
        y: { label: "get-dirty-log time per dirty page (ns)", grid: true, zero: true },
        marks: [
          Plot.barY(perPage, { x: "series", y: "ns", fill: "series" }),
          Plot.ruleX(perPage, { x: "series", y1: "lo", y2: "hi", strokeWidth: 2 }),
          Plot.ruleY([KERNEL_NS_PER_PAGE.parked], { stroke: "#555", strokeDasharray: "6,3" }),
          Plot.ruleY([KERNEL_NS_PER_PAGE.running], { stroke: "#b00", strokeDasharray: "2,2" }),
          Plot.text([`kernel, parked: ${KERNEL_NS_PER_PAGE.parked} ns`], {
            frameAnchor: "left",
            y: KERNEL_NS_PER_PAGE.parked,
            dy: 9,
            dx: 4,
            textAnchor: "start",
          }),
          Plot.text([`kernel, vCPUs writing: ${KERNEL_NS_PER_PAGE.running} ns`], {
            frameAnchor: "left",
            y: KERNEL_NS_PER_PAGE.running,
            dy: -6,
            dx: 4,
            textAnchor: "start",
            fill: "#b00",
          }),
        ],
      },
    },
    {
      id: "guest-throughput",
      title: "guest throughput per iteration",
      caption: `Guest writes per second from resume to pause of each measured iteration, per design. From: ${cmd}`,
      options: {
        color,
        x: { label: "iteration", type: "point" },
        y: { label: "guest throughput (M writes/s)", grid: true, zero: true },
        marks: [Plot.line(iters, { x: "iteration", y: "mwps", stroke: "series", marker: "dot" })],
      },
    },
    {
      id: "decomposition",
      title: "where each harvest's time goes",
      caption: `Each iteration's get-dirty-log split into waiting for mmu_lock, harvesting and write-protecting, and the remote TLB flush, one panel per design. From: ${cmd}`,
      options: {
        color: { legend: true, domain: ["mmu_lock wait", "harvest + write-protect", "remote TLB flush"] },
        fx: { label: null },
        x: { label: "iteration" },
        y: { label: "get-dirty-log time (ms)", grid: true },
        marks: [Plot.barY(parts, { fx: "series", x: "iteration", y: "ms", fill: "part" }), Plot.ruleY([0])],
      },
    },
  ];
  // The scale sweep: several guest sizes among the files.
  const sizes = new Set(runs.map((r) => r.perf.options.vcpus * r.perf.options.bytesPerVcpu));
  if (sizes.size > 1) {
    const sweep: { design: string; gib: number; msPerGib: number; lo: number; hi: number }[] = [];
    for (const { perf } of runs) {
      const gib = (perf.options.vcpus * perf.options.bytesPerVcpu) / 2 ** 30;
      for (const [wp, s] of Object.entries(perf.results)) {
        if (!s) continue;
        sweep.push({
          design: wp,
          gib,
          msPerGib: s.getDirtyLog.medianNs / 1e6 / gib,
          lo: s.getDirtyLog.ci95Ns[0] / 1e6 / gib,
          hi: s.getDirtyLog.ci95Ns[1] / 1e6 / gib,
        });
      }
    }
    sweep.sort((a, b) => a.gib - b.gib);
    out.push({
      id: "scale-sweep",
      title: "get-dirty-log time per GiB against guest size",
      caption: `Median get-dirty-log time divided by guest memory, with its 95% CI, for each guest size given. From: ${cmd}`,
      options: {
        color: { legend: true },
        x: { label: "guest memory (GiB)", type: "log", tickFormat: (d: number) => String(+d.toPrecision(3)) },
        y: { label: "get-dirty-log time per GiB (ms/GiB)", grid: true, zero: true },
        marks: [
          Plot.ruleX(sweep, { x: "gib", y1: "lo", y2: "hi", stroke: "design" }),
          Plot.line(sweep, { x: "gib", y: "msPerGib", stroke: "design", marker: "dot" }),
        ],
      },
    });
  }
  return out;
}

function kernbenchPlot(docs: { file: string; doc: KernbenchDocT }[]): PlotSpec[] {
  if (docs.length === 0) return [];
  const many = docs.length > 1;
  const runs: { mode: string; logging: string; s: number }[] = [];
  const cells: { mode: string; logging: string; s: number; lo: number; hi: number }[] = [];
  for (const { file, doc } of docs)
    for (const [mode, per] of Object.entries(doc.results))
      for (const [logging, c] of Object.entries(per ?? {})) {
        if (!c) continue;
        const l = seriesName(many, logging, file);
        const m = `${mode === "tdp" ? "EPT on (tdp)" : "EPT off (shadow)"}`;
        for (const r of measured(c.runs)) runs.push({ mode: m, logging: l, s: r.realNs / 1e9 });
        cells.push({
          mode: m,
          logging: l,
          s: c.real.median / 1e9,
          lo: c.real.ci95[0] / 1e9,
          hi: c.real.ci95[1] / 1e9,
        });
      }
  return [
    {
      id: "kernbench",
      title: "kernbench elapsed time per MMU mode and dirty logging",
      caption: `Median elapsed time of the fixed guest workload (bars), its 95% CI (black line) and each measured run (dots), per MMU mode and dirty-logging design. From: ${commands(docs.map((d) => ({ cmd: commandLine(d.doc) })))}`,
      options: {
        color: { legend: true },
        fx: { label: null },
        x: { label: "dirty logging", axis: null },
        y: { label: "elapsed time (s)", grid: true, zero: true },
        marks: [
          Plot.barY(cells, { fx: "mode", x: "logging", y: "s", fill: "logging" }),
          Plot.ruleX(cells, { fx: "mode", x: "logging", y1: "lo", y2: "hi", strokeWidth: 2 }),
          Plot.dot(runs, { fx: "mode", x: "logging", y: "s", fill: "black", r: 2.5 }),
        ],
      },
    },
  ];
}

function catalogPlot(docs: { file: string; doc: CatalogDocT }[]): PlotSpec[] {
  if (docs.length === 0) return [];
  const bars: { bug: string; mode: string; median: number; found: string }[] = [];
  const seeds: { bug: string; mode: string; schedules: number }[] = [];
  let budget = 0;
  for (const { doc } of docs) {
    budget = Math.max(budget, doc.options.budget);
    for (const r of doc.results) {
      const found = r.toFind.filter((x): x is number => x !== null);
      bars.push({
        bug: r.bug,
        mode: doc.options.mode,
        median: r.median ?? doc.options.budget,
        found: `${found.length}/${r.toFind.length}`,
      });
      for (const x of found) seeds.push({ bug: r.bug, mode: doc.options.mode, schedules: x });
    }
  }
  return [
    {
      id: "catalog",
      title: "schedules for explore to find each catalog bug",
      caption: `Median schedules until PCT finds each bug put back (bars; a bar at the budget of ${budget}: not found by every seed), each seed's count (dots), how many seeds found it (label). From: ${commands(docs.map((d) => ({ cmd: commandLine(d.doc) })))}`,
      options: {
        color: { legend: true },
        marginLeft: 130,
        height: Math.max(160, 28 * bars.length + 60),
        fy: { label: null, axis: docs.length > 1 ? "right" : null },
        x: { label: "schedules to find the bug", grid: true, type: "symlog" },
        y: { label: "bug" },
        marks: [
          Plot.barX(bars, { y: "bug", x: "median", fill: "mode", fy: docs.length > 1 ? "mode" : undefined }),
          Plot.dot(seeds, {
            y: "bug",
            x: "schedules",
            stroke: "black",
            fy: docs.length > 1 ? "mode" : undefined,
          }),
          Plot.text(bars, {
            y: "bug",
            x: 0,
            text: (d: { found: string }) => `found by ${d.found} seeds`,
            dx: 4,
            textAnchor: "start",
            fill: "white",
            fy: docs.length > 1 ? "mode" : undefined,
          }),
        ],
      },
    },
  ];
}

function migratePlots(docs: { file: string; doc: MigrateDocT }[]): PlotSpec[] {
  if (docs.length === 0) return [];
  const many = docs.length > 1;
  const remaining: { series: string; s: number; mib: number }[] = [];
  const rate: { series: string; round: number; rate: number }[] = [];
  const down: { series: string; kind: string; ms: number }[] = [];
  for (const { file, doc } of docs) {
    const series = seriesName(many, doc.options.wp ?? doc.results.mode, file);
    doc.results.rounds.forEach((r, i) => {
      const round = r.round ?? i + 1;
      if (r["time-ms"] !== undefined && r.remaining !== undefined)
        remaining.push({ series, s: r["time-ms"] / 1000, mib: r.remaining / 2 ** 20 });
      if (r["dirty-pages-rate"] !== undefined) rate.push({ series, round, rate: r["dirty-pages-rate"] });
    });
    const last = doc.results.rounds.at(-1);
    if (last?.["expected-downtime"] !== undefined)
      down.push({ series, kind: "expected (last round)", ms: last["expected-downtime"] });
    down.push({ series, kind: "actual", ms: doc.results.downtimeMs });
  }
  const cmd = commands(docs.map((d) => ({ cmd: commandLine(d.doc) })));
  const out: PlotSpec[] = [];
  if (remaining.length)
    out.push({
      id: "migrate-remaining",
      title: "migration: remaining bytes over time",
      caption: `Bytes still to send at each pre-copy sync, per migration. From: ${cmd}`,
      options: {
        color: { legend: true },
        x: { label: "time since start (s)" },
        y: { label: "remaining (MiB)", grid: true, zero: true },
        marks: [Plot.line(remaining, { x: "s", y: "mib", stroke: "series", marker: "dot" })],
      },
    });
  if (rate.length)
    out.push({
      id: "migrate-dirty-rate",
      title: "migration: dirty rate per round",
      caption: `Pages the guest dirtied per second in each round, per migration. From: ${cmd}`,
      options: {
        color: { legend: true },
        x: { label: "round", type: "point" },
        y: { label: "dirty rate (pages/s)", grid: true, zero: true },
        marks: [Plot.line(rate, { x: "round", y: "rate", stroke: "series", marker: "dot" })],
      },
    });
  out.push({
    id: "migrate-downtime",
    title: "migration: expected against actual downtime",
    caption: `The downtime the last round expected (remaining bytes / bandwidth) and the measured one, per migration. From: ${cmd}`,
    options: {
      color: { legend: true },
      fx: { label: null },
      x: { axis: null, label: "downtime" },
      y: { label: "downtime (ms)", grid: true, zero: true },
      marks: [Plot.barY(down, { fx: "series", x: "kind", y: "ms", fill: "kind" }), Plot.ruleY([0])],
    },
  });
  return out;
}

/** Every plot the files hold data for, in report order. */
export function plotSpecs(files: Loaded[]): PlotSpec[] {
  const of = <C extends ResultDoc["command"]>(c: C) =>
    files.filter((f) => f.doc.command === c) as { file: string; doc: Extract<ResultDoc, { command: C }> }[];
  return [
    ...perfPlots(perfRuns(files)),
    ...kernbenchPlot(of("kernbench")),
    ...catalogPlot(of("catalog")),
    ...migratePlots(of("migrate")),
  ];
}

const CSS = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 860px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
section.plot { margin: 2em 0; padding-top: 1em; border-top: 1px solid #ddd; }
section.plot h2 { font-size: 1.1em; margin: 0 0 0.3em; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.4em; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border-bottom: 1px solid #eee; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
code { font-size: 0.95em; }
`;

function esc(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
}

function filesTable(files: Loaded[]): string {
  const rows = files.map(({ file, doc }) => {
    const m = doc.machine;
    const extra =
      doc.command === "dirty-log-test"
        ? `${doc.violations} violations in ${doc.pagesChecked} pages checked`
        : doc.command === "explore"
          ? `${doc.results.violations} violations in ${doc.results.schedules} schedules`
          : doc.command === "migrate"
            ? `${doc.results.status}, ${doc.results.rounds.length} rounds`
            : "";
    return `<tr><td><code>${esc(basename(file))}</code></td><td><code>${esc(commandLine(doc))}</code></td><td>${esc(
      doc.gitCommit?.slice(0, 12) ?? "unknown",
    )}</td><td>${m.cpus} CPUs, ${(m.memoryBytes / 2 ** 30).toFixed(0)} GiB, node ${esc(m.node)}</td><td>${esc(doc.timestamp)}</td><td>${esc(extra)}</td></tr>`;
  });
  return `<table><thead><tr><th>file</th><th>command</th><th>git</th><th>machine</th><th>time</th><th>outcome</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

/** Plot.plot over a linkedom document: typed here, as the project compiles without the DOM lib. */
type RenderPlot = (
  o: Omit<Plot.PlotOptions, "document" | "style"> & { document: unknown; style: Record<string, string> },
) => { outerHTML: string };
const renderWith = Plot.plot as unknown as RenderPlot;

/** Renders one plot as an HTML string (a <figure> with title, legend, SVG and caption). */
export function renderPlot(spec: PlotSpec): string {
  const { document } = parseHTML("<!doctype html><html><head></head><body></body></html>") as {
    document: unknown;
  };
  return renderWith({
    width: WIDTH,
    marginLeft: 64,
    // An object: linkedom's element.style cannot be assigned a string.
    style: { background: "white", color: "#222" },
    ...spec.options,
    title: spec.title,
    caption: spec.caption,
    document,
  }).outerHTML;
}

export function buildReport(files: Loaded[]): string {
  const specs = plotSpecs(files);
  const sections = specs.map((s) => `<section class="plot" data-plot="${s.id}">${renderPlot(s)}</section>`);
  const none =
    specs.length === 0
      ? `<p class="empty">These files hold nothing to plot (dirty-log-test and explore results are listed above).</p>`
      : "";
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kvmmu report</title>
<style>${CSS}</style>
</head>
<body>
<h1>kvmmu report</h1>
<p>${files.length} result file${files.length === 1 ? "" : "s"}, ${specs.length} plot${specs.length === 1 ? "" : "s"}; drawn ${esc(new Date().toISOString())}.</p>
${filesTable(files)}
${sections.join("\n")}
${none}
</body>
</html>
`;
}

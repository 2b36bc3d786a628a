/**
 * `kvmmu report`: one self-contained HTML file from saved results. The plots are drawn here, in
 * Node, with Observable Plot on a linkedom document, and inlined as SVG with their CSS: the
 * file needs no script and no network to be viewed. Each plot shows up only when the given files
 * hold its data.
 */
import { basename } from "node:path";
import * as Plot from "@observablehq/plot";
import { parseHTML } from "linkedom";
import type { Loaded } from "./load.js";
import { LoadedTrace, timelineSection } from "./trace_svg.js";
import { commands, perfPlots, PerfRun, PlotSpec, RatioRow, ratioRows, seriesName } from "./perf_plots.js";
import { migratePerfPlots, MigratePerfRun, migrateRatioRows } from "./migrate_perf_plots.js";
import type { CatalogDocT, DirtyLogPerfDocT, KernbenchDocT, MigrateDocT, ResultDoc } from "./schema.js";

export { KERNEL_NS_PER_PAGE } from "../bench/dirty_log_perf_calls.js";
export type { PlotSpec } from "./perf_plots.js";

const WIDTH = 760;

function mib(b: number): string {
  return b % 2 ** 30 === 0 ? `${b / 2 ** 30}G` : `${b / 2 ** 20}M`;
}

/** An argument as a shell would need it typed. */
function shellWord(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`;
}

/**
 * The command line that produced a result: the exact argv the file saved (version 3), else
 * rebuilt from its recorded options (older files; flags left at their defaults are not shown).
 */
export function commandLine(doc: ResultDoc): string {
  const argv = (doc as { argv?: string[] }).argv;
  if (argv && argv.length > 0) {
    const prog =
      doc.command === "bench"
        ? "node dist/src/bench/index.js"
        : doc.command === "catalog"
          ? "node dist/src/bench/catalog.js"
          : "kvmmu";
    return [prog, ...argv.map(shellWord)].join(" ");
  }
  return rebuiltCommandLine(doc);
}

function rebuiltCommandLine(doc: ResultDoc): string {
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
      return `kvmmu migrate-perf -n ${o.runs} -b ${mib(o.memoryBytes)} -v ${o.vcpus} --max-bandwidth ${o.maxBandwidth} --downtime-limit ${o.downtimeLimitMs} --min-rounds ${o.minRounds}${o.throttle ? ` --throttle ${o.throttle.join(",")} --log-mode ${o.logMode}` : ""}${o.channels ? ` --channels ${o.channels.join(",")}` : ""}`;
    }
    case "dirty-rate":
      return `kvmmu dirty-rate --calc-mode ${doc.options.mode} --calc-time ${doc.options.calcTimeMs}`;
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
    if (doc.command === "dirty-log-perf") out.push({ file, perf: doc, cmd: commandLine(doc) });
    else if (doc.command === "bench")
      out.push({ file, perf: doc.results.dirtyLogPerf, cmd: commandLine(doc) });
  }
  return out;
}

function migratePerfRuns(files: Loaded[]): MigratePerfRun[] {
  const out: MigratePerfRun[] = [];
  for (const { file, doc } of files) {
    if (doc.command === "migrate-perf") out.push({ file, perf: doc, cmd: commandLine(doc) });
    else if (doc.command === "bench" && doc.results.migratePerf)
      out.push({ file, perf: doc.results.migratePerf, cmd: commandLine(doc) });
  }
  return out;
}

function measured<T extends { warmup: boolean }>(xs: T[]): T[] {
  return xs.filter((x) => !x.warmup);
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
        // Room for the longest bug name (reset-coalesce-backward) left of the axis and its label.
        marginLeft: 170,
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

interface MigrateSeries {
  remaining: { series: string; s: number; mib: number }[];
  rate: { series: string; round: number; rate: number; mbps: number | null }[];
  down: { series: string; kind: string; ms: number }[];
  limits: { series: string; ms: number }[];
  block: { series: string; vcpu: string; ms: number }[];
}

/** The rounds, downtime (and its limit) and post-copy blocktime of each migration. */
function migrateSeries(docs: { file: string; doc: MigrateDocT }[]): MigrateSeries {
  const many = docs.length > 1;
  const m: MigrateSeries = { remaining: [], rate: [], down: [], limits: [], block: [] };
  for (const { file, doc } of docs) {
    const r = doc.results;
    const series = seriesName(many, doc.options.wp ?? r.mode, file);
    r.rounds.forEach((x, i) => {
      const round = x.round ?? i + 1;
      if (x["time-ms"] !== undefined && x.remaining !== undefined)
        m.remaining.push({ series, s: x["time-ms"] / 1000, mib: x.remaining / 2 ** 20 });
      if (x["dirty-pages-rate"] !== undefined)
        m.rate.push({ series, round, rate: x["dirty-pages-rate"], mbps: x.mbps ?? null });
    });
    const last = r.rounds.at(-1);
    if (last?.["expected-downtime"] !== undefined)
      m.down.push({ series, kind: "expected (last round)", ms: last["expected-downtime"] });
    m.down.push({ series, kind: "actual", ms: r.downtimeMs });
    if (r.downtimeLimitMs !== undefined) m.limits.push({ series, ms: r.downtimeLimitMs });
    r.postcopy?.["postcopy-vcpu-blocktime"].forEach((ms, v) =>
      m.block.push({ series, vcpu: `vCPU ${v}`, ms }),
    );
  }
  return m;
}

function migrateRoundPlots(m: MigrateSeries, cmd: string): PlotSpec[] {
  const out: PlotSpec[] = [];
  if (m.remaining.length)
    out.push({
      id: "migrate-remaining",
      title: "migration: remaining bytes over time",
      caption: `Bytes still to send at each pre-copy sync, per migration. From: ${cmd}`,
      options: {
        color: { legend: true },
        x: { label: "time since start (s)" },
        y: { label: "remaining (MiB)", grid: true, zero: true },
        marks: [Plot.line(m.remaining, { x: "s", y: "mib", stroke: "series", marker: "dot" })],
      },
    });
  if (m.rate.length)
    out.push({
      id: "migrate-dirty-rate",
      title: "migration: dirty rate per round",
      caption: `Pages the guest dirtied per second in each round, per migration. From: ${cmd}`,
      options: {
        color: { legend: true },
        x: { label: "round", type: "point" },
        y: { label: "dirty rate (pages/s)", grid: true, zero: true },
        marks: [Plot.line(m.rate, { x: "round", y: "rate", stroke: "series", marker: "dot" })],
      },
    });
  const tput = m.rate.filter((r) => r.mbps !== null);
  if (tput.length)
    out.push({
      id: "migrate-throughput",
      title: "migration: throughput per round",
      caption: `Bits sent per second in each round (query-migrate's mbps), per migration. From: ${cmd}`,
      options: {
        color: { legend: true },
        x: { label: "round", type: "point" },
        y: { label: "throughput (Mbit/s)", grid: true, zero: true },
        marks: [Plot.line(tput, { x: "round", y: "mbps", stroke: "series", marker: "dot" })],
      },
    });
  return out;
}

function migratePlots(docs: { file: string; doc: MigrateDocT }[]): PlotSpec[] {
  if (docs.length === 0) return [];
  const m = migrateSeries(docs);
  const cmd = commands(docs.map((d) => ({ cmd: commandLine(d.doc) })));
  const out = migrateRoundPlots(m, cmd);
  out.push({
    id: "migrate-downtime",
    title: "migration: expected against actual downtime",
    caption: `The downtime the last round expected (remaining bytes / bandwidth) and the measured one, per migration; red: the downtime limit where the file has it. From: ${cmd}`,
    options: {
      color: { legend: true },
      fx: { label: null },
      x: { axis: null, label: "downtime" },
      y: { label: "downtime (ms)", grid: true, zero: true },
      marks: [
        Plot.barY(m.down, { fx: "series", x: "kind", y: "ms", fill: "kind" }),
        Plot.ruleY(m.limits, { fx: "series", y: "ms", stroke: "#b00", strokeDasharray: "6,3" }),
        Plot.ruleY([0]),
      ],
    },
  });
  if (m.block.length)
    out.push({
      id: "migrate-blocktime",
      title: "post-copy: each vCPU's blocktime",
      caption: `Time each vCPU waited for pages the destination fetched on demand (QEMU's postcopy-vcpu-blocktime), per migration. From: ${cmd}`,
      options: {
        color: { legend: true },
        fx: { label: null },
        x: { label: "vCPU" },
        y: { label: "blocktime (ms)", grid: true, zero: true },
        marks: [Plot.barY(m.block, { fx: "series", x: "vcpu", y: "ms", fill: "vcpu" }), Plot.ruleY([0])],
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
    ...migratePerfPlots(migratePerfRuns(files)),
  ];
}

const CSS = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 860px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
section.plot { margin: 2em 0; padding-top: 1em; border-top: 1px solid #ddd; }
section.plot h2 { font-size: 1.1em; margin: 0 0 0.3em; }
figcaption { color: #555; font-size: 0.9em; margin-top: 0.4em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
table caption { text-align: left; font-weight: 600; margin-bottom: 0.3em; }
td, th { border-bottom: 1px solid #eee; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
code { font-size: 0.95em; }
`;

function esc(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
}

/** What each file says made it: the command as typed, kvmmu, the machine and its load. */
function filesTable(files: Loaded[]): string {
  const rows = files.map(({ file, doc }) => {
    const m = doc.machine;
    const load = m.loadAverage
      ? `; load ${m.loadAverage.start.toFixed(2)} → ${m.loadAverage.end?.toFixed(2) ?? "?"}`
      : "";
    const kvmmu =
      `${(doc as { kvmmuVersion?: string }).kvmmuVersion ?? "?"} ${doc.gitCommit?.slice(0, 12) ?? ""}`.trim();
    const machine = `${m.cpuModel ? `${m.cpuModel}, ` : ""}${m.cpus} CPUs, ${(m.memoryBytes / 2 ** 30).toFixed(0)} GiB, ${m.kernel ? `kernel ${m.kernel}, ` : ""}node ${m.node}${load}`;
    return `<tr><td><code>${esc(basename(file))}</code></td><td><code>${esc(commandLine(doc))}</code></td><td>${esc(kvmmu)}</td><td>${esc(machine)}</td><td>${esc(doc.timestamp)}</td><td>${esc(outcome(doc))}</td></tr>`;
  });
  return `<table class="files"><thead><tr><th>file</th><th>command</th><th>kvmmu</th><th>machine</th><th>time</th><th>outcome</th></tr></thead><tbody>${rows.join("")}</tbody></table>`;
}

function outcome(doc: ResultDoc): string {
  if (doc.command === "dirty-log-test")
    return `${doc.violations} violations in ${doc.pagesChecked} pages checked`;
  if (doc.command === "explore")
    return `${doc.results.violations} violations in ${doc.results.schedules} schedules`;
  if (doc.command !== "migrate") return "";
  const r = doc.results;
  const over = r.downtimeExceeded
    ? `, downtime ${r.downtimeMs.toFixed(1)} ms > limit ${r.downtimeLimitMs ?? "?"} ms`
    : "";
  return `${r.status}${over}, ${r.rounds.length} rounds`;
}

/** The answer in words: each design against the baseline, per call, with CI and verdict. */
function ratioTable(rows: RatioRow[]): string {
  if (rows.length === 0) return "";
  const tr = rows.map(
    (r) =>
      `<tr><td>${esc(r.pair)}</td><td>${esc(r.figure)}</td><td>${r.median.toFixed(2)}×</td><td>[${r.lo.toFixed(2)}, ${r.hi.toFixed(2)}]</td><td>${esc(r.verdict)}</td></tr>`,
  );
  return `<table class="ratios"><caption>Each design against the baseline (ratio of medians, paired by iteration or by migration, 95% bootstrap CI)</caption><thead><tr><th>design / baseline</th><th>figure</th><th>ratio</th><th>95% CI</th><th>verdict</th></tr></thead><tbody>${tr.join("")}</tbody></table>`;
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

export function buildReport(files: Loaded[], traces: LoadedTrace[] = []): string {
  const specs = plotSpecs(files);
  const sections = specs.map((s) => `<section class="plot" data-plot="${s.id}">${renderPlot(s)}</section>`);
  sections.push(...traces.map(timelineSection));
  const none =
    specs.length === 0 && traces.length === 0
      ? `<p class="empty">These files hold nothing to plot (dirty-log-test and explore results are listed below).</p>`
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
<p>${files.length} result file${files.length === 1 ? "" : "s"}, ${specs.length} plot${specs.length === 1 ? "" : "s"}${traces.length ? `, ${traces.length} trace timeline${traces.length === 1 ? "" : "s"}` : ""}; drawn ${esc(new Date().toISOString())}.</p>
${ratioTable([...ratioRows(perfRuns(files)), ...migrateRatioRows(migratePerfRuns(files))])}
${sections.join("\n")}
${none}
${files.length ? `<h2>What made these results</h2>\n${filesTable(files)}` : ""}
</body>
</html>
`;
}

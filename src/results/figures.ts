/**
 * The figures of a saved result that `compare` sets side by side: each with its unit, which way
 * is better, and its samples (one per measured iteration or run where the file keeps them, so
 * the comparison can bootstrap an interval; one sample where the command reports a single value).
 */
import type {
  BenchDocT,
  CatalogDocT,
  DirtyLogTestDocT,
  ExploreDocT,
  KernbenchDocT,
  MigrateDocT,
  MigratePerfDocT,
  ResultDoc,
} from "./schema.js";
import {
  CallIteration,
  harvestCalls,
  logModeOfIterations,
  nsPerDirtyPageSamples,
} from "../bench/dirty_log_perf_calls.js";

export interface Figure {
  key: string;
  unit: string;
  better: "lower" | "higher";
  samples: number[];
}

interface PerfLike {
  /** Keyed by design name. */
  results: Partial<Record<string, { iterations: (CallIteration & PerfIterationRest)[]; logMode?: string }>>;
}

interface PerfIterationRest {
  dirtyMemoryNs: number;
  guestThroughput: number;
}

/**
 * Per design: each call of the harvest by KVM's name (dirty_log_perf_calls.ts) with its parts
 * and its ns per dirty page, then dirty memory and guest throughput.
 */
function perfFigures(p: PerfLike, prefix = ""): Figure[] {
  const out: Figure[] = [];
  for (const [wp, s] of Object.entries(p.results)) {
    if (!s) continue;
    const m = s.iterations.filter((i) => !i.warmup);
    const ms = (f: (i: (typeof m)[number]) => number): number[] => m.map((i) => f(i) / 1e6);
    const k = `${prefix}${wp} `;
    for (const c of harvestCalls(logModeOfIterations(s.iterations, s.logMode))) {
      out.push({ key: `${k}${c.name}`, unit: "ms", better: "lower", samples: ms(c.ns) });
      if (c.parts.length > 1)
        for (const part of c.parts)
          out.push({ key: `${k}${c.name}: ${part.name}`, unit: "ms", better: "lower", samples: ms(part.ns) });
      out.push({
        key: `${k}${c.name} per dirty page`,
        unit: "ns",
        better: "lower",
        samples: nsPerDirtyPageSamples(c, m),
      });
    }
    out.push(
      { key: `${k}dirty memory`, unit: "ms", better: "lower", samples: ms((i) => i.dirtyMemoryNs) },
      {
        key: `${k}guest throughput`,
        unit: "M writes/s",
        better: "higher",
        samples: m.map((i) => i.guestThroughput / 1e6),
      },
    );
  }
  return out;
}

const one = (x: number | null | undefined): number[] =>
  x === null || x === undefined || !Number.isFinite(x) ? [] : [x];

function benchFigures(doc: BenchDocT): Figure[] {
  const t = doc.results.tlbHit;
  const m = t.rounds.filter((r) => !r.warmup);
  return [
    { key: "TLB hit", unit: "ns/access", better: "lower", samples: m.map((r) => r.tlbNs) },
    { key: "plain access", unit: "ns/access", better: "lower", samples: m.map((r) => r.plainNs) },
    ...perfFigures(doc.results.dirtyLogPerf, "dirty-log-perf "),
  ];
}

function kernbenchFigures(doc: KernbenchDocT): Figure[] {
  const out: Figure[] = [];
  for (const [mode, per] of Object.entries(doc.results))
    for (const [logging, c] of Object.entries(per ?? {})) {
      if (!c) continue;
      const m = c.runs.filter((r) => !r.warmup);
      const k = `${mode} logging ${logging}`;
      out.push(
        { key: `${k} elapsed`, unit: "s", better: "lower", samples: m.map((r) => r.realNs / 1e9) },
        { key: `${k} jobs/s`, unit: "jobs/s", better: "higher", samples: m.map((r) => r.opsPerSec) },
      );
    }
  return out;
}

function dirtyLogTestFigures(doc: DirtyLogTestDocT): Figure[] {
  const out: Figure[] = [
    { key: "violations", unit: "", better: "lower", samples: [doc.violations] },
    { key: "pages checked/s", unit: "pages/s", better: "higher", samples: one(doc.pagesCheckedPerSec) },
  ];
  for (const [wp, per] of Object.entries(doc.results))
    for (const [oracle, x] of Object.entries(per))
      out.push({
        key: `${wp} ${oracle} pages checked/s`,
        unit: "pages/s",
        better: "higher",
        samples: one(x.pagesCheckedPerSec),
      });
  return out;
}

function catalogFigures(doc: CatalogDocT): Figure[] {
  return doc.results.flatMap((r): Figure[] => [
    {
      key: `${r.bug} schedules to find`,
      unit: "schedules",
      better: "lower",
      samples: r.toFind.filter((x): x is number => x !== null),
    },
    { key: `${r.bug} explored steps/s`, unit: "steps/s", better: "higher", samples: one(r.stepsPerSec) },
  ]);
}

/** One migration: rounds, downtime, throughput and, post-copy, the vCPUs' blocktime. */
function migrateFigures(doc: MigrateDocT): Figure[] {
  const r = doc.results;
  const pc = r.postcopy;
  const mbps = r.totalTimeMs > 0 ? (r.transferredBytes * 8) / 1e6 / (r.totalTimeMs / 1000) : null;
  return [
    { key: "total time", unit: "ms", better: "lower", samples: [r.totalTimeMs] },
    { key: "downtime", unit: "ms", better: "lower", samples: [r.downtimeMs] },
    { key: "transferred", unit: "MiB", better: "lower", samples: [r.transferredBytes / 2 ** 20] },
    { key: "rounds", unit: "", better: "lower", samples: [r.rounds.length] },
    { key: "throughput", unit: "Mbit/s", better: "higher", samples: one(mbps) },
    { key: "guest rate", unit: "M incr/s", better: "higher", samples: one(r.guestRate && r.guestRate / 1e6) },
    { key: "post-copy blocktime", unit: "ms", better: "lower", samples: one(pc?.["postcopy-blocktime"]) },
  ];
}

function migratePerfFigures(doc: MigratePerfDocT): Figure[] {
  const out: Figure[] = [];
  for (const [wp, d] of Object.entries(doc.results)) {
    const m = d.runs.filter((x) => !x.warmup && x.verified);
    const k = `${wp} `;
    out.push(
      { key: `${k}total time`, unit: "ms", better: "lower", samples: m.map((x) => x.totalTimeMs) },
      { key: `${k}downtime`, unit: "ms", better: "lower", samples: m.map((x) => x.downtimeMs) },
      { key: `${k}rounds`, unit: "", better: "lower", samples: m.map((x) => x.rounds) },
      {
        key: `${k}transferred`,
        unit: "MiB",
        better: "lower",
        samples: m.map((x) => x.transferredBytes / 2 ** 20),
      },
      {
        key: `${k}guest throughput`,
        unit: "M incr/s",
        better: "higher",
        samples: m.map((x) => x.guestRate / 1e6),
      },
    );
  }
  return out;
}

function exploreFigures(doc: ExploreDocT): Figure[] {
  const r = doc.results;
  return [
    { key: "schedules run", unit: "", better: "lower", samples: [r.schedules] },
    { key: "violations", unit: "", better: "lower", samples: [r.violations] },
    { key: "steps/s", unit: "steps/s", better: "higher", samples: one(r.stepsPerSec) },
  ];
}

function allFigures(doc: ResultDoc): Figure[] {
  switch (doc.command) {
    case "dirty-log-perf":
      return perfFigures(doc);
    case "bench":
      return benchFigures(doc);
    case "kernbench":
      return kernbenchFigures(doc);
    case "dirty-log-test":
      return dirtyLogTestFigures(doc);
    case "explore":
      return exploreFigures(doc);
    case "catalog":
      return catalogFigures(doc);
    case "migrate":
      return migrateFigures(doc);
    case "migrate-perf":
      return migratePerfFigures(doc);
    case "dirty-rate":
      return [{ key: "dirty rate", unit: "MB/s", better: "lower", samples: [doc.results["dirty-rate"]] }];
  }
}

/** Every figure of `doc` that has at least one sample. */
export function figures(doc: ResultDoc): Figure[] {
  return allFigures(doc).filter((f) => f.samples.length > 0);
}

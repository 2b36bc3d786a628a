/**
 * The figures of a saved result that `compare` sets side by side: each with its unit, which way
 * is better, and its samples (one per measured iteration or run where the file keeps them, so
 * the comparison can bootstrap an interval; one sample where the command reports a single value).
 */
import type { ResultDoc } from "./schema.js";

export interface Figure {
  key: string;
  unit: string;
  better: "lower" | "higher";
  samples: number[];
}

interface PerfLike {
  /** Keyed by design name. */
  results: Partial<
    Record<
      string,
      {
        iterations: {
          warmup: boolean;
          getDirtyLogNs: number;
          lockWaitNs: number;
          protectNs: number;
          flushNs: number;
          dirtyMemoryNs: number;
          dirtyPages: number;
          guestThroughput: number;
        }[];
      }
    >
  >;
}

function perfFigures(p: PerfLike, prefix = ""): Figure[] {
  const out: Figure[] = [];
  for (const [wp, s] of Object.entries(p.results)) {
    if (!s) continue;
    const m = s.iterations.filter((i) => !i.warmup);
    const ms = (f: (i: (typeof m)[number]) => number): number[] => m.map((i) => f(i) / 1e6);
    const k = `${prefix}${wp} `;
    out.push(
      { key: `${k}get-dirty-log`, unit: "ms", better: "lower", samples: ms((i) => i.getDirtyLogNs) },
      { key: `${k}mmu_lock wait`, unit: "ms", better: "lower", samples: ms((i) => i.lockWaitNs) },
      { key: `${k}harvest+protect`, unit: "ms", better: "lower", samples: ms((i) => i.protectNs) },
      { key: `${k}remote flush`, unit: "ms", better: "lower", samples: ms((i) => i.flushNs) },
      {
        key: `${k}ns per dirty page`,
        unit: "ns",
        better: "lower",
        samples: m.filter((i) => i.dirtyPages > 0).map((i) => i.getDirtyLogNs / i.dirtyPages),
      },
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

const one = (x: number | null): number[] => (x === null || !Number.isFinite(x) ? [] : [x]);

export function figures(doc: ResultDoc): Figure[] {
  switch (doc.command) {
    case "dirty-log-perf":
      return perfFigures(doc).filter((f) => f.samples.length > 0);
    case "bench": {
      const t = doc.results.tlbHit;
      const m = t.rounds.filter((r) => !r.warmup);
      const tlb: Figure[] = [
        { key: "TLB hit", unit: "ns/access", better: "lower", samples: m.map((r) => r.tlbNs) },
        { key: "plain access", unit: "ns/access", better: "lower", samples: m.map((r) => r.plainNs) },
      ];
      return [...tlb, ...perfFigures(doc.results.dirtyLogPerf, "dirty-log-perf ")].filter(
        (f) => f.samples.length > 0,
      );
    }
    case "kernbench": {
      const out: Figure[] = [];
      for (const [mode, per] of Object.entries(doc.results))
        for (const [logging, c] of Object.entries(per ?? {})) {
          if (!c) continue;
          const m = c.runs.filter((r) => !r.warmup);
          out.push(
            {
              key: `${mode} logging ${logging} elapsed`,
              unit: "s",
              better: "lower",
              samples: m.map((r) => r.realNs / 1e9),
            },
            {
              key: `${mode} logging ${logging} jobs/s`,
              unit: "jobs/s",
              better: "higher",
              samples: m.map((r) => r.opsPerSec),
            },
          );
        }
      return out.filter((f) => f.samples.length > 0);
    }
    case "dirty-log-test": {
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
      return out.filter((f) => f.samples.length > 0);
    }
    case "explore": {
      const r = doc.results;
      return [
        { key: "schedules run", unit: "", better: "lower", samples: [r.schedules] },
        { key: "violations", unit: "", better: "lower", samples: [r.violations] },
        { key: "steps/s", unit: "steps/s", better: "higher", samples: one(r.stepsPerSec) },
      ].filter((f) => f.samples.length > 0) as Figure[];
    }
    case "catalog":
      return doc.results
        .flatMap((r): Figure[] => [
          {
            key: `${r.bug} schedules to find`,
            unit: "schedules",
            better: "lower",
            samples: r.toFind.filter((x): x is number => x !== null),
          },
          {
            key: `${r.bug} explored steps/s`,
            unit: "steps/s",
            better: "higher",
            samples: one(r.stepsPerSec),
          },
        ])
        .filter((f) => f.samples.length > 0);
    case "migrate": {
      const r = doc.results;
      return [
        { key: "total time", unit: "ms", better: "lower", samples: [r.totalTimeMs] },
        { key: "downtime", unit: "ms", better: "lower", samples: [r.downtimeMs] },
        { key: "transferred", unit: "MiB", better: "lower", samples: [r.transferredBytes / 2 ** 20] },
        { key: "rounds", unit: "", better: "lower", samples: [r.rounds.length] },
      ] as Figure[];
    }
    case "migrate-perf": {
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
      return out.filter((f) => f.samples.length > 0);
    }
  }
}

/** `--csv FILE`: the tables of a result, one row per iteration, run or bug, with a header row. */
import { writeFileSync } from "node:fs";
import { KvmError } from "../errors.js";
import type { PerfResult } from "../bench/dirty_log_perf.js";
import type { KernbenchResult } from "../bench/kernbench.js";

type Cell = string | number | boolean | null;

function field(x: Cell): string {
  const s = x === null ? "" : String(x);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(header: string[], rows: Cell[][]): string {
  return [header, ...rows].map((r) => r.map(field).join(",")).join("\n") + "\n";
}

export function perfCsv(r: Pick<PerfResult, "results">): string {
  const rows: Cell[][] = [];
  for (const [wp, s] of Object.entries(r.results)) {
    if (!s) continue;
    let k = 0;
    for (const it of s.iterations)
      rows.push([
        wp,
        it.warmup ? 0 : ++k,
        it.warmup,
        it.dirtyMemoryNs,
        it.getDirtyLogNs,
        it.lockWaitNs,
        it.protectNs,
        it.flushNs,
        it.dirtyPages,
        it.guestThroughput,
      ]);
  }
  return toCsv(
    [
      "design",
      "iteration",
      "warmup",
      "dirtyMemoryNs",
      "getDirtyLogNs",
      "lockWaitNs",
      "protectNs",
      "flushNs",
      "dirtyPages",
      "guestWritesPerSec",
    ],
    rows,
  );
}

export function kernbenchCsv(r: Pick<KernbenchResult, "results">): string {
  const rows: Cell[][] = [];
  for (const [mode, per] of Object.entries(r.results))
    for (const [logging, c] of Object.entries(per ?? {})) {
      let k = 0;
      for (const run of c?.runs ?? [])
        rows.push([
          mode,
          logging,
          run.warmup ? 0 : ++k,
          run.warmup,
          run.realNs,
          run.opsPerSec,
          run.harvests,
          run.dirtyPages,
        ]);
    }
  return toCsv(["mode", "logging", "run", "warmup", "realNs", "jobsPerSec", "harvests", "dirtyPages"], rows);
}

export interface CatalogCsvRow {
  bug: string;
  toFind: (number | null)[];
  median: number | null;
  fixedSchedules: number;
  fixedViolations: number;
  stepsPerSec: number;
}

export function catalogCsv(mode: string, rows: CatalogCsvRow[]): string {
  return toCsv(
    ["mode", "bug", "seed", "schedulesToFind", "median", "fixedSchedules", "fixedViolations", "stepsPerSec"],
    rows.flatMap((r) =>
      r.toFind.map((x, i) => [
        mode,
        r.bug,
        i + 1,
        x,
        r.median,
        r.fixedSchedules,
        r.fixedViolations,
        r.stepsPerSec,
      ]),
    ),
  );
}

export function writeCsv(file: string, text: string): void {
  try {
    writeFileSync(file, text);
  } catch (e) {
    throw new KvmError("EIO", `--csv: cannot write ${file}: ${(e as Error).message}`);
  }
}

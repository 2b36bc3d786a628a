/** `--csv FILE`: the tables of a result, one row per iteration, run or bug, with a header row. */
import { writeFileSync } from "node:fs";
import { KvmError } from "../errors.js";
import type { PerfResult } from "../bench/dirty_log_perf.js";
import type { KernbenchResult } from "../bench/kernbench.js";
import {
  CallId,
  harvestCalls,
  logModeOfIterations,
  nsPerDirtyPageOf,
  protectingCall,
  totalCall,
} from "../bench/dirty_log_perf_calls.js";

type Cell = string | number | boolean | null;

function field(x: Cell): string {
  const s = x === null ? "" : String(x);
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

export function toCsv(header: string[], rows: Cell[][]): string {
  return [header, ...rows].map((r) => r.map(field).join(",")).join("\n") + "\n";
}

/**
 * One row per iteration: each call's time under KVM's name (empty where the log mode makes no
 * such call), the parts of the call that write-protects (named in `partsOf`), and ns per dirty
 * page of the whole harvest and of each call (dirty_log_perf_calls.ts, as the terminal and compare).
 */
export function perfCsv(r: Pick<PerfResult, "results">): string {
  const rows: Cell[][] = [];
  for (const [wp, s] of Object.entries(r.results)) {
    if (!s) continue;
    const mode = logModeOfIterations(s.iterations, s.logMode);
    const calls = harvestCalls(mode);
    const call = (id: CallId) => calls.find((c) => c.id === id);
    let k = 0;
    for (const it of s.iterations) {
      const perPage = (id: CallId): Cell => {
        const c = call(id);
        return c ? nsPerDirtyPageOf(c, it) : null;
      };
      rows.push([
        wp,
        it.warmup ? 0 : ++k,
        it.warmup,
        mode,
        it.dirtyMemoryNs,
        mode === "dirty-ring" ? null : it.getDirtyLogNs,
        it.clearDirtyLogNs ?? null,
        it.ringHarvestNs ?? null,
        it.ringResetNs ?? null,
        protectingCall(mode).name,
        it.lockWaitNs,
        it.protectNs,
        it.flushNs,
        it.dirtyPages,
        nsPerDirtyPageOf(totalCall(mode), it),
        perPage("get"),
        perPage("clear"),
        perPage("ringHarvest"),
        perPage("ringReset"),
        it.guestThroughput,
      ]);
    }
  }
  return toCsv(
    [
      "design",
      "iteration",
      "warmup",
      "logMode",
      "dirtyMemoryNs",
      "getDirtyLogNs",
      "clearDirtyLogNs",
      "ringHarvestNs",
      "ringResetNs",
      "partsOf",
      "lockWaitNs",
      "protectNs",
      "flushNs",
      "dirtyPages",
      "nsPerDirtyPage",
      "getNsPerDirtyPage",
      "clearNsPerDirtyPage",
      "ringHarvestNsPerDirtyPage",
      "ringResetNsPerDirtyPage",
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

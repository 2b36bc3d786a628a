/**
 * The bug catalog's figures: for every bug (the TDP MMU's that have a scenario included, TDP mode), schedules until `explore` finds it (PCT, seeds
 * 1..5, budget 2000; the median is reported), then the same scenario without the bug over the
 * full budget (must be 0 violations), and explored steps per second (not counting the start
 * of the worker threads, which the explorations after the first reuse). Then the rate with
 * tracing on: the fixed scenario's first `--traced N` schedules (default 200; 0: skip) recorded
 * in full as `kvmmu explore --trace` records its run (named fields, old and new values, kernel
 * function stacks) and each written as a Perfetto / chrome://tracing JSON trace, in memory.
 *   node dist/src/bench/catalog.js [--json] [--budget N] [--seeds K] [--traced N] [--shadow] [--output FILE] [--csv FILE]
 * --json and --output FILE: the saved-result envelope with the rows as `results`.
 */
import { explore } from "../verify/explore.js";
import { checkOutput, envelope, writeResult } from "./result.js";
import { catalogCsv, writeCsv } from "../results/csv.js";
import { BUG_SCENARIO } from "../verify/scenarios.js";
import { BUG, BugName } from "../kvm_host.js";
import { BUG_TDP, TdpBugName } from "../mmu/tdp_mmu/tdp_mmu_bugs.js";
import { recordedRunTrace } from "../verify/explore_trace.js";

const arg = (k: string, d: number): number => {
  const i = process.argv.indexOf(k);
  return i >= 0 ? Number(process.argv[i + 1]) : d;
};
const budget = arg("--budget", 2000);
const mode = process.argv.includes("--shadow") ? ("shadow" as const) : ("tdp" as const);
const seeds = arg("--seeds", 5);
const traced = arg("--traced", 200);
const path = (k: string): string | undefined => {
  const i = process.argv.indexOf(k);
  return i >= 0 ? (process.argv[i + 1] ?? "") : undefined;
};
const output = path("--output");
const csv = path("--csv");
if (output !== undefined) checkOutput(output);
if (csv !== undefined) checkOutput(csv, "--csv");
const rows: {
  bug: BugName | TdpBugName;
  toFind: (number | null)[];
  median: number | null;
  fixedSchedules: number;
  fixedViolations: number;
  stepsPerSec: number;
  /** Tracing on: the fixed scenario's schedules recorded and exported (`--traced`), steps/s. */
  tracedStepsPerSec?: number;
  /** The violations' recorded re-runs (one per seed, each short and timed alone), steps/s. */
  recordedStepsPerSec?: number;
}[] = [];
// fast-pf-large cannot arise on the shadow MMU (4 KiB nonpaging maps; no fast_page_fault with guest paging).
// The TDP MMU's bugs (those with a scenario) run on design tdp-mmu, which has no shadow mode.
const tdpBugs = (Object.keys(BUG_TDP) as TdpBugName[]).filter((b) => mode === "tdp" && BUG_SCENARIO[b]);
const bugs: (BugName | TdpBugName)[] = [
  ...(Object.keys(BUG) as BugName[]).filter((b) => mode === "tdp" || b !== "fast-pf-large"),
  ...tdpBugs,
];
/** Steps/s of the fixed scenario's first `traced` schedules, each recorded and exported. */
async function tracedRate(scenario: string): Promise<number> {
  let bytes = 0;
  const r = await explore({
    scenario,
    strategy: "pct",
    schedules: traced,
    seed: 1,
    bug: false,
    all: false,
    mode,
    onRecording: (run) => void (bytes += recordedRunTrace(run).length),
  });
  if (bytes === 0) throw new Error(`catalog: ${scenario}'s traced runs wrote nothing`);
  return r.steps / ((r.elapsedMs - r.startMs - r.recordMs) / 1000);
}

for (const bug of bugs) {
  const scenario = BUG_SCENARIO[bug]!;
  const toFind: (number | null)[] = [];
  let steps = 0;
  let ms = 0;
  // The recorded re-run of each violation: function stacks on, one step per hand-off.
  let recSteps = 0;
  let recMs = 0;
  for (let seed = 1; seed <= seeds; seed++) {
    const r = await explore({
      scenario,
      strategy: "pct",
      schedules: budget,
      seed,
      bug: true,
      all: false,
      mode,
    });
    toFind.push(r.violations ? r.schedules : null);
    steps += r.steps;
    ms += r.elapsedMs - r.startMs - r.recordMs;
    recSteps += r.recordedSteps;
    recMs += r.recordMs;
  }
  const fixed = await explore({
    scenario,
    strategy: "pct",
    schedules: budget,
    seed: 1,
    bug: false,
    all: false,
    mode,
  });
  steps += fixed.steps;
  ms += fixed.elapsedMs - fixed.startMs - fixed.recordMs;
  const tr = traced > 0 ? await tracedRate(scenario) : null;
  const found = toFind.filter((x): x is number => x !== null).sort((a, b) => a - b);
  const median = found.length === toFind.length ? found[found.length >> 1] : null;
  rows.push({
    bug,
    toFind,
    median,
    fixedSchedules: fixed.schedules,
    fixedViolations: fixed.violations,
    stepsPerSec: steps / (ms / 1000),
    ...(tr !== null ? { tracedStepsPerSec: tr } : {}),
    ...(recMs > 0 ? { recordedStepsPerSec: recSteps / (recMs / 1000) } : {}),
  });
  if (!process.argv.includes("--json"))
    process.stdout.write(
      `${bug.padEnd(18)} found after ${toFind.map((x) => x ?? "-").join(", ")} schedules (median ${median ?? "not found"}); fixed: ${fixed.violations} violations in ${fixed.schedules}; ${Math.round(steps / (ms / 1000))} steps/s${tr !== null ? `; traced ${Math.round(tr)} steps/s` : ""}${recMs > 0 ? `; violations' re-runs ${Math.round(recSteps / (recMs / 1000))} steps/s` : ""}\n`,
    );
}
const saved = { ...envelope("catalog", { mode, budget, seeds }), results: rows };
if (output !== undefined) writeResult(output, saved);
if (csv !== undefined) writeCsv(csv, catalogCsv(mode, rows));
if (process.argv.includes("--json")) process.stdout.write(JSON.stringify(saved) + "\n");

/**
 * The files a full report is built from in the tests: two guest sizes, kernbench, catalog,
 * migrate, migrate-perf.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { runKvmmu } from "../helpers/cli.js";
import { migrateDoc, perfRun, runScript, tmp } from "./helpers.js";

/** Plots a report of these files must hold. */
export const ALL_PLOTS = [
  "ratios",
  "get-dirty-log",
  "guest-throughput",
  "ns-per-page",
  "decomposition",
  "scale-sweep",
  "kernbench",
  "catalog",
  "migrate-remaining",
  "migrate-dirty-rate",
  "migrate-throughput",
  "migrate-downtime",
  "migrate-perf-ratios",
  "migrate-perf-total-time",
  "migrate-perf-downtime",
  "migrate-perf-rounds",
];

/** Measured migrations per design in the fixture's migrate-perf run. */
export const MIGRATE_PERF_RUNS = 3;

let made: Promise<string[]> | undefined;

/** The fixture's files, made once per test process (the tests only read them). */
export function reportFiles(): Promise<string[]> {
  made ??= makeReportFiles();
  return made;
}

async function makeReportFiles(): Promise<string[]> {
  const a = await perfRun("rep-2m.json");
  const b = await perfRun("rep-4m.json", ["-b", "4M"]);
  const k = join(tmp, "rep-kern.json");
  const r = await runKvmmu([
    "kernbench",
    "-v",
    "1",
    "-p",
    "1",
    "-j",
    "4",
    "-n",
    "2",
    "--warmup",
    "0",
    "--output",
    k,
  ]);
  if (r.code !== 0) throw new Error(r.err);
  const c = join(tmp, "rep-cat.json");
  const rc = await runScript("bench/catalog.js", ["--budget", "8", "--seeds", "2", "--output", c]);
  if (rc.code !== 0) throw new Error(rc.err);
  const ml = join(tmp, "rep-mig-locked.json");
  const mf = join(tmp, "rep-mig-lockless.json");
  writeFileSync(ml, JSON.stringify(migrateDoc("locked", 45)));
  writeFileSync(mf, JSON.stringify(migrateDoc("lockless", 25)));
  const mp = join(tmp, "rep-migperf.json");
  // 1 MiB over 8 MiB/s with a 1 s limit: every run converges at --min-rounds (as migrate_perf.test).
  const rm = await runKvmmu([
    "migrate-perf",
    "-n",
    String(MIGRATE_PERF_RUNS),
    "--warmup",
    "0",
    "-b",
    "1M",
    "--max-bandwidth",
    "8M",
    "--min-rounds",
    "2",
    "--guest-warmup",
    "50",
    "--output",
    mp,
  ]);
  if (rm.code !== 0) throw new Error(rm.err);
  return [a, b, k, c, ml, mf, mp];
}

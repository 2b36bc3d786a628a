/** The files a full report is built from in the tests: two guest sizes, kernbench, catalog, migrate. */
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
];

export async function reportFiles(): Promise<string[]> {
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
  return [a, b, k, c, ml, mf];
}

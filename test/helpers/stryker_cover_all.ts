/**
 * Preloaded (`--import`, after the tap runner's `-r` hook) into each test process of
 * `npm run mutation`. The tap runner reports the coverage its hook saw in the main thread only;
 * kvmmu's MMU code runs mostly in worker threads (vCPUs, the explorer's threads), so a mutant
 * reached only there would be reported "no coverage" and never run. In the dry run this marks
 * every mutant of the instrumented dist/ as statically covered, so Stryker runs every mutant
 * against every test file, as coverage analysis "off" means. The counts are huge so that no hit
 * limit applies (a limit hit inside a worker would fail a test: a false kill).
 */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { isMainThread } from "node:worker_threads";

type Ns = { mutantCoverage?: { static: Record<string, number>; perTest: Record<string, unknown> } };
const ns = (globalThis as Record<string, unknown>)[process.env.STRYKER_NAMESPACE ?? "__stryker__"] as
  Ns | undefined;

function mutantIds(dir: string, out: Record<string, number>): void {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) mutantIds(p, out);
    else if (e.name.endsWith(".js"))
      for (const m of readFileSync(p, "utf8").matchAll(/stryMutAct_9fa48\("(\d+)"\)/g)) out[m[1]] = 1e9;
  }
}

if (isMainThread && ns && process.env.STRYKER_DRY_RUN === "true") {
  const all: Record<string, number> = {};
  mutantIds(join(process.cwd(), "dist", "src"), all);
  ns.mutantCoverage = { static: all, perTest: {} };
}

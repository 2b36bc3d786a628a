/**
 * kernbench: a tiny run of every combination (the numbers are not checked, the shape and the
 * guest's own checks are), and the command line in a child process.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { kernbench, KERNBENCH_DEFAULTS, KernbenchOptions } from "../../src/bench/kernbench.js";
import { formatKernbench } from "../../src/cli/kernbench_cmd.js";
import { CliResult, runKvmmu } from "../helpers/cli.js";
import { SCHEMA_VERSION } from "../../src/bench/result.js";

const TINY: KernbenchOptions = {
  ...KERNBENCH_DEFAULTS,
  vcpus: 2,
  processes: 2,
  jobs: 6,
  runs: 1,
  jobsPerProcess: 2,
  heapPages: 8,
  libPages: 64,
  sharedPages: 16,
  libReads: 32,
  sharedWrites: 4,
  compute: 100,
};

test("kernbench: every mode x logging combination runs the fixed work", { timeout: 120_000 }, async () => {
  const r = await kernbench(TINY);
  for (const mode of ["tdp", "shadow"] as const)
    for (const l of ["off", "locked", "lockless"] as const) {
      const c = r.results[mode]?.[l];
      assert.ok(c, `${mode}/${l}`);
      assert.equal(c.runs.length, 1);
      assert.ok(c.opsPerSec > 0 && Number.isFinite(c.opsPerSec));
      assert.ok(c.realAvgNs > 0);
      if (l !== "off") assert.ok(c.runs[0].harvests > 0, "the harvester ran");
      else assert.equal(c.runs[0].harvests, 0);
    }
  // Shadow paging: the library pages are mapped by every process (several sptes per gfn); TDP:
  // one spte per gfn.
  assert.equal(r.results.tdp!.off!.rmapMaxChain, 1);
  assert.ok(r.results.shadow!.off!.rmapMaxChain > 1);
  assert.ok(r.results.shadow!.off!.shadow!["emulated"] > 0, "page-table churn traps in shadow mode");
  assert.equal(r.results.tdp!.off!.faults.emulated, 0);
  // The envelope and the statistics (one run: no warm-up in the library by default).
  assert.equal(r.schemaVersion, SCHEMA_VERSION);
  assert.equal(r.command, "kernbench");
  const c = r.results.tdp!.locked!;
  assert.equal(c.real.n, 1);
  assert.equal(c.real.median, c.runs[0].realNs);
  assert.deepEqual(Object.keys(r.ratio.shadow!).sort(), ["locked/off", "lockless/locked", "lockless/off"]);
  assert.equal(r.ratio.tdp!["lockless/locked"].verdict, "too few samples for a verdict");
  const text = formatKernbench(r);
  assert.match(text, /run 1: {2}real 0m\d+\.\d{3}s/);
  assert.match(text, /Elapsed Time \d+\.\d{3} \(\d+\.\d{3}\)/);
});

test(
  "kernbench with notifier churn and a harvester: the guests' checks pass and the MMU audit is clean",
  { timeout: 180_000 },
  async () => {
    const r = await kernbench({
      ...TINY,
      jobs: 12,
      logging: ["locked", "lockless"],
      migrateRate: 400,
      invalidateRate: 100,
      audit: true,
    });
    for (const mode of ["tdp", "shadow"] as const)
      for (const l of ["locked", "lockless"] as const)
        assert.deepEqual(r.results[mode]?.[l]?.audit, [], `${mode}/${l}`);
  },
);

const cli = (args: string[]): Promise<CliResult> => runKvmmu(["kernbench", ...args]);

test("kvmmu kernbench --json: results.<mode>.<logging>.opsPerSec", { timeout: 120_000 }, async () => {
  const { out, err, code } = await cli([
    "-j",
    "4",
    "-n",
    "1",
    "-p",
    "2",
    "--lib-pages",
    "32",
    "--shared-pages",
    "8",
    "--heap-pages",
    "4",
    "--compute",
    "10",
    "--mode",
    "shadow",
    "--logging",
    "off,lockless",
    "--json",
  ]);
  assert.equal(code, 0, err);
  const r = JSON.parse(out) as { results: Record<string, Record<string, { opsPerSec: number }>> };
  assert.deepEqual(Object.keys(r.results), ["shadow"]);
  assert.deepEqual(Object.keys(r.results["shadow"]), ["off", "lockless"]);
  assert.ok(r.results["shadow"]["lockless"].opsPerSec > 0);
});

test("kvmmu kernbench: a bad option is EINVAL naming it", async () => {
  const { err, code } = await cli(["--mode", "ept"]);
  assert.equal(code, 2);
  assert.match(err, /--mode/);
});

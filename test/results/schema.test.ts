/** The saved-result schema: the published file equals the code's, and every command's output fits it. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { jsonSchema, validateResult, COMMANDS, SCHEMA_VERSION } from "../../src/results/schema.js";
import { SCHEMA_FILE } from "../../src/results/schema_gen.js";
import { KvmError } from "../../src/errors.js";
import { runKvmmu } from "../helpers/cli.js";
import { migrateDoc, perfRunOnce, read, runScript, tmp } from "./helpers.js";
import { designNames } from "../../src/mmu/design.js";

test("schema/kvmmu-result.schema.json equals the TypeBox schema (regenerate: npm run schema)", () => {
  const file = JSON.parse(readFileSync(SCHEMA_FILE, "utf8")) as unknown;
  assert.deepEqual(file, jsonSchema());
  const s = jsonSchema() as { anyOf: { properties: { command: { const: string } } }[] };
  assert.deepEqual(
    s.anyOf.map((d) => d.properties.command.const),
    COMMANDS,
  );
});

test("package.json publishes the schema", () => {
  const pkg = JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as {
    files: string[];
  };
  assert.ok(pkg.files.includes("schema"));
});

const ok = (file: string, command: string): void => {
  const d = validateResult(read(file), file);
  assert.equal(d.command, command);
  assert.equal(d.schemaVersion, SCHEMA_VERSION);
  assert.match(d.timestamp, /^\d{4}-\d\d-\d\dT/);
};

test(
  "every measuring command's --output validates, and --csv has one row per iteration/run/seed",
  { timeout: 240_000 },
  async () => {
    const perf = await perfRunOnce("perf.json", ["--csv", join(tmp, "perf.csv")]);
    ok(perf, "dirty-log-perf");
    const csv = readFileSync(join(tmp, "perf.csv"), "utf8").trim().split("\n");
    assert.equal(csv[0].split(",")[0], "design");
    assert.equal(csv.length, 1 + designNames().length * 3, "header + 3 iterations x every design");

    const k = join(tmp, "kern.json");
    let r = await runKvmmu([
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
      "--mode",
      "tdp",
      "--output",
      k,
      "--csv",
      join(tmp, "kern.csv"),
    ]);
    assert.equal(r.code, 0, r.err);
    ok(k, "kernbench");
    // Two runs of logging off and of every design (all run in TDP mode).
    assert.equal(
      readFileSync(join(tmp, "kern.csv"), "utf8").trim().split("\n").length,
      1 + (1 + designNames().length) * 2,
    );

    const t = join(tmp, "dlt.json");
    r = await runKvmmu([
      "dirty-log-test",
      "-i",
      "2",
      "-v",
      "1",
      "-b",
      "2M",
      "--no-notifier",
      "--output",
      t,
      "--json",
    ]);
    assert.equal(r.code, 0, r.err);
    ok(t, "dirty-log-test");
    assert.deepEqual(JSON.parse(r.out), read(t), "--json prints what --output saves");

    const e = join(tmp, "explore.json");
    r = await runKvmmu(["explore", "--bug", "fast-pf-large", "--schedules", "20", "--output", e]);
    ok(e, "explore");

    const c = join(tmp, "catalog.json");
    r = await runScript("bench/catalog.js", [
      "--budget",
      "8",
      "--seeds",
      "1",
      "--output",
      c,
      "--csv",
      join(tmp, "catalog.csv"),
    ]);
    assert.equal(r.code, 0, r.err);
    ok(c, "catalog");
    const rows = (read(c)["results"] as unknown[]).length;
    assert.ok(rows >= 5);
    assert.equal(readFileSync(join(tmp, "catalog.csv"), "utf8").trim().split("\n").length, 1 + rows);

    const b = join(tmp, "bench.json");
    r = await runScript("bench/index.js", ["--quick", "--output", b]);
    assert.equal(r.code, 0, r.err);
    ok(b, "bench");

    assert.equal(validateResult(migrateDoc("locked", 30), "m.json").command, "migrate");
  },
);

test("validation names the file and the first wrong field; nothing else passes", async () => {
  // The first test's run (read into a fresh object: the changes below stay here).
  const perf = read(await perfRunOnce("perf.json", ["--csv", join(tmp, "perf.csv")]));
  const bad = (doc: unknown, re: RegExp): void =>
    assert.throws(
      () => validateResult(doc, "x.json"),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && re.test(e.message),
    );
  bad([], /x\.json: is not a JSON object/);
  bad({ ...perf, schemaVersion: 99 }, /schemaVersion 99: this kvmmu reads schema versions 1, 2, 3/);
  bad({ ...perf, command: "nope" }, /command "nope" is not one of/);
  const { timestamp: _t, ...noTime } = perf;
  void _t;
  bad(noTime, /timestamp/);
  const results = perf["results"] as { locked: { iterations: { getDirtyLogNs: unknown }[] } };
  results.locked.iterations[0].getDirtyLogNs = "fast";
  bad(perf, /\/results\/locked\/iterations\/0\/getDirtyLogNs/);
  const m = migrateDoc("locked", 1);
  (m["results"] as Record<string, unknown>)["status"] = "done";
  bad(m, /\/results\/status/);
});

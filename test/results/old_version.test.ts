/**
 * Results saved at the previous schema version (1: designs "locked" and "lockless" only, no
 * `ratios`) still load, compare and draw. The fixture is a real run of the version-1 build:
 *   kvmmu dirty-log-perf -v 1 -b 2M -i 2 --contention none --json
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { loadResult } from "../../src/results/load.js";
import { compare, formatCompare } from "../../src/results/compare.js";
import { buildReport } from "../../src/results/report.js";
import { SCHEMA_VERSION } from "../../src/results/schema.js";
import { formatPerf } from "../../src/bench/dirty_log_perf_format.js";
import type { PerfResult } from "../../src/bench/dirty_log_perf.js";
import { perfRun } from "./helpers.js";

const V1 = fileURLToPath(new URL("../../../test/results/fixtures/dirty-log-perf-v1.json", import.meta.url));

test("a version-1 dirty-log-perf file loads, is reported, and compares with itself and a current file", async () => {
  const old = loadResult(V1);
  assert.equal(old.doc.schemaVersion, 1);
  assert.equal(old.doc.command, "dirty-log-perf");
  assert.ok(SCHEMA_VERSION > 1);
  const text = formatPerf(old.doc as unknown as PerfResult);
  assert.match(text, /lockless\/locked \(median, paired bootstrap/);
  const same = compare([old, old]);
  assert.ok(same.rows.some((r) => r.figure === "locked get dirty log"));
  assert.ok(same.rows.some((r) => r.figure === "lockless guest throughput"));
  assert.equal(same.warnings.length, 0);
  const now = loadResult(await perfRun("v2-against-v1.json"));
  assert.equal(now.doc.schemaVersion, SCHEMA_VERSION);
  const mixed = compare([old, now]);
  assert.ok(
    mixed.rows.some((r) => r.figure === "lockless get dirty log"),
    formatCompare(mixed),
  );
  assert.ok(
    mixed.warnings.some((w) => new RegExp(`schema version ${SCHEMA_VERSION}, .* has 1`).test(w)),
    mixed.warnings.join("\n"),
  );
  const html = buildReport([old, now]);
  assert.match(html, /<svg/);
  assert.match(html, /lockless/);
});

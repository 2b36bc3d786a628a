/** `kvmmu migrate --local --json`: a whole migration between two processes, and refusals. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runKvmmu } from "../helpers/cli.js";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MigrationReport } from "../../src/migration/report.js";
import { validateResult } from "../../src/results/schema.js";

test("kvmmu migrate --local --json: completed, verified, query-migrate-shaped rounds", async () => {
  // The guest fills its 16 MiB, then rewrites 256 KiB (--working-set): no round after the first has
  // more dirty, so it converges whenever the stream moves ~1 MiB/s, whatever the machine's load.
  const file = join(mkdtempSync(join(tmpdir(), "kvmmu-mig-")), "migrate.json");
  const r = await runKvmmu([
    "migrate",
    "--output",
    file,
    "--local",
    "--json",
    "-b",
    "16M",
    "--working-set",
    "256K",
    "--min-rounds",
    "2",
    "--wp",
    "locked",
  ]);
  assert.equal(r.code, 0, r.err);
  const o = (JSON.parse(r.out) as { results: MigrationReport }).results;
  assert.equal(o.status, "completed");
  assert.equal(o.mode, "precopy");
  assert.ok(o.rounds.length >= 2);
  for (const k of [
    "transferred",
    "remaining",
    "total",
    "duplicate",
    "normal",
    "dirty-pages-rate",
    "mbps",
    "dirty-sync-count",
    "expected-downtime",
  ])
    assert.equal(typeof o.rounds[0][k as keyof MigrationReport["rounds"][0]], "number", k);
  assert.deepEqual([o.verify.pagesCompared, o.verify.mismatches, o.verify.guestInvariant], [4096, 0, true]);
  assert.ok(o.downtimeMs > 0 && o.totalTimeMs > 0 && o.transferredBytes > 0);
  // --output: the same result in the saved-results schema
  const saved = validateResult(JSON.parse(readFileSync(file, "utf8")), file);
  assert.equal(saved.command, "migrate");
});

test("kvmmu migrate --local --fault kill-destination: failed, exit 1, guest intact on the source", async () => {
  const r = await runKvmmu([
    "migrate",
    "--local",
    "--json",
    "-b",
    "8M",
    "--min-rounds",
    "3",
    "--fault",
    "kill-destination",
  ]);
  assert.equal(r.code, 1, r.err);
  const o = (JSON.parse(r.out) as { results: MigrationReport }).results;
  assert.equal(o.status, "failed");
  assert.equal(o.error?.code, "ECONNRESET");
  assert.equal(o.verify.guestInvariant, true);
});

test("kvmmu migrate: refusals are usage errors (exit 2)", async () => {
  const p = await runKvmmu(["migrate", "--local", "--postcopy", "--postcopy-after", "0"]);
  assert.equal(p.code, 2);
  assert.match(p.err, /EINVAL: --postcopy-after/);
  const l = await runKvmmu(["migrate", "--local", "--log-mode", "ring"]);
  assert.equal(l.code, 2);
  assert.match(l.err, /EINVAL: --log-mode/);
  const t = await runKvmmu(["migrate"]);
  assert.equal(t.code, 2);
  assert.match(t.err, /EINVAL: --to: give exactly one/);
});

/** `kvmmu migrate --local` that cannot converge: cancelled, exit 1, the source guest intact. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runKvmmu } from "../helpers/cli.js";
import type { MigrationReport } from "../../src/migration/report.js";

test("kvmmu migrate --local: no convergence in --timeout -> cancelled, exit 1, guest intact", async () => {
  // 256 KiB rewritten every round over 512 KiB/s: 300 ms carry 150 KiB, never the whole guest.
  const r = await runKvmmu([
    "migrate",
    "--local",
    "--json",
    "-b",
    "256K",
    "--max-bandwidth",
    "512K",
    "--timeout",
    "2000",
  ]);
  assert.equal(r.code, 1, r.err);
  const o = (JSON.parse(r.out) as { results: MigrationReport }).results;
  assert.equal(o.status, "cancelled");
  assert.equal(o.error?.code, "ECANCELED");
  // The message is led by its code once, as every report's error.
  assert.match(o.error?.message ?? "", /^ECANCELED: did not converge in 2000 ms/);
  assert.equal(o.downtimeMs, 0);
  assert.equal(o.verify.guestInvariant, true, o.verify.problems.join("; "));
});

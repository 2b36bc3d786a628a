/** `kvmmu conformance`: the JSON shape, the exit status, and a usage error. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runKvmmu } from "../helpers/cli.js";
import { designBackend, designNames } from "../../src/mmu/design.js";

test("conformance --json: one row per selected case, a column per model design, kernel skipped or run", async () => {
  const r = await runKvmmu(["conformance", "--json", "--cases", "ring: "]);
  assert.equal(r.code, 0, r.err);
  const j = JSON.parse(r.out) as { kernelSkipped: string | null; cases: Record<string, string>[] };
  assert.ok(j.cases.length >= 10, `${j.cases.length} ring cases`);
  for (const c of j.cases) {
    assert.ok(c.name.includes("ring: "), c.name);
    for (const d of designNames().filter((x) => designBackend(x) === "model"))
      assert.equal(typeof c[d], "string", `${c.name}: ${d}`);
    assert.ok(["yes", "intended"].includes(c.match), `${c.name}: ${c.match}`);
    if (j.kernelSkipped !== null) assert.equal(c.kernel, "skipped");
  }
  if (j.kernelSkipped !== null) console.log(`# kernel column skipped: ${j.kernelSkipped}`);
});

test("conformance --cases with no match is a usage error (exit 2)", async () => {
  const r = await runKvmmu(["conformance", "--cases", "no such case"]);
  assert.equal(r.code, 2);
  assert.match(r.err, /^kvmmu: EINVAL: --cases/);
});

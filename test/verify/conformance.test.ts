/**
 * The conformance table: the model side always (every registered model design must give KVM's
 * answer or a documented intended difference); the kernel side only where /dev/kvm opens
 * (skipped with the reason elsewhere).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { designBackend, designNames } from "../../src/mmu/design.js";
import { CASES, bits, bitmapOf } from "../../src/verify/conformance_cases.js";
import {
  answer,
  conformanceJson,
  formatConformance,
  matchOf,
  runConformance,
} from "../../src/verify/conformance.js";
import { kernelTarget, modelTarget } from "../../src/verify/conformance_targets.js";
import { KvmError } from "../../src/errors.js";

const models = designNames().filter((d) => designBackend(d) !== "kernel");

test("conformance: the table has at least 40 cases, unique names, and each intended difference a reason", () => {
  assert.ok(CASES.length >= 40, `${CASES.length} cases`);
  assert.equal(new Set(CASES.map((c) => c.name)).size, CASES.length);
  for (const c of CASES) if (c.intended !== undefined) assert.ok(c.intended.why.length > 10, c.name);
  // Every intended difference is listed in the docs.
  const doc = readFileSync(new URL("../../../docs/conformance.md", import.meta.url), "utf8").replaceAll(
    "\\|",
    "|",
  );
  for (const c of CASES.filter((x) => x.intended !== undefined))
    assert.ok(doc.includes(c.name), `docs/conformance.md lacks "${c.name}"`);
});

test("conformance: helpers: bit ranges, answers, and the match rule", async () => {
  assert.equal(bits(bitmapOf(130, [0, 1, 63, 64, 129])), "bits 0-1,63-64,129");
  assert.equal(bits(new Uint32Array(4)), "bits none");
  assert.equal(await answer(() => undefined), "ok");
  assert.equal(
    await answer(() => {
      throw new KvmError("ENXIO", "x");
    }),
    "ENXIO",
  );
  const c = {
    name: "x",
    expected: "ok",
    intended: { answer: "EINVAL", why: "because of a reason" },
    run: () => {},
  };
  assert.equal(matchOf(c, null, ["ok", "ok"]), "yes");
  assert.equal(matchOf(c, null, ["ok", "EINVAL"]), "intended");
  assert.equal(matchOf(c, null, ["ok", "EFAULT"]), "NO");
  assert.equal(matchOf(c, "EINVAL", ["ok"]), "NO", "the kernel must give the expected answer itself");
});

test("conformance: every model design gives KVM's answer or an intended difference", async () => {
  const r = await runConformance(models.map(modelTarget), "not run in this test");
  const bad = r.rows
    .filter((x) => x.match === "NO")
    .map((x) => `${x.name}: expected ${x.expected}, got ${JSON.stringify(x.models)}`);
  assert.deepEqual(bad, []);
  assert.equal(r.rows.length, CASES.length);
  const j = conformanceJson(r);
  assert.equal(j.cases.length, CASES.length);
  for (const d of models) assert.ok(d in j.cases[0], `json has a column for ${d}`);
  assert.equal(j.cases[0].kernel, "skipped");
  assert.match(formatConformance(r), /^case +\| expected \(KVM\) +\| kernel +\| locked/);
});

test("conformance: the kernel side, where /dev/kvm opens", async (t) => {
  let k;
  try {
    k = await kernelTarget();
  } catch (e) {
    t.skip(`kernel side not run: ${(e as Error).message}`);
    console.log(`# kernel conformance skipped: ${(e as Error).message}`);
    return;
  }
  try {
    const r = await runConformance([], k);
    const bad = r.rows
      .filter((x) => x.kernel !== x.expected)
      .map((x) => `${x.name}: KVM table says ${x.expected}, kernel ${x.kernel}`);
    assert.deepEqual(bad, [], "a kernel case no longer gives the answer the table states");
  } finally {
    k.close();
  }
});

/** A short soak (budget 2e5 page checks): both designs, both oracles, TDP then shadow, with churn. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { soak } from "../../src/verify/soak.js";
import { KvmError } from "../../src/errors.js";

test("soak: a 2e5-page budget runs TDP and shadow rounds with no violation", async () => {
  const r = await soak({ budget: 2e5, seed: 1, bytesPerVcpu: 8 << 20 });
  assert.equal(r.violations, 0, r.firstViolation ?? "");
  assert.ok(r.pagesChecked >= 2e5);
  assert.ok("tdp/thp-on" in r.perConfig && "shadow/thp-on" in r.perConfig, JSON.stringify(r.perConfig));
  for (const c of Object.values(r.perConfig)) assert.ok(c.pagesChecked > 0);
});

test("soak: a bad budget or seed is EINVAL", async () => {
  for (const [o, arg] of [
    [{ budget: 0, seed: 1 }, "budget"],
    [{ budget: 1.5, seed: 1 }, "budget"],
    [{ budget: 10, seed: -1 }, "seed"],
  ] as const)
    await assert.rejects(
      soak(o),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && e.message.includes(arg),
    );
});

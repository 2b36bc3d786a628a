/**
 * The README's API example (kept as examples/readme.ts, byte-identical to the README block),
 * docs/api.md's example (examples/api.ts, likewise) and the interpreter migration example.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { migrate } from "../../examples/interpreter/host.js";

const repo = fileURLToPath(new URL("../../../", import.meta.url));

/** The first ```ts block after `heading` in a Markdown file. */
function tsBlock(file: string, heading: string): string {
  const md = readFileSync(repo + file, "utf8");
  const at = md.indexOf(heading);
  assert.ok(at >= 0, `${file} has ${heading}`);
  const m = /```ts\n([\s\S]*?)```/.exec(md.slice(at));
  assert.ok(m, `${file}: a ts block after ${heading}`);
  return m[1];
}

for (const [file, heading, example, expect] of [
  ["README.md", "## The API", "readme", /^131072\n$/],
  ["docs/api.md", "## Example", "api", /"same":true/],
] as const) {
  test(`${file}: its example is examples/${example}.ts, and it runs`, { timeout: 120_000 }, () => {
    assert.equal(tsBlock(file, heading), readFileSync(`${repo}examples/${example}.ts`, "utf8"));
    const out = execFileSync(process.execPath, [`${repo}dist/examples/${example}.js`], { encoding: "utf8" });
    assert.match(out, expect);
  });
}

test(
  "interpreter example: migrated mid-run, round by round, the second VM finishes with the same result",
  { timeout: 180_000 },
  async () => {
    const r = await migrate({ rounds: 6, migrateAfterSteps: 30_000 });
    assert.equal(r.same, true, JSON.stringify(r));
    assert.ok(r.rounds >= 2, "at least one live round and the final one");
    for (const [i, s] of r.stepsAtMigration.entries()) {
      assert.ok(
        s >= 30_000 && s < r.totalSteps[i],
        `vcpu ${i} migrated mid-program (${s} of ${r.totalSteps[i]})`,
      );
    }
    assert.ok(r.pagesCopied.at(-1)! > 0, "the final round copied pages dirtied since the last");
  },
);

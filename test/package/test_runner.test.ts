/**
 * scripts/test.mjs, `npm test`'s runner: the files it is given, the named long ones first, in
 * node --test's TAP with the summary lines CI reads; exit 1 on a failure (a failing todo test
 * does not count), 2 on bad usage.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const script = fileURLToPath(new URL("../../../scripts/test.mjs", import.meta.url));

function runner(args: string[]): Promise<{ out: string; err: string; code: number }> {
  return new Promise((resolve) => {
    // Without NODE_TEST_CONTEXT: inside a test file's process node:test's run() would not run.
    const env = { ...process.env };
    delete env["NODE_TEST_CONTEXT"];
    execFile(process.execPath, [script, ...args], { env }, (e, out, err) =>
      resolve({ out, err, code: e ? ((e as { code?: number }).code ?? 1) : 0 }),
    );
  });
}

/** Test files in a fresh folder; `verify/explore_full.test.js` is first in the runner's list. */
function files(bodies: Record<string, string>): Record<string, string> {
  const dir = mkdtempSync(join(tmpdir(), "kvmmu-runner-"));
  const paths: Record<string, string> = {};
  for (const [name, body] of Object.entries(bodies)) {
    const p = join(dir, name);
    mkdirSync(join(p, ".."), { recursive: true });
    writeFileSync(p, `import { test } from "node:test";\n${body}\n`);
    paths[name] = p;
  }
  return paths;
}

test("npm test's runner: TAP with the summary lines, and 0 when every test passes", async () => {
  const f = files({
    "a.test.js": 'test("a passes", () => {});',
    "b.test.js":
      'test("b passes", () => {}); test("b todo", { todo: true }, () => { throw new Error("x"); });',
  });
  const r = await runner([f["b.test.js"], f["a.test.js"]]);
  assert.equal(r.code, 0, r.out + r.err);
  assert.match(r.out, /^TAP version 13$/m);
  for (const line of ["# tests 3", "# pass 2", "# fail 0", "# todo 1"])
    assert.match(r.out, new RegExp(`^${line}$`, "m"), line);
  // Neither file is in the list of long ones: by name.
  assert.ok(r.out.indexOf("ok 1 - a passes") >= 0 && r.out.indexOf("a passes") < r.out.indexOf("b passes"));
});

test("npm test's runner: a failing test, or a file that exits early, is exit 1 and counted", async () => {
  const f = files({
    "fails.test.js": 'test("fails", () => { throw new Error("no"); });',
    "exits.test.js": "process.exit(3);",
  });
  const r = await runner([f["fails.test.js"], f["exits.test.js"]]);
  assert.equal(r.code, 1, r.out + r.err);
  assert.match(r.out, /^# fail 2$/m);
});

test("npm test's runner: the longest file starts first, whatever the order given", async () => {
  const f = files({
    "a.test.js": 'test("short", () => {});',
    "verify/explore_full.test.js": 'test("long", () => {});',
  });
  const r = await runner(["--concurrency", "1", f["a.test.js"], f["verify/explore_full.test.js"]]);
  assert.equal(r.code, 0, r.out + r.err);
  assert.ok(r.out.indexOf("ok 1 - long") >= 0, r.out);
});

test("npm test's runner: bad usage is exit 2 naming the option", async () => {
  const c = await runner(["--concurrency", "0"]);
  assert.equal(c.code, 2);
  assert.match(c.err, /--concurrency: must be 1\.\.64, got 0/);
  const u = await runner(["--nope"]);
  assert.equal(u.code, 2);
  assert.match(u.err, /unknown option --nope/);
});

test("npm test's runner --list: every dist/test file but the mutation runs' own, the longest first", async () => {
  const dist = fileURLToPath(new URL("../", import.meta.url));
  const all = readdirSync(dist, { recursive: true, encoding: "utf8" })
    .map((f) => f.split("\\").join("/"))
    .filter((f) => f.endsWith(".test.js"));
  const r = await runner(["--list"]);
  assert.equal(r.code, 0, r.err);
  const listed = r.out.trim().split("\n");
  assert.equal(listed[0], "verify/explore_full.test.js");
  // explore_quick repeats explore_full and explore_generate at a mutant's budget: stryker only.
  assert.ok(all.includes("verify/explore_quick.test.js"));
  assert.deepEqual([...listed].sort(), all.filter((f) => f !== "verify/explore_quick.test.js").sort());
  assert.doesNotMatch(r.out, /^# /m, "nothing ran");
});

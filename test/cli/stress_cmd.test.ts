/**
 * `kvmmu stress` in a child process (bin/kvmmu.js): the table, --json, EINVAL naming the
 * option, and a negative control that shows forbidden outcomes without failing the command.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { StressResult } from "../../src/verify/stress.js";
import { CliResult, runKvmmu } from "../helpers/cli.js";

const cli = (args: string[]): Promise<CliResult> => runKvmmu(["stress", ...args]);

test("--test mutex prints a jcstress-like table and exits 0", { timeout: 60_000 }, async () => {
  const { out, err, code } = await cli(["--test", "mutex", "--iterations", "2000"]);
  assert.equal(code, 0, err);
  assert.match(out, /^\[OK\] mutex$/m);
  assert.match(out, /Observed state\s+Occurrences\s+Expectation\s+Interpretation/);
  assert.match(out, /^\s+0, 0, 1\s+0\s+FORBIDDEN\s+lost update/m);
  assert.match(out, /2000 iterations in/);
  assert.match(out, /^OK: no forbidden outcome in 1 test\(s\)/m);
});

test(
  "--json prints one object; a negative control does not fail the command",
  { timeout: 60_000 },
  async () => {
    const { out, err, code } = await cli(["--test", "mutex-none", "--iterations", "3000", "--json"]);
    assert.equal(code, 0, err);
    const lines = out.trim().split("\n");
    assert.equal(lines.length, 1);
    const r = JSON.parse(lines[0]) as { results: StressResult[]; failed: string[] };
    assert.deepEqual(r.failed, []);
    assert.equal(r.results.length, 1);
    assert.equal(r.results[0].test, "mutex-none");
    assert.notEqual(r.results[0].control, null);
    assert.equal(r.results[0].iterations, 3000);
    assert.equal(
      r.results[0].rows.reduce((a, x) => a + x.count, 0),
      3000,
    );
  },
);

test("bad options are EINVAL naming the option (exit code 2)", { timeout: 60_000 }, async () => {
  let r = await cli(["--test", "nope"]);
  assert.equal(r.code, 2);
  assert.match(r.err, /EINVAL: --test: "nope" is not one of mutex/);
  r = await cli(["--test", "mutex", "--iterations", "0"]);
  assert.equal(r.code, 2);
  assert.match(r.err, /EINVAL: --iterations/);
  r = await cli(["--test", "mutex", "--max-ms", "x"]);
  assert.equal(r.code, 2);
  assert.match(r.err, /EINVAL: --max-ms/);
});

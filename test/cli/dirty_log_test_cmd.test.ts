/**
 * `kvmmu dirty-log-test` in a child process (bin/kvmmu.js): JSON output, exit code 1 on
 * violations, EINVAL naming the option (exit code 2).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CliResult, runKvmmu } from "../helpers/cli.js";
import { designNames } from "../../src/mmu/design.js";

const cli = (args: string[]): Promise<CliResult> => runKvmmu(["dirty-log-test", ...args]);

test("--json prints one object with iterations, pagesChecked, violations", { timeout: 60_000 }, async () => {
  const { out, err, code } = await cli(["-i", "2", "-b", "2M", "-I", "5", "--json"]);
  assert.equal(code, 0, err);
  const lines = out.trim().split("\n");
  assert.equal(lines.length, 1);
  const r = JSON.parse(lines[0]) as {
    iterations: number;
    pagesChecked: number;
    violations: number;
    results: Record<string, unknown>;
  };
  assert.equal(r.iterations, designNames().length * 2 * 2); // every design x 2 oracles x 2
  assert.ok(r.pagesChecked > 0);
  assert.equal(r.violations, 0);
  assert.deepEqual(Object.keys(r.results).sort(), designNames().sort());
});

test(
  "human output; exit code 1 when violations are found (--bug skip-flush)",
  { timeout: 60_000 },
  async () => {
    const { out, code } = await cli([
      "-i",
      "3",
      "-b",
      "2M",
      "--wp",
      "lockless",
      "--oracle",
      "kvm",
      "--no-notifier",
      "--bug",
      "skip-flush",
    ]);
    assert.match(out, /^dirty-log-test: 2 vCPUs x 2 MiB/);
    assert.match(out, /violation: \[lockless\] kvm iteration \d+ page \d+/);
    assert.match(out, /FAIL/);
    assert.equal(code, 1);
  },
);

test("bad values are EINVAL naming the option", { timeout: 60_000 }, async () => {
  const cases: [string[], string][] = [
    [["-i", "0"], "--iterations"],
    [["--seconds", "x"], "--seconds"],
    [["-I", "0"], "--interval"],
    [["-v", "100"], "--vcpus"],
    [["-b", "12345"], "--bytes"],
    [["--wp", "fast"], "--wp"],
    [["--oracle", "ring"], "--oracle"],
    [["--seed", "-3"], "--seed"],
    [["--bug", "nope"], "--bug"],
  ];
  const runs = await Promise.all(cases.map(([args]) => cli(args)));
  runs.forEach((r, i) => {
    assert.equal(r.code, 2, cases[i][1]);
    assert.match(r.err, new RegExp(`^kvmmu: EINVAL: ${cases[i][1]}: `));
  });
});

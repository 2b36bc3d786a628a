/**
 * `kvmmu dirty-log-test` in a child process (a stand-in for bin/kvmmu.js that registers only
 * this command, with main.ts's error handling): JSON output, exit code 1 on violations, EINVAL
 * naming the option (exit code 2).
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const cmdUrl = new URL("../../src/cli/dirty_log_test_cmd.js", import.meta.url).href;
const errorsUrl = new URL("../../src/errors.js", import.meta.url).href;
const commanderUrl = pathToFileURL(createRequire(import.meta.url).resolve("commander")).href;

const driver = `
import { Command, CommanderError } from ${JSON.stringify(commanderUrl)};
import { registerDirtyLogTest } from ${JSON.stringify(cmdUrl)};
import { KvmError } from ${JSON.stringify(errorsUrl)};
const program = new Command().name("kvmmu").exitOverride();
registerDirtyLogTest(program);
try {
  await program.parseAsync(process.argv.slice(2), { from: "user" });
} catch (e) {
  if (e instanceof CommanderError) process.exitCode = e.exitCode;
  else if (e instanceof KvmError) { process.stderr.write("kvmmu: " + e.message + "\\n"); process.exitCode = 2; }
  else { process.stderr.write(String(e && e.stack) + "\\n"); process.exitCode = 1; }
}
`;

// A file, not `node -e`: under -e the process exits with 13 (unsettled top-level await) once
// the first worker starts.
const dir = mkdtempSync(join(tmpdir(), "kvmmu-dlt-"));
const driverPath = join(dir, "kvmmu.mjs");
writeFileSync(driverPath, driver);
after(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[]): Promise<{ out: string; err: string; code: number }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [driverPath, "dirty-log-test", ...args],
      { env: { ...process.env, CI: "1" }, maxBuffer: 64 << 20 },
      (e, out, err) => resolve({ out, err, code: e ? ((e as { code?: number }).code ?? 1) : 0 }),
    );
  });
}

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
  assert.equal(r.iterations, 8); // 2 strategies x 2 oracles x 2
  assert.ok(r.pagesChecked > 0);
  assert.equal(r.violations, 0);
  assert.deepEqual(Object.keys(r.results).sort(), ["locked", "lockless"]);
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

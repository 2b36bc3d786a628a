/**
 * `kvmmu stress` in a child process (a stand-in for bin/kvmmu.js that registers only this
 * command, with main.ts's error handling): the table, --json, EINVAL naming the option, and a
 * negative control that shows forbidden outcomes without failing the command.
 */
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createRequire } from "node:module";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { StressResult } from "../../src/verify/stress.js";

const cmdUrl = new URL("../../src/cli/stress_cmd.js", import.meta.url).href;
const errorsUrl = new URL("../../src/errors.js", import.meta.url).href;
const commanderUrl = pathToFileURL(createRequire(import.meta.url).resolve("commander")).href;

const driver = `
import { Command, CommanderError } from ${JSON.stringify(commanderUrl)};
import { registerStress } from ${JSON.stringify(cmdUrl)};
import { KvmError } from ${JSON.stringify(errorsUrl)};
const program = new Command().name("kvmmu").exitOverride();
registerStress(program);
try {
  await program.parseAsync(process.argv.slice(2), { from: "user" });
} catch (e) {
  if (e instanceof CommanderError) process.exitCode = e.exitCode;
  else if (e instanceof KvmError) { process.stderr.write("kvmmu: " + e.message + "\\n"); process.exitCode = 2; }
  else { process.stderr.write(String(e && e.stack) + "\\n"); process.exitCode = 1; }
}
`;

const dir = mkdtempSync(join(tmpdir(), "kvmmu-stress-"));
const driverPath = join(dir, "kvmmu.mjs");
writeFileSync(driverPath, driver);
after(() => rmSync(dir, { recursive: true, force: true }));

function cli(args: string[]): Promise<{ out: string; err: string; code: number }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [driverPath, "stress", ...args],
      { env: { ...process.env, CI: "1" }, maxBuffer: 16 << 20 },
      (e, out, err) => resolve({ out, err, code: e ? ((e as { code?: number }).code ?? 1) : 0 }),
    );
  });
}

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

/**
 * The CLI's exit-status contract: usage and input errors are one `kvmmu: EINVAL: ...` line and
 * exit 2; --version; replay refuses a schedule it cannot run instead of hanging; SIGINT prints the
 * summary so far and exits 130.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { readFileSync } from "node:fs";
import { runKvmmu } from "../helpers/cli.js";

function oneEinvalLine(err: string, names: RegExp, what: string): void {
  const lines = err.trimEnd().split("\n");
  assert.equal(lines.length, 1, `${what}: one line, got ${JSON.stringify(err)}`);
  assert.match(lines[0], /^kvmmu: EINVAL: /, what);
  assert.match(lines[0], names, what);
}

test("usage errors: one EINVAL line naming the bad part, exit 2", async () => {
  const cases: [string[], RegExp][] = [
    [[], /COMMAND/],
    [["nope"], /nope/],
    [["explore", "--nope"], /--nope/],
    [["explore", "--seed"], /--seed/],
    [["replay"], /schedule/],
    [["stress", "--iterations", "x"], /--iterations/],
    [["dirty-log-test", "--vcpus", "0"], /--vcpus/],
  ];
  const rs = await Promise.all(cases.map(([argv]) => runKvmmu(argv)));
  rs.forEach((r, i) => {
    const [argv, names] = cases[i];
    assert.equal(r.code, 2, `${argv.join(" ")}: ${r.err}`);
    assert.equal(r.out, "", argv.join(" "));
    oneEinvalLine(r.err, names, argv.join(" "));
  });
});

test("commander's suggestions are kept whole, on the one EINVAL line", async () => {
  const [cmd, opt] = await Promise.all([
    runKvmmu(["dirty-log-pref"]),
    runKvmmu(["dirty-log-perf", "--iteration", "3"]),
  ]);
  oneEinvalLine(cmd.err, /unknown command 'dirty-log-pref' \(Did you mean dirty-log-perf\?\)$/, "command");
  oneEinvalLine(opt.err, /unknown option '--iteration' \(Did you mean --iterations\?\)$/, "option");
  assert.equal(cmd.code, 2);
  assert.equal(opt.code, 2);
});

test("--help: no '(default: false)' on flags, and each default stated once", async () => {
  const cmds = [
    "dirty-log-perf",
    "dirty-log-test",
    "explore",
    "migrate",
    "migrate-perf",
    "kernbench",
    "stress",
  ];
  const rs = await Promise.all(cmds.map((c) => runKvmmu([c, "--help"])));
  for (const [i, r] of rs.entries()) {
    assert.equal(r.code, 0, cmds[i]);
    const text = r.out.replace(/\s+/g, " ");
    assert.doesNotMatch(text, /\(default: false\)/, cmds[i]);
    // An option whose description states its default does not get commander's second one.
    assert.doesNotMatch(text, /\(default [^)]*\) \(default: /, cmds[i]);
  }
  const perf = rs[0].out.replace(/\s+/g, " ");
  assert.match(perf, /random access order \(default sequential\) -r/);
  assert.match(perf, /--contention <level> MMU-notifier churn: none, default, heavy \(default: "default"\)/);
});

test("--version prints the package version; --help states the exit statuses", async () => {
  const pkg = JSON.parse(
    readFileSync(fileURLToPath(new URL("../../../package.json", import.meta.url)), "utf8"),
  ) as { version: string };
  const v = await runKvmmu(["--version"]);
  assert.equal(v.code, 0);
  assert.equal(v.out.trim(), pkg.version);
  const h = await runKvmmu(["--help"]);
  assert.equal(h.code, 0);
  for (const s of ["Exit status", "0 ", "1 ", "2 ", "3 ", "130"]) assert.ok(h.out.includes(s), s);
});

test("replay: impossible or enormous schedules are EINVAL at once (no hang, no heap exhaustion)", async () => {
  const cases: [string, RegExp][] = [
    ["skip-flush@fixed:99*1", /99/],
    ["skip-flush@fixed:0*99999999999", /0\*99999999999/],
    ["skip-flush@fixed:0*9999999,1*9999999", /1000000 steps/],
    ["skip-flush@fixed:0*0", /0\*0/],
    ["skip-flush@fixed:1*1000", /thread 1 .*not runnable/],
    ["no-such@fixed:0", /no-such/],
  ];
  for (const [s, names] of cases) {
    const r = await runKvmmu(["replay", s]);
    assert.equal(r.code, 2, `${s}: ${r.err}`);
    oneEinvalLine(r.err, names, s);
  }
});

test("SIGINT: explore prints what it ran so far and exits 130", async () => {
  const bin = fileURLToPath(new URL("../../../bin/kvmmu.js", import.meta.url));
  // A SIGINT that lands before the CLI installed its handler kills the process (exit code null):
  // on a loaded machine, start again and wait longer, rather than assert on the start-up time.
  let code: number | null = null;
  let out = "";
  for (let delayMs = 1500; delayMs <= 12_000 && code === null; delayMs *= 2) {
    const child = spawn(
      process.execPath,
      [bin, "explore", "--scenario", "skip-flush", "--strategy", "random", "--schedules", "10000000"],
      { env: { ...process.env, CI: "1" } },
    );
    out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    code = await new Promise<number | null>((res) => {
      setTimeout(() => child.kill("SIGINT"), delayMs);
      child.on("exit", (c) => res(c));
    });
  }
  assert.equal(code, 130);
  const m = /: (\d+) schedules, 0 violations/.exec(out);
  assert.ok(m && Number(m[1]) > 0 && Number(m[1]) < 10000000, out);
});

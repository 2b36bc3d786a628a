/**
 * `kvmmu dirty-rate` through the real command line: a JSON result in the envelope, and its bad
 * flags (and migrate-perf's --throttle misuses) as usage errors, exit 2 with one EINVAL line.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { runKvmmu } from "../helpers/cli.js";

test("kvmmu dirty-rate --json: the envelope, the mode's counts, per vCPU with the ring", async () => {
  const r = await runKvmmu([
    "dirty-rate",
    "--calc-mode",
    "dirty-ring",
    "--calc-time",
    "100",
    "-b",
    "4M",
    "-v",
    "2",
    "--warmup",
    "0",
    "--json",
  ]);
  assert.equal(r.code, 0, r.err);
  const doc = JSON.parse(r.out) as {
    command: string;
    results: {
      mode: string;
      "dirty-rate": number;
      dirtyPages: number;
      "vcpu-dirty-rate": { id: number; pages: number }[];
    };
  };
  assert.equal(doc.command, "dirty-rate");
  assert.equal(doc.results.mode, "dirty-ring");
  assert.deepEqual(
    doc.results["vcpu-dirty-rate"].map((v) => v.id),
    [0, 1],
  );
  assert.equal(
    doc.results.dirtyPages,
    doc.results["vcpu-dirty-rate"].reduce((a, v) => a + v.pages, 0),
  );
});

test("bad flags are usage errors (exit 2, EINVAL naming the flag)", async () => {
  const cases: [string[], RegExp][] = [
    [["dirty-rate", "--calc-mode", "nope"], /--calc-mode/],
    [["dirty-rate", "--calc-time", "10"], /--calc-time/],
    [["dirty-rate", "--sample-pages", "5"], /--sample-pages/],
    [["dirty-rate", "--dirty-ring-size", "512"], /--dirty-ring-size: needs --calc-mode dirty-ring/],
    [["migrate-perf", "--throttle", "dirty-limit"], /--throttle: dirty-limit needs --log-mode dirty-ring/],
    [["migrate-perf", "--dirty-ring-size", "512"], /--dirty-ring-size: needs --log-mode dirty-ring/],
    [["migrate", "--local", "--dirty-ring-size", "512"], /--dirty-ring-size: needs --log-mode dirty-ring/],
    [["migrate-perf", "--throttle", "auto-converge", "--wp", "all"], /--wp: with --throttle: one design/],
    // The default's value given explicitly is two designs, not the default's one (value source).
    [
      ["migrate-perf", "--throttle", "auto-converge", "--wp", "locked,lockless"],
      /--wp: with --throttle: one design/,
    ],
    [["migrate-perf", "--throttle", "nope"], /--throttle/],
    [
      ["migrate", "--local", "--log-mode", "dirty-ring", "--dirty-limit", "50", "--auto-converge"],
      /--dirty-limit/,
    ],
  ];
  for (const [args, re] of cases) {
    const r = await runKvmmu(args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
    assert.match(r.err, /^kvmmu: EINVAL: /);
    assert.match(r.err, re, args.join(" "));
  }
});

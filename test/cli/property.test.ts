/**
 * Property-based test of the CLI (fast-check, ~20 spawned runs): for random argv, valid and
 * invalid, the exit status is 0, 1 or 2; status 2 comes with exactly one stderr line
 * `kvmmu: EINVAL: ...`; status 0 with nothing on stderr. Long commands only get argv that is
 * refused (an invalid value is always among their options) or is cheap (explore, replay).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { runKvmmu } from "../helpers/cli.js";

const badOpt = fc.constantFrom(
  ["--vcpus", "0"],
  ["--vcpus", "x"],
  ["--iterations", "-1"],
  ["--bytes", "12q"],
  ["--wp", "fast"],
  ["--mode", "ept"],
  ["--nope"],
  ["--seed"],
);
const goodOpt = fc.constantFrom(["--json"], ["--seed", "3"], ["--no-thp"]);

const longCmd = fc
  .tuple(
    fc.constantFrom("dirty-log-perf", "dirty-log-test", "kernbench", "stress"),
    fc.array(goodOpt, { maxLength: 2 }),
    badOpt,
  )
  .map(([c, good, bad]) => [c, ...good.flat(), ...bad]);

const exploreCmd = fc
  .tuple(
    fc.constantFrom("skip-flush", "nope", ""),
    fc.constantFrom("1", "2", "0", "x"),
    fc.constantFrom("random", "pct", "dfs", "bfs"),
    fc.boolean(),
  )
  .map(([sc, n, st, json]) => [
    "explore",
    ...(sc ? ["--scenario", sc] : []),
    "--schedules",
    n,
    "--strategy",
    st,
    ...(json ? ["--json"] : []),
  ]);

const replayCmd = fc
  .tuple(
    fc.constantFrom("skip-flush", "nope"),
    fc.constantFrom("fixed", "bug", "x"),
    fc.array(fc.tuple(fc.integer({ min: 0, max: 3 }), fc.constantFrom("", "*2", "*0", "*99999999")), {
      maxLength: 4,
    }),
  )
  .map(([sc, b, items]) => ["replay", `${sc}@${b}:${items.map(([t, n]) => `${t}${n}`).join(",")}`]);

const junk = fc.array(fc.constantFrom("nope", "-x", "--", "help", "--version", "--help"), { maxLength: 2 });

test("property: random argv gets exit 0/1/2, and 2 always with one `kvmmu: EINVAL:` line", async () => {
  await fc.assert(
    fc.asyncProperty(fc.oneof(longCmd, exploreCmd, replayCmd, junk), async (argv) => {
      const r = await runKvmmu(argv);
      const what = `kvmmu ${argv.join(" ")}: ${r.err}`;
      assert.ok([0, 1, 2].includes(r.code), what);
      if (r.code === 2) {
        const lines = r.err.trimEnd().split("\n");
        assert.equal(lines.length, 1, what);
        assert.match(lines[0], /^kvmmu: EINVAL: \S/, what);
        assert.equal(r.out, "", what);
      }
      if (r.code === 0) assert.equal(r.err, "", what);
    }),
    { numRuns: 20, seed: 7, endOnFailure: true },
  );
});

/** `kvmmu compare`: ratios of medians with bootstrap CIs, and refusals of mismatched files. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { runKvmmu } from "../helpers/cli.js";
import { bootstrapRatioCi, compare, CompareResult } from "../../src/results/compare.js";
import { validateResult } from "../../src/results/schema.js";
import { migrateDoc, perfRunOnce, read, tmp } from "./helpers.js";

type Doc = Record<string, unknown>;
interface It {
  warmup: boolean;
  getDirtyLogNs: number;
}

/** One real dirty-log-perf result: each test reads it or saves changed copies. */
const real = (): Promise<string> => perfRunOnce("cmp-real.json");

/** A copy of a real result whose locked get-dirty-log times are the given ones. */
function withTimes(base: Doc, ns: number[]): Doc {
  const d = structuredClone(base);
  const its = (d["results"] as { locked: { iterations: It[] } }).locked.iterations;
  its.length = 0;
  const proto = (base["results"] as { locked: { iterations: It[] } }).locked.iterations[0];
  for (const x of ns) its.push({ ...proto, warmup: false, getDirtyLogNs: x });
  return d;
}

function save(name: string, doc: Doc): string {
  const f = join(tmp, name);
  writeFileSync(f, JSON.stringify(doc));
  return f;
}

test("bootstrapRatioCi: brackets the ratio of medians, excludes 1 for a clear change", () => {
  const a = [10, 11, 9, 10, 10.5, 9.5, 10.2, 9.8];
  const b = a.map((x) => 2 * x);
  const [lo, hi] = bootstrapRatioCi(a, b);
  assert.ok(lo > 1.5 && hi < 2.5 && lo <= 2 && hi >= 2, `[${lo}, ${hi}]`);
  const [lo2, hi2] = bootstrapRatioCi(a, [...a].reverse());
  assert.ok(lo2 < 1 && hi2 > 1, `[${lo2}, ${hi2}]`);
});

test("compare flags a doubled get-dirty-log time as worse, and an equal one as no change", async () => {
  const base = read(await real());
  const t = [1e6, 1.1e6, 0.9e6, 1.05e6, 0.95e6, 1.02e6];
  const a = save("cmp-a.json", withTimes(base, t));
  const b = save(
    "cmp-b.json",
    withTimes(
      base,
      t.map((x) => 2 * x),
    ),
  );
  const c = save("cmp-c.json", withTimes(base, [...t].reverse()));
  const r = await runKvmmu(["compare", a, b, c, "--json"]);
  assert.equal(r.code, 0, r.err);
  const res = JSON.parse(r.out) as CompareResult;
  assert.equal(res.command, "dirty-log-perf");
  assert.deepEqual(res.files, [b, c]);
  const row = (f: string) => res.rows.find((x) => x.file === f && x.figure === "locked get dirty log")!;
  assert.equal(row(b).verdict, "worse");
  assert.ok(Math.abs(row(b).ratio - 2) < 1e-9);
  assert.ok(row(b).ci95![0] > 1);
  assert.equal(row(c).verdict, "no change shown");
  assert.ok(row(c).ci95![0] <= 1 && row(c).ci95![1] >= 1);
  // Throughput is better higher: the same direction of change is "better" there.
  const tp = compare([
    { file: "x", doc: validateResult(withTimes(base, t), "x") },
    { file: "y", doc: validateResult(withTimes(base, t), "y") },
  ]).rows.find((x) => x.figure === "locked guest throughput")!;
  assert.equal(tp.better, "higher");

  const text = await runKvmmu(["compare", a, b]);
  assert.match(text.out, /locked get dirty log\s+ms\s+.*2\.00x\s+\[[\d.]+, [\d.]+\]\s+\* worse/);
  const md = await runKvmmu(["compare", a, b, "--markdown"]);
  assert.match(md.out, /^\| figure +\| unit +\|/m);
  // The defect was `*** worse**`: the flag is bold text, no stray asterisk.
  assert.match(md.out, /\| locked get dirty log +\| ms +\|.*\| \*\*worse\*\* +\|/);
  assert.doesNotMatch(md.out, /\*\*\*/);
});

test("compare refuses, exit 2 and one typed line, files of other commands, versions or shapes", async () => {
  const perf = await real();
  const m = save("cmp-m.json", migrateDoc("locked", 10));
  const v3 = save("cmp-v3.json", { ...read(perf), schemaVersion: 99 });
  const broken = save("cmp-broken.json", { ...read(perf), machine: { cpus: "many" } });
  const notJson = join(tmp, "cmp-nj.json");
  writeFileSync(notJson, "{");
  const cases: [string[], RegExp][] = [
    [[perf, m], /is a migrate result, .* is a dirty-log-perf result: compare files of one command/],
    [[perf, v3], /cmp-v3\.json: schemaVersion 99: this kvmmu reads schema versions 1, 2, 3/],
    [[perf, broken], /cmp-broken\.json: \/machine\/\w+: .*\(schema of dirty-log-perf\)/],
    [[perf, notJson], /cmp-nj\.json: is not JSON/],
    [[perf], /compare needs at least two result files/],
    [[perf, join(tmp, "missing.json")], /^kvmmu: ENOENT: .*missing\.json: cannot read/],
  ];
  for (const [files, re] of cases) {
    const r = await runKvmmu(["compare", ...files]);
    assert.equal(r.code, 2, `${files.join(" ")}: ${r.err}`);
    assert.equal(r.out, "");
    assert.equal(r.err.trim().split("\n").length, 1, r.err);
    assert.match(r.err, re);
  }
});

test("compare warns, in every format, when options or machines differ from the baseline's", async () => {
  const base = read(await real());
  const t = [1e6, 1.1e6, 0.9e6, 1.05e6, 0.95e6, 1.02e6];
  const a = save("cmp-wa.json", withTimes(base, t));
  const other = withTimes(base, t);
  (other["options"] as Record<string, unknown>)["bytesPerVcpu"] = 12345;
  (other["machine"] as Record<string, unknown>)["cpus"] = 99;
  const b = save("cmp-wb.json", other);
  const same = save("cmp-wc.json", withTimes(base, t));

  const r = await runKvmmu(["compare", a, b, same, "--json"]);
  assert.equal(r.code, 0, r.err);
  const res = JSON.parse(r.out) as CompareResult;
  assert.equal(res.warnings.length, 2, JSON.stringify(res.warnings));
  assert.match(
    res.warnings[0],
    /cmp-wb\.json: options differ from .*cmp-wa\.json: bytesPerVcpu \d+ -> 12345$/,
  );
  assert.match(res.warnings[1], /cmp-wb\.json: machines differ from .*cmp-wa\.json: cpus \d+ -> 99$/);
  assert.ok(!res.warnings.some((w) => w.includes("cmp-wc.json")));
  // On stderr, whatever the format: stdout holds the table alone.
  const text = await runKvmmu(["compare", a, b]);
  assert.match(text.err, /^kvmmu: warning: .*cmp-wb\.json: options differ/m);
  assert.doesNotMatch(text.out, /warning/i);
  const md = await runKvmmu(["compare", a, b, "--markdown"]);
  assert.match(md.err, /^kvmmu: warning: .*cmp-wb\.json: machines differ/m);
  const none = await runKvmmu(["compare", a, same]);
  assert.doesNotMatch(none.err, /warning/i);
});

/**
 * Result files an attacker (or a newer kvmmu) may hand to compare and report: each is refused
 * with a KvmError naming the file and the field (the CLI's exit 2), or accepted; never an
 * internal error (exit 3). The property runs the commands in-process, as the CLI's actions do.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import fc from "fast-check";
import { KvmError } from "../../src/errors.js";
import { envelope } from "../../src/bench/result.js";
import { validateResult } from "../../src/results/schema.js";
import { compareFiles, reportFiles } from "../../src/cli/results_cmd.js";
import { runKvmmu } from "../helpers/cli.js";
import { migrateDoc } from "./helpers.js";

const tmp = mkdtempSync(join(tmpdir(), "kvmmu-badfiles-"));
const V1 = fileURLToPath(new URL("../../../test/results/fixtures/dirty-log-perf-v1.json", import.meta.url));
type Json = Record<string, unknown>;

const summary = (xs: number[]): Json => {
  const s = [...xs].sort((a, b) => a - b);
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  return {
    n: xs.length,
    median: s[s.length >> 1],
    mean,
    stdev: 0,
    min: s[0],
    max: s[s.length - 1],
    ci95: [s[0], s[s.length - 1]],
  };
};

/** A kernbench result of two cells (logging off and locked, TDP), 2 runs each, in the envelope. */
function kernbenchDoc(): Json {
  const cell = (ns: number[]): Json => ({
    runs: ns.map((realNs) => ({
      warmup: false,
      realNs,
      opsPerSec: 4e9 / realNs,
      harvests: 3,
      dirtyPages: 100,
    })),
    real: summary(ns),
    realAvgNs: ns[0],
    realStdNs: 0,
    throughput: summary(ns.map((x) => 4e9 / x)),
    opsPerSec: 4e9 / ns[0],
    harvestsPerSec: 10,
  });
  return {
    ...envelope("kernbench", {
      vcpus: 1,
      processes: 1,
      jobs: 4,
      runs: 2,
      modes: ["tdp"],
      logging: ["off", "locked"],
    }),
    results: { tdp: { off: cell([1e8, 1.1e8]), locked: cell([1.2e8, 1.3e8]) } },
    ratio: {},
  };
}

const perfDoc = (): Json => JSON.parse(readFileSync(V1, "utf8")) as Json;

let n = 0;
function save(doc: unknown): string {
  const f = join(tmp, `r${n++}.json`);
  writeFileSync(f, JSON.stringify(doc));
  return f;
}

/** The exit status the CLI would give: 0, 2 for a KvmError (bad input), 3 for anything else. */
async function exitOf(fn: () => Promise<unknown>): Promise<{ code: 0 | 2 | 3; message: string }> {
  try {
    await fn();
    return { code: 0, message: "" };
  } catch (e) {
    if (e instanceof KvmError) return { code: 2, message: e.message };
    return { code: 3, message: (e as Error).stack ?? String(e) };
  }
}

const compareExit = (files: string[]) => exitOf(() => compareFiles(files, { json: true }));
const reportExit = (files: string[]) => exitOf(() => reportFiles(files, join(tmp, "out.html")));

function refused(r: { code: number; message: string }, ...names: string[]): void {
  assert.equal(r.code, 2, r.message);
  assert.match(r.message, /^EINVAL: /);
  for (const x of names) assert.ok(r.message.includes(x), `${r.message} names ${x}`);
}

test("the fixtures are valid results, compared and drawn", async () => {
  for (const d of [kernbenchDoc(), perfDoc(), migrateDoc("locked", 40)]) validateResult(d, "fixture");
  const k = save(kernbenchDoc());
  assert.deepEqual(await compareExit([k, k]), { code: 0, message: "" });
  assert.deepEqual(await reportExit([k]), { code: 0, message: "" });
});

test('"command": "__proto__" or "constructor" (or any Object.prototype name): EINVAL naming command', async () => {
  for (const command of ["__proto__", "constructor", "toString", "hasOwnProperty"]) {
    // JSON.parse makes "__proto__" an own property, as a file read from disk has it.
    const f = save(
      JSON.parse(JSON.stringify(kernbenchDoc()).replace('"command":"kernbench"', `"command":"${command}"`)),
    );
    refused(await compareExit([f, f]), f, "command");
    refused(await reportExit([f]), f, "command");
  }
});

test("kernbench: an extra property in results (the docs allow extras) is accepted by compare and report", async () => {
  for (const extra of [{ a: 1 }, "x", [1, 2], null, { off: 1 }]) {
    const d = kernbenchDoc();
    (d["results"] as Json)["nested"] = extra;
    const f = save(d);
    const base = save(kernbenchDoc());
    assert.deepEqual(await compareExit([base, f]), { code: 0, message: "" }, JSON.stringify(extra));
    assert.deepEqual(await reportExit([f]), { code: 0, message: "" }, JSON.stringify(extra));
  }
});

test("kernbench: results {} compares, and report refuses it naming results (nothing to draw)", async () => {
  const d = kernbenchDoc();
  d["results"] = {};
  const f = save(d);
  assert.equal((await compareExit([save(kernbenchDoc()), f])).code, 0);
  refused(await reportExit([f]), f, "results");
  // Nor a mode without cells, or cells without runs.
  refused(await reportExit([save({ ...d, results: { tdp: {} } })]), "results");
});

test("dirty-log-perf with 10,001 measured iterations: compare reads it, report refuses naming the design's iterations", async () => {
  const d = perfDoc();
  const results = d["results"] as Record<string, { iterations: Json[] }>;
  const [wp] = Object.keys(results);
  const its = results[wp].iterations;
  results[wp].iterations = Array.from({ length: 10_001 }, (_, i) => ({
    ...its[i % its.length],
    warmup: false,
  }));
  const f = save(d);
  assert.equal((await compareExit([f, f])).code, 0);
  refused(await reportExit([f]), f, `results/${wp}/iterations`, "10001");
});

test("the CLI gives these exit 2 with one line, no stack", async () => {
  const bad = save(
    JSON.parse(JSON.stringify(kernbenchDoc()).replace('"command":"kernbench"', '"command":"__proto__"')),
  );
  const empty = save({ ...kernbenchDoc(), results: {} });
  for (const args of [
    ["compare", bad, bad],
    ["report", bad, "-o", join(tmp, "o.html")],
    ["report", empty, "-o", join(tmp, "o.html")],
  ]) {
    const r = await runKvmmu(args);
    assert.equal(r.code, 2, r.err);
    assert.equal(r.err.trim().split("\n").length, 1, r.err);
    assert.match(r.err, /^kvmmu: EINVAL: /);
  }
});

// ---- property: random JSON mutations of a valid saved result ----------------------------------

type Path = (string | number)[];

function paths(x: unknown, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (Array.isArray(x)) x.slice(0, 4).forEach((v, i) => paths(v, [...at, i], out));
  else if (x !== null && typeof x === "object")
    for (const [k, v] of Object.entries(x)) paths(v, [...at, k], out);
  return out;
}

type Mutation =
  | { kind: "set"; pick: number; value: unknown }
  | { kind: "delete"; pick: number }
  | { kind: "add"; pick: number; key: string; value: unknown }
  | { kind: "resize"; pick: number; len: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("set" as const), pick: fc.nat(), value: fc.jsonValue({ maxDepth: 2 }) }),
  fc.record({ kind: fc.constant("delete" as const), pick: fc.nat() }),
  fc.record({
    kind: fc.constant("add" as const),
    pick: fc.nat(),
    key: fc.oneof(
      fc.constantFrom("__proto__", "constructor", "tdp", "shadow", "off", "locked", "iterations"),
      fc.string({ maxLength: 6 }),
    ),
    value: fc.jsonValue({ maxDepth: 2 }),
  }),
  fc.record({ kind: fc.constant("resize" as const), pick: fc.nat(), len: fc.nat({ max: 6 }) }),
);

/** Applies `m` to a copy of `doc` (through JSON text, so "__proto__" keys stay own properties). */
function mutate(doc: Json, ms: Mutation[]): unknown {
  let root: unknown = JSON.parse(JSON.stringify(doc));
  for (const m of ms) {
    const ps = paths(root);
    const p = ps[m.pick % ps.length];
    if (p.length === 0) {
      if (m.kind === "set") root = m.value;
      continue;
    }
    let parent = root as Record<string | number, unknown>;
    for (const k of p.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
    const last = p[p.length - 1];
    const here = parent[last];
    if (m.kind === "set") parent[last] = m.value;
    else if (m.kind === "delete") {
      if (Array.isArray(parent)) parent.splice(last as number, 1);
      else delete parent[last];
    } else if (m.kind === "add" && here !== null && typeof here === "object" && !Array.isArray(here))
      Object.defineProperty(here, m.key, {
        value: m.value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
    else if (m.kind === "resize" && Array.isArray(here))
      parent[last] = Array.from(
        { length: m.len },
        (_, i): unknown => structuredClone<unknown>(here[i % Math.max(1, here.length)]) ?? 0,
      );
  }
  // Back through JSON: what a file holds.
  return JSON.parse(JSON.stringify(root) ?? "null") as unknown;
}

test(
  "property: compare and report of a mutated result exit 0 or 2, never 3",
  { timeout: 300_000 },
  async () => {
    const docs: [string, Json][] = [
      ["kernbench", kernbenchDoc()],
      ["dirty-log-perf", perfDoc()],
      ["migrate", migrateDoc("lockless", 30)],
    ];
    const bases = docs.map(([, d]) => save(d));
    // Mutations that keep the file valid must be among those tried: the drawing path is exercised.
    let drawn = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.nat({ max: docs.length - 1 }),
        fc.array(mutation, { minLength: 1, maxLength: 3 }),
        async (which, ms) => {
          const f = save(mutate(docs[which][1], ms));
          const report = await reportExit([f]);
          if (report.code === 0) drawn++;
          for (const r of [await compareExit([bases[which], f]), await compareExit([f]), report])
            assert.notEqual(r.code, 3, r.message);
        },
      ),
      { numRuns: 300 },
    );
    assert.ok(drawn >= 10, `only ${drawn} of 300 mutated files were drawn`);
  },
);

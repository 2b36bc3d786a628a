/**
 * Mutants are active in worker threads too (npm run mutation, docs/verification.md). StrykerJS
 * instruments src/ and each instrumented module, as it loads, takes the active mutant from
 * process.env.__STRYKER_ACTIVE_MUTANT__, which the tap runner sets for each test process. The
 * vCPU threads, the explorer's threads and the pool are worker threads: they see the mutant if
 * they see that variable, which holds when they are started without an `env` option (Node then
 * gives a worker a copy of the process's environment).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const srcDir = fileURLToPath(new URL("../../../src/", import.meta.url));

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

test("no worker thread of src/ is started with its own environment (it would lose the mutant)", () => {
  let workers = 0;
  for (const f of sources(srcDir)) {
    const text = readFileSync(f, "utf8");
    for (const m of text.matchAll(/new Worker\(([\s\S]*?)\);/g)) {
      workers++;
      assert.doesNotMatch(m[1], /\benv\s*:/, `${f}: a Worker with an env option`);
    }
  }
  // vCPU threads, the host thread, stress actors, the explorer's crew and its pool
  assert.ok(workers >= 5, `found ${workers} Worker constructions`);
});

test("a worker thread, nested as the pool's explorers are, sees the process's active mutant", () => {
  const code = `
    const { Worker } = require("node:worker_threads");
    const inner = "const { parentPort } = require('node:worker_threads'); parentPort.postMessage(process.env.__STRYKER_ACTIVE_MUTANT__);";
    const outer = "const { Worker, parentPort } = require('node:worker_threads'); new Worker(" + JSON.stringify(inner) + ", { eval: true }).on('message', (m) => parentPort.postMessage(m));";
    new Worker(outer, { eval: true }).on("message", (m) => console.log(m));`;
  const out = execFileSync(process.execPath, ["-e", code], {
    env: { ...process.env, __STRYKER_ACTIVE_MUTANT__: "42" },
    encoding: "utf8",
  });
  assert.equal(out.trim(), "42");
});

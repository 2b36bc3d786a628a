#!/usr/bin/env node
// @ts-check
/**
 * `npm test`: node:test's runner over the compiled test files, two files at a time (a 2-core
 * machine ran them one at a time with a core idle), the longest first so that no long file
 * starts last and runs alone. The output is node --test's TAP, summary lines included (CI reads
 * `# tests`, `# pass`, `# fail`); the exit status is 1 when any test fails.
 *
 * The order changes only the wall time, never a result: each file still runs in its own process.
 * `node --test` sorts the files it is given by name, hence this script and node:test's run().
 *
 * Files that only `npm run mutation` runs (MUTATION_ONLY) are left out of the default list.
 *
 *   node scripts/test.mjs [--concurrency N] [file.test.js ...]   (default: every dist/test file)
 *   node scripts/test.mjs --list                                  the default list, in order; runs nothing
 */
import { run } from "node:test";
import { tap } from "node:test/reporters";
import { readdirSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import process from "node:process";
import { URL, fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const DIST = join(ROOT, "dist", "test");

/**
 * The files that take longest (CPU seconds, measured one at a time on the 2-core machine), the
 * longest first; the rest follow by name. A file missing here only starts later.
 */
const LONGEST = [
  "verify/explore_full.test.js",
  "verify/explore_generate.test.js",
  "results/report.test.js",
  "migration/postcopy_recover.test.js",
  "bench/dirty_log_perf_cli.test.js",
  "verify/explore.test.js",
  "package/pack.test.js",
  "bench/migrate_perf.test.js",
  "results/bad_files.test.js",
  "results/schema.test.js",
  "migration/precopy.test.js",
  "migration/postcopy.test.js",
  "verify/dirty_log_test.test.js",
  "results/compare.test.js",
  "cli/dirty_log_test_cmd.test.js",
  "cli/usage.test.js",
  "cli/trace_cmd.test.js",
];

/**
 * Test files written for the mutation runs (stryker.*.json name them): explore_quick is the
 * explorer at a budget a mutant can pay, every job of explore_full at 8 schedules and two
 * generated programs; explore_full and explore_generate check the same at full budget here.
 */
const MUTATION_ONLY = ["verify/explore_quick.test.js"];

/** @param {string} dir @returns {string[]} */
function testFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? testFiles(join(dir, e.name)) : e.name.endsWith(".test.js") ? [join(dir, e.name)] : [],
  );
}

/** @param {string[]} files */
function longestFirst(files) {
  const rank = (/** @type {string} */ f) => {
    const path = f.split("\\").join("/");
    const i = LONGEST.findIndex((l) => path.endsWith(`/${l}`));
    return i < 0 ? LONGEST.length : i;
  };
  return [...files].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
}

function usage(/** @type {string} */ msg) {
  process.stderr.write(
    `test: ${msg}\nusage: node scripts/test.mjs [--concurrency N] [file.test.js ...] | --list\n`,
  );
  process.exit(2);
}

let concurrency = 2;
let list = false;
const named = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--concurrency") {
    const n = Number(argv[++i]);
    if (!Number.isInteger(n) || n < 1 || n > 64) usage(`--concurrency: must be 1..64, got ${argv[i]}`);
    concurrency = n;
  } else if (argv[i] === "--list") list = true;
  else if (argv[i].startsWith("-")) usage(`unknown option ${argv[i]}`);
  else named.push(resolve(argv[i]));
}

const mutationOnly = (/** @type {string} */ f) =>
  MUTATION_ONLY.some((m) => f.split("\\").join("/").endsWith(`/${m}`));
const files = longestFirst(named.length > 0 ? named : testFiles(DIST).filter((f) => !mutationOnly(f)));
if (files.length === 0) usage(`no test files under ${relative(ROOT, DIST)} (run npm run build)`);
if (list) {
  for (const f of files) process.stdout.write(`${relative(DIST, f).split("\\").join("/")}\n`);
  process.exit(0);
}
// A hang guard per file (node --test applies --test-timeout to a whole file too): 20 minutes, as
// `npm run test:explore` has, since the full-budget explorer shares the cores with other files.
const stream = run({ files, concurrency, timeout: 1_200_000 });
// A failing todo test does not fail the run (as with node --test).
stream.on("test:fail", (e) => {
  if (!e.todo) process.exitCode = 1;
});
stream.compose(tap).pipe(process.stdout);

#!/usr/bin/env node
// `npm run mutation [-- AREA...]`: StrykerJS over a seeded random sample of each area's code lines,
// one area at a time (stryker.<area>.json), then per area: mutants, killed, survived, timed out,
// the score and its 95% Wilson interval (the mutants are a sample), and the wall time.
//   node scripts/mutation.mjs [AREA...]            run (default: every area), then summarise
//   node scripts/mutation.mjs --summary [AREA...]  summarise results/mutation/<area>.json only
//   node scripts/mutation.mjs --sample [AREA...]   rewrite stryker.<area>.json from the seed (build first)
//   node scripts/mutation.mjs mmu --concurrency 1  options after the areas go to stryker run
// Why lines, not mutants: Stryker has no sampling option; its `mutate` takes `file:L1-L2` ranges,
// so a sampled line is mutated whole (every mutant that starts and ends on it) and nothing else
// is instrumented. Mutants spanning several lines (an emptied block, a multi-line condition) are
// therefore outside every sample. Mutants of one line are not independent draws: the interval is
// somewhat too narrow.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { URL } from "node:url";
import { format, resolveConfig } from "prettier";

const SEED = 26;
const OUT = "results/mutation";
const unit = (...names) => names.map((n) => `dist/test/${n}.test.js`);
// Each area: the source files sampled, how many code lines, and the tests each mutant runs
// (the area's fast unit tests first, then the explorer at a small budget where it reaches the code).
const AREAS = {
  mmu: {
    files: ["src/mmu"],
    lines: 18,
    tests: [
      ...unit(
        "mmu/clear_dirty_log",
        "mmu/spte",
        "mmu/mmu_cache",
        "mmu/rmap",
        "mmu/rmap_chain_end",
        "mmu/dirty_ring",
        "mmu/wp_design",
      ),
      ...unit(
        "mmu/tdp_mmu/tdp_iter",
        "mmu/tdp_mmu/clear_dirty_masked",
        "mmu/tdp_mmu/split_huge_page",
        "mmu/fault_userfault",
        "verify/mutant_worker",
        "verify/explore_quick",
      ),
    ],
  },
  mem: {
    files: ["src/mem"],
    lines: 14,
    tests: unit(
      "mem/numa_scan_ranges",
      "mem/host_memory",
      "mem/set_memslot",
      "vm/dirty_ring",
      "vm/dirty_log_clear",
      "mmu/dirty_ring",
      "verify/explore_quick",
    ),
  },
  kvm: {
    files: ["src/kvm"],
    lines: 14,
    tests: unit(
      "kvm/pml",
      "kvm/requests",
      "kvm/vm_dead",
      "mmu/lockdep",
      "vm/dead_vm",
      "verify/explore_quick",
    ),
  },
  vcpu: {
    files: ["src/vcpu"],
    lines: 14,
    tests: unit(
      "vcpu/tlb",
      "vcpu/vcpu_access",
      "kvm/pml",
      "vm/dirty_log_clear",
      "verify/mutant_worker",
      "mmu/shadow",
      "verify/explore_quick",
    ),
  },
  migration: {
    // The stream framing, reader and writer; its digest (and the digest's worker); the handshake
    // and authentication; TLS.
    files: [
      "src/migration/stream.ts",
      "src/migration/stream_hash.ts",
      "src/migration/stream_hash_worker.ts",
      "src/migration/auth.ts",
      "src/migration/tls.ts",
    ],
    lines: 14,
    tests: unit(
      "migration/stream",
      "migration/stream_hash",
      "migration/auth",
      "migration/stream_mutation",
      "migration/secure",
    ),
  },
};

function tsFiles(path) {
  if (path.endsWith(".ts")) return [path];
  return readdirSync(path, { withFileTypes: true })
    .flatMap((e) =>
      e.isDirectory() ? tsFiles(join(path, e.name)) : e.name.endsWith(".ts") ? [join(path, e.name)] : [],
    )
    .sort();
}

// A line that can hold a mutant: not blank, a comment, an import, a type or a bare brace.
function codeLine(text) {
  const t = text.trim();
  if (t === "" || /^(\/\/|\/\*|\*)/.test(t)) return false;
  if (/^(import\b|export\s+(type|interface)\b|type\s|interface\s|declare\s)/.test(t)) return false;
  if (/^[{}()[\];,]*$/.test(t)) return false;
  return !/^(readonly\s+)?[\w$]+\??:\s*[^=()]+;$/.test(t); // a field's declaration
}

// The project's PRNG (src/bench/stats.ts), compiled: `npm run build` first.
async function loadMulberry32() {
  const url = new URL("../dist/src/bench/stats.js", import.meta.url);
  if (!existsSync(url)) {
    console.error("mutation: dist/src/bench/stats.js is missing: run `npm run build` first");
    process.exit(2);
  }
  return (await import(url.href)).mulberry32;
}

async function sample(name, mulberry32) {
  const area = AREAS[name];
  const pool = [];
  for (const f of area.files.flatMap(tsFiles))
    readFileSync(f, "utf8")
      .split("\n")
      .forEach((l, i) => codeLine(l) && pool.push(`${f}:${i + 1}-${i + 1}`));
  const rnd = mulberry32(SEED + [...name].reduce((h, c) => h * 31 + c.charCodeAt(0), 0));
  for (let i = pool.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [pool[i], pool[j]] = [pool[j], pool[i]];
  }
  const mutate = pool.slice(0, area.lines).sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
  const config = {
    $schema: "./node_modules/@stryker-mutator/core/schema/stryker-schema.json",
    _comment: `written by scripts/mutation.mjs --sample: ${area.lines} of ${pool.length} code lines of ${area.files.join(", ")}, seed ${SEED}`,
    packageManager: "npm",
    testRunner: "tap",
    tap: { testFiles: area.tests, nodeArgs: ["--import", "./dist/test/helpers/stryker_cover_all.js"] },
    buildCommand: "npx tsc -p .",
    mutate,
    coverageAnalysis: "off",
    ignorePatterns: ["dist", "results", ".stryker-tmp"],
    reporters: ["html", "json", "progress"],
    htmlReporter: { fileName: `${OUT}/${name}.html` },
    jsonReporter: { fileName: `${OUT}/${name}.json` },
    concurrency: 2,
    timeoutMS: 120000,
    tempDirName: `.stryker-tmp/${name}`,
  };
  // Written as prettier writes it (the project's .prettierrc), so `npm run lint` passes on it.
  const file = `stryker.${name}.json`;
  const text = await format(JSON.stringify(config), { ...(await resolveConfig(file)), filepath: file });
  writeFileSync(file, text);
  console.error(`stryker.${name}.json: ${mutate.length} of ${pool.length} code lines`);
}

// The 95% Wilson score interval of k successes in n.
export function wilson(k, n, z = 1.96) {
  if (n === 0) return [0, 1];
  const p = k / n;
  const d = 1 + (z * z) / n;
  const c = (p + (z * z) / (2 * n)) / d;
  const h = (z * Math.sqrt((p * (1 - p)) / n + (z * z) / (4 * n * n))) / d;
  return [Math.max(0, c - h), Math.min(1, c + h)];
}

function summarise(name, wallS) {
  const report = JSON.parse(readFileSync(`${OUT}/${name}.json`, "utf8"));
  const n = {
    Killed: 0,
    Survived: 0,
    Timeout: 0,
    NoCoverage: 0,
    CompileError: 0,
    RuntimeError: 0,
    Ignored: 0,
  };
  const survivors = [];
  for (const [file, f] of Object.entries(report.files))
    for (const m of f.mutants) {
      n[m.status] = (n[m.status] ?? 0) + 1;
      if (m.status === "Survived" || m.status === "NoCoverage")
        survivors.push(
          `${file}:${m.location.start.line} #${m.id} ${m.mutatorName}: ${JSON.stringify(m.replacement)}`,
        );
    }
  const detected = n.Killed + n.Timeout;
  const valid = detected + n.Survived + n.NoCoverage;
  const [lo, hi] = wilson(detected, valid);
  return {
    area: name,
    mutants: valid,
    killed: n.Killed,
    survived: n.Survived,
    timedOut: n.Timeout,
    noCoverage: n.NoCoverage,
    errors: n.CompileError + n.RuntimeError,
    score: valid ? detected / valid : null,
    wilson95: [lo, hi],
    wallS,
    survivors,
  };
}

const pct = (x) => (x === null ? "-" : `${(100 * x).toFixed(1)} %`);
const args = process.argv.slice(2);
const mode = args[0]?.startsWith("--") ? args.shift() : "--run";
const opt = args.findIndex((a) => a.startsWith("--"));
const strykerArgs = opt < 0 ? [] : args.splice(opt);
const names = args.length ? args : Object.keys(AREAS);
for (const a of names)
  if (!(a in AREAS)) {
    console.error(`mutation: unknown area ${a} (areas: ${Object.keys(AREAS).join(", ")})`);
    process.exit(2);
  }
if (mode === "--sample") {
  const mulberry32 = await loadMulberry32();
  for (const a of names) await sample(a, mulberry32);
  process.exit(0);
}
mkdirSync(OUT, { recursive: true });
const prev = existsSync(`${OUT}/summary.json`) ? JSON.parse(readFileSync(`${OUT}/summary.json`, "utf8")) : {};
for (const a of names) {
  let wallS = prev[a]?.wallS ?? null;
  if (mode === "--run") {
    const t0 = Date.now();
    const r = spawnSync("npx", ["stryker", "run", `stryker.${a}.json`, ...strykerArgs], { stdio: "inherit" });
    wallS = Math.round((Date.now() - t0) / 1000);
    if (r.status !== 0) {
      console.error(`mutation: stryker failed on ${a} (exit ${r.status})`);
      process.exit(1);
    }
  }
  prev[a] = summarise(a, wallS);
  writeFileSync(`${OUT}/summary.json`, JSON.stringify(prev, null, 2) + "\n");
}
console.log("| area | mutants | killed | survived | timed out | score | 95% Wilson | wall |");
console.log("| ---- | ------- | ------ | -------- | --------- | ----- | ---------- | ---- |");
for (const a of names) {
  const s = prev[a];
  console.log(
    `| ${a} | ${s.mutants} | ${s.killed} | ${s.survived + s.noCoverage} | ${s.timedOut} | ${pct(s.score)} | ${pct(s.wilson95[0])} – ${pct(s.wilson95[1])} | ${s.wallS ?? "-"} s |`,
  );
}
for (const a of names) for (const s of prev[a].survivors) console.log(`survived ${s}`);

/**
 * `kvmmu migrate-perf`: whole migrations alternated between the designs, every one verified,
 * statistics per design and paired ratios, saved in the result schema.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runKvmmu } from "../helpers/cli.js";
import { validateResult, type MigratePerfDocT } from "../../src/results/schema.js";
import {
  checkMigratePerfOptions,
  migratePerf,
  MIGRATE_PERF_DEFAULTS,
  toRun,
} from "../../src/bench/migrate_perf.js";
import { KvmError } from "../../src/errors.js";
import { migrateLocal } from "../../src/migration/local.js";

test("migrate-perf's options: what needs the dirty ring is refused by the library, naming the option", () => {
  const d = MIGRATE_PERF_DEFAULTS;
  assert.doesNotThrow(() => checkMigratePerfOptions({ ...d, logMode: "dirty-ring", dirtyRingSize: 512 }));
  const refused: [object, RegExp][] = [
    [{ dirtyRingSize: 512 }, /^EINVAL: dirtyRingSize: needs logMode "dirty-ring" \(got dirty-log\)$/],
    [
      { throttle: ["dirty-limit"], wp: ["lockless"], logMode: "clear-log" },
      /^EINVAL: throttle: dirty-limit needs logMode "dirty-ring" \(got clear-log\)$/,
    ],
  ];
  for (const [o, re] of refused)
    assert.throws(
      () => checkMigratePerfOptions({ ...d, ...o }),
      (e: unknown) => e instanceof KvmError && re.test(e.message),
    );
});

test("kvmmu migrate-perf: alternated runs, all verified, CIs and paired ratios, schema-valid", async () => {
  const file = join(mkdtempSync(join(tmpdir(), "kvmmu-migperf-")), "mp.json");
  // 1 MiB over 8 MiB/s with a 30 s downtime limit: every run converges at exactly --min-rounds
  // (with the default 1 s, a loaded machine's measured bandwidth could ask for another round).
  const r = await runKvmmu([
    "migrate-perf",
    "--json",
    "--output",
    file,
    "--downtime-limit",
    "30000",
    "-n",
    "3",
    "--warmup",
    "1",
    "-b",
    "1M",
    "--max-bandwidth",
    "8M",
    "--min-rounds",
    "2",
    "--guest-warmup",
    "50",
    "--loopback",
    "16M",
  ]);
  assert.equal(r.code, 0, r.err);
  const doc = validateResult(JSON.parse(readFileSync(file, "utf8")), file) as MigratePerfDocT;
  assert.deepEqual(JSON.parse(r.out), doc);
  const { locked, lockless } = doc.results;
  // Alternated: locked, lockless, locked, ... (warm-up pair first).
  const order = [...locked.runs, ...lockless.runs].sort((a, b) => a.seq - b.seq).map((x) => x.wp);
  assert.deepEqual(order, [
    "locked",
    "lockless",
    "locked",
    "lockless",
    "locked",
    "lockless",
    "locked",
    "lockless",
  ]);
  assert.deepEqual(
    locked.runs.map((x) => x.warmup),
    [true, false, false, false],
  );
  for (const x of [...locked.runs, ...lockless.runs]) {
    assert.equal(x.status, "completed", x.error);
    assert.ok(x.verified);
    assert.equal(x.rounds, 2);
    assert.ok(x.guestRate > 0 && x.downtimeMs > 0 && x.totalTimeMs > x.downtimeMs);
  }
  assert.equal(doc.pairs, 3);
  for (const d of [locked, lockless]) {
    assert.equal(d.completed, 3);
    const s = d.stats.downtimeMs!;
    assert.ok(s.ci95[0] <= s.median && s.median <= s.ci95[1]);
    assert.equal(d.stats.rounds!.median, 2);
  }
  // Equal rounds in every pair: the ratio is exactly 1 and no verdict is drawn from it.
  assert.deepEqual([doc.ratio!.rounds!.median, ...doc.ratio!.rounds!.ci95], [1, 1, 1]);
  assert.equal(doc.ratio!.rounds!.verdict, "no difference shown");
  assert.ok(doc.ratio!.downtimeMs!.ci95[0] <= doc.ratio!.downtimeMs!.ci95[1]);
  // The design-list form: one ratio per design against the baseline, the same numbers.
  const ratios = (doc as unknown as { ratios: Record<string, unknown> }).ratios;
  assert.deepEqual(Object.keys(ratios), ["lockless/locked"]);
  assert.deepEqual(ratios["lockless/locked"], doc.ratio);
  // The raw loopback reference, measured in the same run (before and after the migrations), and
  // each design's bulk round as a ratio of it; rounds[0] keeps QEMU's names.
  const lb = doc as unknown as {
    loopback: { bytes: number; ms: number; bytesPerSec: number }[];
    loopbackBytesPerSec: number;
    bulkVsLoopback: Record<string, { median: number; n: number } | null>;
  };
  assert.equal(lb.loopback.length, 2);
  for (const x of lb.loopback) {
    assert.ok(x.bytes >= 16 << 20 && x.ms > 0, JSON.stringify(x));
    assert.ok(Math.abs(x.bytesPerSec - (x.bytes * 1000) / x.ms) < 1e-6 * x.bytesPerSec);
  }
  assert.ok(lb.loopbackBytesPerSec > 0);
  for (const d of ["locked", "lockless"]) {
    const s = lb.bulkVsLoopback[d]!;
    assert.equal(s.n, 3);
    const rates = doc.results[d].runs
      .filter((x) => !x.warmup)
      .map((x) => (x as unknown as { bulkBytesPerSec: number }).bulkBytesPerSec)
      .sort((a, b) => a - b);
    assert.ok(rates[0] > 0);
    // 1 MiB over a link held to 8 MiB/s: far below the loopback.
    assert.ok(Math.abs(s.median - rates[1] / lb.loopbackBytesPerSec) < 1e-9, `bulk/loopback ${s.median}`);
    assert.ok(s.median < 1);
  }
});

test("kvmmu migrate-perf: bad options are usage errors", async () => {
  const r = await runKvmmu(["migrate-perf", "-n", "0"]);
  assert.equal(r.code, 2);
  assert.match(r.err, /EINVAL: --runs/);
  const m = await runKvmmu(["migrate-perf", "--mode", "tdp,shadow"]);
  assert.equal(m.code, 2);
  assert.match(m.err, /EINVAL: --mode/);
  const w = await runKvmmu(["migrate-perf", "--wp", "locked,nosuch"]);
  assert.equal(w.code, 2);
  assert.match(w.err, /EINVAL: --wp/);
  const b = await runKvmmu(["migrate-perf", "--wp", "lockless", "--baseline", "locked"]);
  assert.equal(b.code, 2);
  assert.match(b.err, /EINVAL: baseline/);
  for (const [args, re] of [
    [["--loopback", "1000"], /EINVAL: --loopback/],
    [["--working-set", "5000"], /EINVAL: --working-set/],
    [["--dirty-rate", "x"], /EINVAL: --dirty-rate/],
  ] as const) {
    const x = await runKvmmu(["migrate-perf", ...args]);
    assert.equal(x.code, 2, x.err);
    assert.match(x.err, re);
  }
});

test("migrate-perf's status says what runs now, before it runs (the heartbeat repeats the last one)", async () => {
  const seen: string[] = [];
  await migratePerf(
    {
      ...MIGRATE_PERF_DEFAULTS,
      runs: 1,
      warmup: 1,
      wp: ["lockless"],
      baseline: "lockless",
      memoryBytes: 1 << 20,
      maxBandwidth: 8 << 20,
      minRounds: 2,
      warmupMs: 0,
      loopbackBytes: 1 << 20,
    },
    (r, k, of) => seen.push(`done ${k}/${of} ${r.status}`),
    (msg) => seen.push(msg),
  );
  assert.deepEqual(seen, [
    "the raw loopback reference",
    "migration 1/2 (lockless, warm-up): running",
    "done 1/2 completed",
    "migration 2/2 (lockless): running",
    "done 2/2 completed",
    "the raw loopback reference, again",
  ]);
});

test("a failed run's error names its code once (the report's message is already led by it)", async () => {
  // A flipped bit: the destination refuses the stream (EBADMSG), the source's report says so.
  const { source } = await migrateLocal({
    memoryBytes: 1 << 20,
    warmupMs: 0,
    destination: "inline",
    fault: "flip",
  });
  assert.equal(source.status, "failed");
  assert.match(source.error!.message, /^EBADMSG: (?!EBADMSG)/);
  const run = toRun(1, { name: "lockless", wp: "lockless" }, false, { ...source, exitCode: 1 });
  assert.equal(run.error, source.error!.message);
  assert.doesNotMatch(run.error, /^(E[A-Z]+): \1: /);
});

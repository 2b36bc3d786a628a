/**
 * dirty-log-perf's library surface without running a VM: option resolution (defaults, presets,
 * checks), the N-design ratios against a baseline on synthetic results, the text report of
 * several ratios, and the harvest slots of a timed iteration on a clock the test drives.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  designRatios,
  IterationResult,
  legacyRatio,
  PerfResult,
  PRESETS,
  resolvePerfOptions,
} from "../../src/bench/dirty_log_perf.js";
import { harvestSlots } from "../../src/bench/dirty_log_perf_iterate.js";
import { formatPerf } from "../../src/bench/dirty_log_perf_format.js";
import { KvmError } from "../../src/errors.js";
import { designNames } from "../../src/mmu/design.js";

const einval = (re: RegExp) => (e: unknown) =>
  e instanceof KvmError && e.code === "EINVAL" && re.test(e.message);

test("resolvePerfOptions: defaults, a preset under the caller's options, typed errors naming the option", () => {
  const d = resolvePerfOptions({ vcpus: 1 });
  assert.deepEqual(d.wp, designNames(), "every registered design by default");
  assert.equal(d.baseline, "locked");
  assert.equal(d.bytesPerVcpu, 512 << 20);
  assert.equal(d.iterations, 10);
  assert.equal(d.manualProtect, true);
  assert.deepEqual(d.contention, { migrateRate: 200, invalidateRate: 100 });
  assert.equal(d.threads?.vcpusFrom, "user");
  assert.equal(d.pin, undefined);
  assert.deepEqual(resolvePerfOptions(d), d, "resolving resolved options changes nothing");

  const s = resolvePerfOptions({ preset: "seed", bytesPerVcpu: 4 << 20, pin: "none" });
  const seed = PRESETS["seed"];
  assert.equal(s.preset, "seed");
  assert.equal(s.lock, "spin");
  assert.equal(s.thp, false);
  assert.equal(s.windowMs, seed.windowMs);
  assert.equal(s.harvestIntervalMs, seed.harvestIntervalMs);
  assert.equal(s.numaScanPeriodMs, seed.numaScanPeriodMs);
  assert.equal(s.manualProtect, false);
  assert.deepEqual(s.contention, seed.contention);
  assert.equal(s.bytesPerVcpu, 4 << 20, "the caller's option wins over the preset");
  assert.equal(s.pin, undefined, '"none" unpins over the preset\'s "auto"');
  assert.equal(resolvePerfOptions({ preset: "seed", vcpus: 1 }).pin, "auto");

  assert.deepEqual(resolvePerfOptions({ vcpus: 1, contention: "heavy" }).contention, {
    migrateRate: 1000,
    invalidateRate: 400,
  });
  assert.deepEqual(resolvePerfOptions({ vcpus: 1, contention: { invalidateRate: 7 } }).contention, {
    migrateRate: 200,
    invalidateRate: 7,
  });
  assert.equal(resolvePerfOptions({ vcpus: 1, ring: 256 }).manualProtect, false, "a ring: no manual protect");
  assert.equal(resolvePerfOptions({ vcpus: 1, wp: ["lockless"] }).baseline, "lockless");

  assert.throws(
    () => resolvePerfOptions({ preset: "nope" }),
    einval(/^EINVAL: preset: "nope" is not one of seed/),
  );
  assert.throws(() => resolvePerfOptions({ contention: "nope" }), einval(/^EINVAL: contention: "nope"/));
  assert.throws(() => resolvePerfOptions({ wp: ["nope"] }), einval(/^EINVAL: wp: "nope" is not one of/));
  assert.throws(() => resolvePerfOptions({ wp: [] }), einval(/^EINVAL: wp: no design/));
  assert.throws(
    () => resolvePerfOptions({ wp: ["lockless"], baseline: "locked" }),
    einval(/^EINVAL: baseline: "locked" is not one of the designs run \(lockless\)/),
  );
  assert.throws(() => resolvePerfOptions({ iterations: 0 }), einval(/^EINVAL: iterations: must be >= 1/));
});

/** Synthetic iterations: get-dirty-log `ns[k]`, guest throughput `tp[k]`, CLEAR `clear[k]`. */
function iters(ns: number[], tp: number[], clear?: number[]): { iterations: IterationResult[] } {
  return {
    iterations: ns.map((g, k) => ({
      warmup: false,
      dirtyMemoryNs: 1e6,
      getDirtyLogNs: g,
      lockWaitNs: 0,
      protectNs: g,
      flushNs: 0,
      dirtyPages: 100,
      guestThroughput: tp[k],
      ...(clear ? { clearDirtyLogNs: clear[k] } : {}),
      cpuNs: 0,
      preemptions: 0,
      vcpuLockWaitNs: 0,
      hostLockWaitNs: 0,
      switches: 0,
      writes: 1000,
    })),
  };
}

test("designRatios: three designs give two ratios against the named baseline, paired by iteration", () => {
  const five = (x: number): number[] => [x, x * 1.01, x * 0.99, x * 1.02, x * 0.98];
  const results = {
    base: iters(five(100), five(10), five(50)),
    slow: iters(five(200), five(5), five(100)),
    fast: iters(five(50), five(10), five(25)),
  };
  const r = designRatios(results, "base", true);
  assert.deepEqual(Object.keys(r), ["slow/base", "fast/base"]);
  assert.ok(Math.abs(r["slow/base"].getDirtyLog.median - 2) < 1e-9);
  assert.equal(r["slow/base"].getDirtyLog.n, 5);
  assert.equal(r["slow/base"].getDirtyLog.verdict, "slow slower");
  assert.equal(r["slow/base"].guestThroughput.verdict, "guest slower under slow");
  assert.equal(r["slow/base"].clearDirtyLog!.verdict, "slow slower");
  assert.ok(Math.abs(r["fast/base"].getDirtyLog.median - 0.5) < 1e-9);
  assert.equal(r["fast/base"].getDirtyLog.verdict, "fast faster");
  assert.equal(r["fast/base"].guestThroughput.verdict, "no difference shown");
  assert.equal(designRatios(results, "base", false)["fast/base"].clearDirtyLog, undefined);
  const other = designRatios(results, "fast", false);
  assert.deepEqual(Object.keys(other), ["base/fast", "slow/fast"]);
  assert.ok(Math.abs(other["slow/fast"].getDirtyLog.median - 4) < 1e-9);
  assert.throws(
    () => designRatios(results, "nope", false),
    einval(/^EINVAL: baseline: "nope" is not one of the designs run/),
  );
  assert.deepEqual(designRatios({ base: results.base }, "base", false), {}, "one design, no ratio");
  assert.equal(legacyRatio(results, false), null, "ratio: lockless/locked only");
  const two = { locked: results.base, lockless: results.fast, third: results.slow };
  assert.deepEqual(legacyRatio(two, false), designRatios(two, "locked", false)["lockless/locked"]);
});

test("the text report prints every ratio against the baseline", () => {
  const file = new URL("../../../test/results/fixtures/dirty-log-perf-v1.json", import.meta.url);
  const r = JSON.parse(readFileSync(file, "utf8")) as PerfResult;
  const q = r.ratio!;
  const text = formatPerf({ ...r, baseline: "locked", ratios: { "lockless/locked": q, "third/locked": q } });
  assert.match(text, /^lockless\/locked \(median, paired bootstrap 95% CI, 2 iterations\):$/m);
  assert.match(text, /^third\/locked \(median, paired bootstrap 95% CI, 2 iterations\):$/m);
  assert.equal(text.match(/^ {2}get dirty log {5}/gm)?.length, 2);
});

test("timed iterations: harvest slots on a clock the test drives", async () => {
  const run = async (cost: number): Promise<{ harvests: number; at: number[]; end: number }> => {
    let now = 1000;
    const at: number[] = [];
    const harvests = await harvestSlots(
      now,
      200,
      50,
      () => {
        at.push(now - 1000);
        now += cost;
      },
      () => now,
      (ms) => {
        now += ms;
        return Promise.resolve();
      },
    );
    return { harvests, at, end: now - 1000 };
  };
  assert.deepEqual(await run(0), { harvests: 4, at: [50, 100, 150, 200], end: 200 });
  assert.deepEqual(await run(10), { harvests: 4, at: [50, 100, 150, 200], end: 210 });
  // A call that overruns later slots skips them instead of harvesting back to back.
  assert.deepEqual(await run(70), { harvests: 2, at: [50, 150], end: 220 });
  const one = await harvestSlots(
    0,
    100,
    100,
    () => {},
    () => 0,
    () => Promise.resolve(),
  );
  assert.equal(one, 1);
});

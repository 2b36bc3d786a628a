/**
 * `kvmmu dirty-log-perf` through the real command line, tiny sizes: the JSON result's shape,
 * warm-ups left out of the statistics, --output, the thread fit and its warning, --preset seed.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import os from "node:os";
import { join } from "node:path";
import { runKvmmu } from "../helpers/cli.js";
import { median } from "../../src/bench/stats.js";
import type { IterationResult, NsStats, PerfResult } from "../../src/bench/dirty_log_perf.js";
import { SCHEMA_VERSION } from "../../src/bench/result.js";

const STAT_KEYS = ["medianNs", "meanNs", "stdevNs", "minNs", "maxNs", "ci95Ns", "n"].sort();

function checkNs(s: NsStats, what: string): void {
  assert.deepEqual(Object.keys(s).sort(), STAT_KEYS, what);
  assert.ok(s.minNs <= s.medianNs && s.medianNs <= s.maxNs, `${what}: min <= median <= max`);
  assert.ok(s.ci95Ns[0] <= s.medianNs && s.medianNs <= s.ci95Ns[1], `${what}: the CI holds the median`);
  assert.ok(s.stdevNs >= 0);
}

test(
  "dirty-log-perf --json --output: the envelope, the statistics, warm-ups left out",
  { timeout: 180_000 },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), "kvmmu-bench-"));
    const file = join(dir, "r.json");
    const before = Date.now();
    const r = await runKvmmu([
      "dirty-log-perf",
      ...["-v", "1", "-b", "4M", "-i", "3", "--warmup", "1", "--contention", "none", "--json"],
      ...["--output", file],
    ]);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as PerfResult;
    assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), j, "--output writes the same object");
    assert.equal(j.schemaVersion, SCHEMA_VERSION);
    assert.equal(j.command, "dirty-log-perf");
    assert.ok(j.gitCommit === null || /^[0-9a-f]{40}$/.test(j.gitCommit));
    assert.equal(j.machine.cpus, os.availableParallelism());
    assert.equal(j.machine.memoryBytes, os.totalmem());
    assert.equal(j.machine.node, process.version);
    assert.equal(typeof j.machine.platform, "string");
    // Taken during the run (ISO timestamps may drop the milliseconds), however long it took.
    const ts = Date.parse(j.timestamp);
    assert.ok(ts >= before - 1000 && ts <= Date.now(), `timestamp ${j.timestamp}`);
    assert.equal(j.options.iterations, 3);
    assert.equal(j.options.warmup, 1);
    assert.equal(j.options.threads?.vcpusFrom, "user");
    for (const wp of ["locked", "lockless"] as const) {
      const s = j.results[wp]!;
      assert.equal(s.iterations.length, 4);
      assert.deepEqual(
        s.iterations.map((i) => i.warmup),
        [true, false, false, false],
      );
      for (const k of ["getDirtyLog", "lockWait", "protect", "flush", "dirtyMemory"] as const)
        checkNs(s[k], `${wp}.${k}`);
      const measured = s.iterations.filter((i) => !i.warmup);
      const g = (i: IterationResult): number => i.getDirtyLogNs;
      assert.equal(s.getDirtyLog.n, 3, "warm-up not counted");
      assert.equal(s.getDirtyLog.medianNs, median(measured.map(g)));
      assert.equal(s.getDirtyLog.maxNs, Math.max(...measured.map(g)));
      for (const it of s.iterations)
        assert.ok(
          Math.abs(it.lockWaitNs + it.protectNs + it.flushNs - (it.clearDirtyLogNs ?? it.getDirtyLogNs)) <
            1e3 || it.protectNs === 0,
          "the parts add up to the protecting call (GET, or CLEAR under manual protect)",
        );
      if (wp === "lockless") assert.equal(s.lockWait.maxNs, 0, "the lockless harvester never takes mmu_lock");
      assert.ok(s.nsPerDirtyPage > 0);
      assert.equal(
        s.nsPerDirtyPage,
        median(measured.map((i) => i.getDirtyLogNs + (i.clearDirtyLogNs ?? 0))) /
          median(measured.map((i) => i.dirtyPages)),
        "GET and CLEAR per dirty page",
      );
      assert.equal(s.guestThroughput.n, 3);
      assert.ok(s.guestThroughput.median > 0);
    }
    for (const k of ["getDirtyLog", "guestThroughput"] as const) {
      const q = j.ratio![k];
      assert.ok(q.ci95[0] <= q.median && q.median <= q.ci95[1], k);
      assert.match(q.verdict, /faster|slower|no difference shown/);
    }
    const rl = j.results.locked!;
    const rf = j.results.lockless!;
    assert.equal(j.ratio!.getDirtyLog.median, rf.getDirtyLog.medianNs / rl.getDirtyLog.medianNs);
  },
);

test(
  "dirty-log-perf: default vCPUs fit the cores; -v beyond them warns on stderr",
  { timeout: 180_000 },
  async () => {
    const cpus = os.availableParallelism();
    const auto = await runKvmmu([
      "dirty-log-perf",
      "-b",
      "2M",
      "-i",
      "1",
      "--warmup",
      "0",
      "--wp",
      "lockless",
      "--json",
    ]);
    assert.equal(auto.code, 0, auto.err);
    const a = JSON.parse(auto.out) as PerfResult;
    // default contention runs the host thread: vCPUs + harvester + host thread
    assert.equal(a.options.vcpus, Math.max(1, cpus - 2));
    assert.equal(a.options.threads?.vcpusFrom, "auto");
    assert.doesNotMatch(auto.err, /oversubscribed/);
    const v = Math.min(64, cpus + 1);
    const over = await runKvmmu([
      "dirty-log-perf",
      ...[
        "-v",
        String(v),
        "-b",
        "2M",
        "-i",
        "1",
        "--warmup",
        "0",
        "--wp",
        "lockless",
        "--contention",
        "none",
        "--json",
      ],
    ]);
    assert.equal(over.code, 0, over.err);
    assert.match(over.err, /warning: .* oversubscribed/);
    const o = JSON.parse(over.out) as PerfResult;
    assert.equal(o.options.threads?.oversubscribed, true);
    assert.equal(o.options.vcpus, v);
  },
);

test(
  "dirty-log-perf --preset seed: accepted, its options applied, an option given wins",
  { timeout: 180_000 },
  async () => {
    const r = await runKvmmu([
      "dirty-log-perf",
      "--preset",
      "seed",
      "-b",
      "4M",
      "-i",
      "2",
      "--warmup",
      "1",
      "--json",
    ]);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as PerfResult;
    assert.equal(j.options.preset, "seed");
    assert.equal(j.options.lock, "spin");
    assert.equal(j.options.thp, false);
    assert.equal(j.options.bytesPerVcpu, 4 << 20, "-b given wins over the preset");
    assert.equal(j.results.locked!.getDirtyLog.n, 2);
    // NUMA balancing run by the vCPU, no host thread: vCPU + harvester fit 2 cores.
    assert.equal(j.options.numaScanPeriodMs, 100);
    assert.equal(j.options.contention.invalidateRate, 0);
    assert.equal(j.options.threads?.hostThread, 0);
    for (const wp of ["locked", "lockless"] as const) {
      const numa = j.results[wp]!.numa!;
      assert.ok(numa.scans >= 1, `${wp}: ${numa.scans} NUMA scans`);
      // A 4 MiB guest: each scan unmaps all of it (256 MiB asked, the VMA ends first).
      assert.equal(numa.pagesScanned, numa.scans * 1024, `${wp}: pages per scan`);
    }
    // Pinned where taskset works, or a recorded reason; never a failed run.
    assert.ok(j.pinned !== null, "auto pinning was tried");
    if ("vcpus" in j.pinned) {
      assert.equal(j.pinned.harvester, 0);
      assert.equal(j.pinned.vcpus.length, 1);
    } else assert.match(j.pinned.error, /affinity/);
    // Timed iterations: 200 ms windows with a get-dirty-log every 2 ms.
    assert.equal(j.options.windowMs, 200);
    assert.equal(j.options.harvestIntervalMs, 2);
    for (const wp of ["locked", "lockless"] as const)
      for (const it of j.results[wp]!.iterations) {
        assert.ok(it.harvests! >= 1 && it.harvests! <= 100, `${wp}: ${it.harvests} calls`);
      }
    const given = await runKvmmu([
      ...["dirty-log-perf", "--preset", "seed", "-b", "4M", "-i", "1", "--warmup", "0"],
      ...["--window", "100", "--harvest-every", "100", "--wp", "lockless", "--json"],
    ]);
    assert.equal(given.code, 0, given.err);
    const g = JSON.parse(given.out) as PerfResult;
    assert.equal(g.options.windowMs, 100, "--window wins over the preset");
    assert.equal(g.options.harvestIntervalMs, 100);
    assert.equal(g.results.lockless!.iterations[0].harvests, 1);
    const bad = await runKvmmu(["dirty-log-perf", "--pin", "0,99999", "-i", "1"]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /EINVAL: --pin/);
  },
);

test("dirty-log-perf: a bad --preset or --output directory fails at once with a typed error", async () => {
  const p = await runKvmmu(["dirty-log-perf", "--preset", "nope"]);
  assert.equal(p.code, 2);
  assert.match(p.err, /EINVAL: --preset: "nope"/);
  const missing = join(tmpdir(), "kvmmu-no-such-dir", "r.json");
  const o = await runKvmmu(["dirty-log-perf", "--output", missing]);
  assert.equal(o.code, 2);
  assert.match(o.err, /ENOENT: --output/);
  assert.equal(existsSync(missing), false);
});

test(
  "dirty-log-perf log interfaces: manual protect (default) reports CLEAR, -g the classic GET, --ring the dirty ring",
  { timeout: 240_000 },
  async () => {
    // 4 MiB (1024 pages) is enough for each claim: every page dirty each pass, CLEAR timed, and a
    // 256-entry ring filling four times a pass.
    const base = ["dirty-log-perf", "-v", "1", "-b", "4M", "-i", "2", "--contention", "none", "--json"];
    const manual = JSON.parse((await runKvmmu([...base, "--clear-chunk", "1024"])).out) as PerfResult;
    for (const wp of ["locked", "lockless"] as const) {
      const s = manual.results[wp]!;
      assert.equal(s.logMode, "clear-log");
      checkNs(s.clearDirtyLog!, `${wp} clearDirtyLog`);
      // Every page of the slot is dirty each iteration: GET copies them all, CLEAR protects them.
      for (const it of s.iterations) {
        assert.equal(it.dirtyPages, 1024);
        assert.ok((it.clearDirtyLogNs ?? -1) > 0);
      }
    }
    assert.ok(manual.ratio?.clearDirtyLog, "a lockless/locked ratio of the CLEAR calls");

    const classic = JSON.parse((await runKvmmu([...base, "-g"])).out) as PerfResult;
    assert.equal(classic.results.locked!.logMode, "dirty-log");
    assert.equal(classic.results.locked!.clearDirtyLog, undefined);
    assert.equal(classic.ratio?.clearDirtyLog, undefined);

    // 256 entries for 1024 pages: the vCPU exits ring-full several times per pass and is collected.
    const ring = JSON.parse((await runKvmmu([...base, "--ring", "256"])).out) as PerfResult;
    for (const wp of ["locked", "lockless"] as const) {
      const s = ring.results[wp]!;
      assert.equal(s.logMode, "dirty-ring");
      assert.ok(s.ring!.fullExits > 0, `${wp}: ring-full exits`);
      for (const it of s.iterations.filter((x) => !x.warmup)) assert.equal(it.dirtyPages, 1024, wp);
    }

    const bad = await runKvmmu(["dirty-log-perf", "-b", "16M", "--clear-chunk", "100"]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /clearChunkPages|clear-chunk/);
  },
);

test(
  "dirty-log-perf --wp locked,lockless --baseline lockless: ratios against the named baseline, ratio kept",
  { timeout: 120_000 },
  async () => {
    const base = [
      "dirty-log-perf",
      "-v",
      "1",
      "-b",
      "2M",
      "-i",
      "3",
      "--warmup",
      "0",
      "--contention",
      "none",
    ];
    const r = await runKvmmu([...base, "--wp", "locked,lockless", "--baseline", "lockless", "--json"]);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as PerfResult;
    assert.equal(j.baseline, "lockless");
    assert.equal(j.options.baseline, "lockless");
    assert.deepEqual(Object.keys(j.ratios), ["locked/lockless"], "N designs, N - 1 ratios");
    const q = j.ratios["locked/lockless"];
    for (const k of ["getDirtyLog", "guestThroughput", "clearDirtyLog"] as const) {
      assert.equal(q[k]!.n, 3, `${k}: paired over the 3 iterations`);
      assert.ok(q[k]!.ci95[0] <= q[k]!.median && q[k]!.median <= q[k]!.ci95[1]);
      assert.match(
        q[k]!.verdict,
        /locked (faster|slower)|guest (faster|slower) under locked|no difference shown/,
      );
    }
    // The version-1 `ratio` stays lockless/locked whatever the baseline.
    assert.ok(j.ratio);
    assert.ok(Math.abs(j.ratio.getDirtyLog.median * q.getDirtyLog.median - 1) < 1e-9, "the inverse ratio");
    assert.match(j.ratio.getDirtyLog.verdict, /lockless|no difference/);
    const text = await runKvmmu([...base, "--wp", "all", "--baseline", "lockless"]);
    assert.equal(text.code, 0, text.err);
    assert.match(text.out, /^locked\/lockless \(median, paired bootstrap 95% CI, 3 iterations\):$/m);
    const one = await runKvmmu([...base, "--wp", "lockless", "--json"]);
    assert.equal(one.code, 0, one.err);
    const o = JSON.parse(one.out) as PerfResult;
    assert.equal(o.baseline, "lockless", "the default baseline when it does not run: the first design");
    assert.deepEqual(o.ratios, {});
    assert.equal(o.ratio, null);
    for (const [args, re] of [
      [
        ["--wp", "lockless", "--baseline", "locked"],
        /EINVAL: --baseline: "locked" is not one of the designs run/,
      ],
      [["--baseline", "nope"], /EINVAL: --baseline: "nope" is not one of/],
      [["--wp", "locked,nope"], /EINVAL: --wp: "nope" is not one of locked, lockless/],
    ] as const) {
      const bad = await runKvmmu([...base, ...args]);
      assert.equal(bad.code, 2, bad.err);
      assert.match(bad.err, re);
    }
  },
);

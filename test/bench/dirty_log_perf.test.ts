/** dirty-log-perf in both MMU modes, tiny: the shape of the result, not the numbers. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CONTENTION, dirtyLogPerf, PerfOptions } from "../../src/bench/dirty_log_perf.js";
import { formatPerf } from "../../src/bench/dirty_log_perf_format.js";

const O: PerfOptions = {
  vcpus: 2,
  bytesPerVcpu: 4 << 20,
  iterations: 2,
  writePercent: 100,
  random: false,
  wp: ["locked", "lockless"],
  thp: true,
  contention: CONTENTION["none"],
  park: false,
  seed: 1,
};

for (const mode of ["tdp", "shadow"] as const)
  for (const guestHuge of mode === "shadow" ? [false, true] : [false])
    test(
      `dirty-log-perf --mode ${mode}${guestHuge ? " --guest-huge" : ""}`,
      { timeout: 120_000 },
      async () => {
        const r = await dirtyLogPerf({ ...O, mode, guestHuge });
        for (const wp of ["locked", "lockless"] as const) {
          const s = r.results[wp]!;
          assert.equal(s.iterations.length, 3, "1 warm-up (the default) + 2 iterations");
          assert.equal(s.getDirtyLog.n, 2);
          assert.ok(
            s.iterations.every((it) => it.dirtyPages > 0),
            "every iteration dirtied pages",
          );
          assert.ok(s.guestWritesPerSec > 0);
          if (mode === "shadow") {
            assert.ok(s.shadow && s.shadow["indirectShadowPages"] > 0, "guest tables are shadowed");
            assert.equal(s.faults!.fast, 0, "no fast page fault with guest paging (3.11)");
          } else {
            assert.equal(s.shadow, undefined);
          }
        }
        assert.match(formatPerf(r), mode === "shadow" ? /shadow paging/ : /TDP/);
      },
    );

test(
  "dirty-log-perf timed iterations: a fixed window, a harvest every interval, throughput over the window",
  { timeout: 120_000 },
  async () => {
    const r = await dirtyLogPerf({
      ...O,
      vcpus: 1,
      iterations: 3,
      warmup: 1,
      windowMs: 200,
      harvestIntervalMs: 50,
      contention: { migrateRate: 100, invalidateRate: 20 },
    });
    for (const wp of ["locked", "lockless"] as const) {
      const s = r.results[wp]!;
      assert.equal(s.iterations.length, 4);
      for (const it of s.iterations) {
        // Harvests at 50, 100, 150, 200 ms; a late timer or a long call skips a slot, never adds one.
        assert.ok(it.harvests! >= 1 && it.harvests! <= 4, `${wp}: ${it.harvests} harvests`);
        assert.ok(it.writes > 0, `${wp}: the guest wrote`);
        assert.ok(
          Math.abs(it.guestThroughput - it.writes / (it.dirtyMemoryNs / 1e9)) <= 1e-6 * it.guestThroughput,
          "throughput = writes of the window / its length",
        );
        assert.ok(it.dirtyPages > 0 && it.dirtyPages <= 1024, "mean dirty pages per call, within the slot");
        assert.ok(it.vcpuLockWaitNs >= 0 && it.hostLockWaitNs >= 0 && it.switches >= 0);
      }
      assert.equal(s.vcpuLockWait.n, 3);
      assert.equal(s.hostLockWait.n, 3);
      assert.ok(s.host!.invalidations > 0, "the host thread ran in the windows");
    }
    assert.equal(r.results.lockless!.lockWait.maxNs, 0, "the lockless harvester never waits for mmu_lock");
    assert.ok(r.ratio && r.ratio.guestThroughput.n === 3);
    assert.match(formatPerf(r), /timed iterations of 200 ms, get-dirty-log every 50 ms/);
  },
);

test("dirty-log-perf timed iterations: bad combinations are refused with EINVAL", async () => {
  const bad: [Partial<PerfOptions>, RegExp][] = [
    [{ harvestIntervalMs: 10 }, /harvestIntervalMs: needs a timed iteration/],
    [{ windowMs: 100, harvestIntervalMs: 200 }, /harvestIntervalMs: must be 1\.\.windowMs/],
    [{ windowMs: -1 }, /windowMs: must be 0\.\.600000/],
    [
      { windowMs: 100, ring: 256, manualProtect: false },
      /windowMs: timed iterations do not go with a dirty ring/,
    ],
    [{ windowMs: 100, park: true }, /windowMs: .*no --park/],
  ];
  for (const [o, msg] of bad)
    await assert.rejects(dirtyLogPerf({ ...O, ...o }), (e: Error & { code?: string }) => {
      assert.equal(e.code, "EINVAL");
      assert.match(e.message, msg);
      return true;
    });
});

test(
  "dirtyLogPerf({ preset: \"seed\" }) from the library: the preset's options, the caller's win",
  { timeout: 120_000 },
  async () => {
    const r = await dirtyLogPerf({
      preset: "seed",
      vcpus: 1,
      bytesPerVcpu: 4 << 20,
      iterations: 1,
      warmup: 0,
      wp: ["lockless"],
      pin: "none",
    });
    assert.equal(r.options.preset, "seed");
    assert.equal(r.options.lock, "spin");
    assert.equal(r.options.windowMs, 200);
    assert.equal(r.options.harvestIntervalMs, 2);
    assert.equal(r.options.manualProtect, false);
    assert.equal(r.options.pin, undefined);
    assert.equal(r.pinned, null);
    assert.equal(r.baseline, "lockless");
    const it = r.results.lockless!.iterations;
    assert.equal(it.length, 1);
    assert.ok(it[0].harvests! >= 1 && it[0].harvests! <= 100, `${it[0].harvests} calls in the window`);
  },
);

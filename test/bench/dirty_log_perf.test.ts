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
            assert.equal(s.faults.fast, 0, "no fast page fault with guest paging (3.11)");
          } else {
            assert.equal(s.shadow, undefined);
          }
        }
        assert.match(formatPerf(r), mode === "shadow" ? /shadow paging/ : /TDP/);
      },
    );

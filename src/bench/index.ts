/**
 * `npm run bench`: the micro-benchmarks, then a short dirty-log-perf comparison.
 *   node dist/src/bench/index.js [--json] [--output FILE] [--quick]
 * --quick: a few rounds and iterations on a small guest (tests; the figures mean little).
 * Without --quick, a short migrate-perf (3 alternated pairs of whole migrations, ~40 s) follows.
 */
import os from "node:os";
import { formatTlbHit, tlbHitBench, TLB_HIT_DEFAULTS } from "./tlb_hit.js";
import { dirtyLogPerf, CONTENTION, fitVcpus, threadFit } from "./dirty_log_perf.js";
import { designNames } from "../mmu/design.js";
import { formatPerf } from "./dirty_log_perf_format.js";
import { checkOutput, envelope, writeResult } from "./result.js";
import { formatMigratePerf, migratePerf, MIGRATE_PERF_DEFAULTS } from "./migrate_perf.js";

const json = process.argv.includes("--json");
const oi = process.argv.indexOf("--output");
const output = oi >= 0 ? process.argv[oi + 1] : undefined;
if (output !== undefined) checkOutput(output);
const quick = process.argv.includes("--quick");
const tlbOptions = quick ? { rounds: 3, warmup: 1, accesses: 16384, timeMs: 20 } : TLB_HIT_DEFAULTS;
const tlb = tlbHitBench(tlbOptions);
const contention = CONTENTION["default"];
const cpus = os.availableParallelism();
const vcpus = Math.min(2, fitVcpus(cpus, contention));
const perf = await dirtyLogPerf({
  vcpus,
  bytesPerVcpu: quick ? 4 << 20 : 512 << 20,
  iterations: quick ? 3 : 10,
  warmup: 1,
  writePercent: 100,
  random: false,
  wp: designNames(),
  thp: true,
  contention,
  park: false,
  seed: 1,
  threads: threadFit(cpus, vcpus, contention, "auto"),
});
// Whole migrations are seconds each: only outside --quick.
const mig = quick ? null : await migratePerf({ ...MIGRATE_PERF_DEFAULTS, runs: 3, warmup: 0 });
const result = {
  ...envelope("bench", { tlbHit: tlbOptions, dirtyLogPerf: perf.options, quick }),
  results: {
    tlbHit: tlb,
    dirtyLogPerf: perf,
    ...(mig
      ? { migratePerf: { options: mig.options, results: mig.results, ratio: mig.ratio, pairs: mig.pairs } }
      : {}),
  },
};
if (output !== undefined) writeResult(output, result);
if (json) {
  process.stdout.write(JSON.stringify(result) + "\n");
} else {
  process.stdout.write(formatTlbHit(tlb) + "\n\n");
  process.stdout.write(formatPerf(perf) + "\n");
  if (mig) process.stdout.write("\n" + formatMigratePerf(mig) + "\n");
}

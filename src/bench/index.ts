/** `npm run bench`: the micro-benchmarks, then a short dirty-log-perf comparison. */
import { tlbHitBench } from "./tlb_hit.js";
import { dirtyLogPerf, CONTENTION } from "./dirty_log_perf.js";
import { formatPerf } from "../cli/dirty_log_perf_cmd.js";

const json = process.argv.includes("--json");
const tlb = tlbHitBench();
const perf = await dirtyLogPerf({
  vcpus: 2,
  bytesPerVcpu: 512 << 20,
  iterations: 10,
  writePercent: 100,
  random: false,
  wp: ["locked", "lockless"],
  thp: true,
  contention: CONTENTION["default"],
  park: false,
  seed: 1,
});
if (json) {
  process.stdout.write(JSON.stringify({ tlbHit: tlb, dirtyLogPerf: perf }) + "\n");
} else {
  process.stdout.write(
    `software TLB hit: ${tlb.tlbNsPerAccess.toFixed(2)} ns/access, plain typed-array access ${tlb.plainNsPerAccess.toFixed(2)} ns/access, ratio ${tlb.ratio.toFixed(2)}x (goal <= 2x)\n\n`,
  );
  process.stdout.write(formatPerf(perf) + "\n");
}

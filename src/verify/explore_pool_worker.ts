/** A worker of the exploration pool (src/verify/explore_pool.ts): runs jobs until none is left. */
import { parentPort, workerData } from "node:worker_threads";
import { explore } from "./explore.js";
import { PoolJob } from "./explore_pool.js";

const d = workerData as { jobs: PoolJob[]; next: SharedArrayBuffer };
const next = new Int32Array(d.next);
for (let i = Atomics.add(next, 0, 1); i < d.jobs.length; i = Atomics.add(next, 0, 1)) {
  const r = await explore(d.jobs[i]);
  parentPort!.postMessage({ i, r });
}

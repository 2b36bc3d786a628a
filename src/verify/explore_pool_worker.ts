/** A worker of the exploration pool (src/verify/explore_pool.ts): runs jobs, in the pool's order, until none is left. */
import { parentPort, workerData } from "node:worker_threads";
import { explore } from "./explore.js";
import { PoolJob } from "./explore_pool.js";

const d = workerData as { jobs: PoolJob[]; order: number[]; next: SharedArrayBuffer };
const next = new Int32Array(d.next);
for (let k = Atomics.add(next, 0, 1); k < d.order.length; k = Atomics.add(next, 0, 1)) {
  const i = d.order[k];
  const r = await explore(d.jobs[i]);
  parentPort!.postMessage({ i, r });
}

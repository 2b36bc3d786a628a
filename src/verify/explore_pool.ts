/**
 * Explorations in parallel: each pool worker is a thread with its own explorer (controller and
 * crew), taking the next job from a shared counter until none is left. One exploration keeps
 * about one core busy (its controller and one stepped thread take turns), so the pool has one
 * worker per core. The full-budget runs (`npm run test:explore`) use it.
 */
import { Worker } from "node:worker_threads";
import { availableParallelism } from "node:os";
import { MmuModeName } from "../vm.js";
import { designNames } from "../mmu/design.js";
import { scenarioApplies } from "./explore_design.js";
import { ExploreOptions, ExploreResult } from "./explore.js";
import { SCENARIOS } from "./scenarios.js";
import { workerFlags } from "../sync/worker_flags.js";

/** One exploration of a pool: the options explore() takes, minus what cannot be posted (objects, functions). */
export type PoolJob = Omit<ExploreOptions, "signal" | "scenarioObject" | "onRecording">;

/**
 * Every scenario's code as it should be, on both MMUs and every registered design, under pct
 * and random: `schedules` schedules each, all of them (a violation does not stop a job).
 */
export function fullBudgetJobs(schedules = 2000, seed = 1): PoolJob[] {
  const jobs: PoolJob[] = [];
  for (const scenario of Object.keys(SCENARIOS))
    for (const mode of ["tdp", "shadow"] as MmuModeName[])
      for (const design of designNames().filter((d) => scenarioApplies(scenario, d, mode)))
        for (const strategy of ["pct", "random"] as const)
          jobs.push({ scenario, mode, design, strategy, schedules, seed, bug: false, all: false });
  return jobs;
}

/**
 * Runs `jobs` on `parallel` worker threads (default: one per core); results in job order. The
 * workers take the jobs in `order` (indices into jobs; default: as given).
 */
export async function explorePool(
  jobs: PoolJob[],
  parallel = availableParallelism(),
  order: number[] = jobs.map((_, i) => i),
): Promise<ExploreResult[]> {
  if (order.length !== jobs.length || new Set(order).size !== jobs.length || order.some((i) => !(i in jobs)))
    throw new Error("explorePool: order must name every job once");
  const next = new Int32Array(new SharedArrayBuffer(4));
  const out: ExploreResult[] = new Array<ExploreResult>(jobs.length);
  const n = Math.max(1, Math.min(parallel, jobs.length));
  const runs = Array.from(
    { length: n },
    () =>
      new Promise<void>((resolve, reject) => {
        const w = new Worker(new URL("./explore_pool_worker.js", import.meta.url), {
          ...workerFlags(),
          workerData: { jobs, order, next: next.buffer },
        });
        w.on("message", (m: { i: number; r: ExploreResult }) => (out[m.i] = m.r));
        w.on("error", reject);
        w.on("exit", (code) =>
          code === 0 ? resolve() : reject(new Error(`explore pool worker exited with ${code}`)),
        );
      }),
  );
  await Promise.all(runs);
  return out;
}

/**
 * The order that takes the longest jobs first, so that the pool's last jobs are short and no
 * worker idles long at the end. A job's cost is estimated from a probe, its first `probe`
 * schedules run on the pool: per schedule, its runs of steps (each a hand-off between threads,
 * the bulk of a schedule's time) and its steps (a hundred cost about one hand-off). Counts, not
 * times: the order is the same on every machine. Jobs differ a hundredfold.
 */
export async function longestFirst(
  jobs: PoolJob[],
  parallel = availableParallelism(),
  probe = 6,
): Promise<number[]> {
  const rs = await explorePool(
    jobs.map((j) => ({ ...j, schedules: Math.min(probe, j.schedules) })),
    parallel,
  );
  const cost = rs.map((r) => (r.runs + r.steps / 100) / Math.max(1, r.schedules));
  return jobs.map((_, i) => i).sort((a, b) => cost[b] - cost[a] || a - b);
}

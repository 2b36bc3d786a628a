/**
 * dirty-log-perf's pinning (PerfOptions.pin), as KVM's dirty_log_perf_test -c: each vCPU thread
 * on its CPU, the harvester (the main thread) and the process's other threads on another.
 */
import os from "node:os";
import { gettid, processThreads, sched_getaffinity, sched_setaffinity } from "../sync/affinity.js";
import type { PerfOptions } from "./dirty_log_perf_options.js";
import type { PerfResult } from "./dirty_log_perf_result.js";
import type { Run } from "./dirty_log_perf_setup.js";

/**
 * The CPUs "auto" pinning gives, from the CPUs this process may use (`allowed`, in order):
 * vCPU i on allowed[1 + i] (round robin past the last), then the harvester on allowed[0].
 */
export function autoPin(allowed: readonly number[], vcpus: number): number[] {
  const n = allowed.length;
  const vcpuCpu = (i: number): number => (n === 1 ? allowed[0] : allowed[1 + (i % (n - 1))]);
  return [...Array.from({ length: vcpus }, (_, i) => vcpuCpu(i)), allowed[0]];
}

/** What pinThreads did, and how to give every thread it moved its CPUs of before back. */
export interface Pinning {
  pinned: PerfResult["pinned"];
  undo: () => void;
}

/**
 * Pins the vCPU threads of every VM and the harvester (PerfOptions.pin) once all threads exist,
 * so that no later thread inherits the harvester's mask. With the harvester pinned, the
 * process's other threads (V8's compiler and GC helpers, libuv's pool, a host thread) go with
 * it, so that a vCPU's CPU runs that vCPU only.
 */
export function pinThreads(runs: Run[], o: PerfOptions, say: (m: string) => void): Pinning {
  const none: Pinning = { pinned: null, undo: () => {} };
  if (o.pin === undefined) return none;
  const self = gettid();
  // The harvester's CPUs before the run: what every thread moved to its CPU gets back.
  const before = sched_getaffinity();
  const list =
    o.pin === "auto"
      ? autoPin(before ?? Array.from({ length: os.availableParallelism() }, (_, i) => i), o.vcpus)
      : o.pin;
  const moved: number[] = [];
  const undo = (): void => {
    const mask = before ?? Array.from({ length: os.cpus().length }, (_, i) => i);
    for (const tid of moved)
      try {
        sched_setaffinity(tid, mask);
      } catch {
        // The thread has exited (a VM's worker); the harvester keeps its mask if this fails.
      }
  };
  try {
    for (const run of runs) for (let i = 0; i < o.vcpus; i++) run.vm.pinVcpu(i, list[i]);
    const harvester = list.length > o.vcpus ? list[o.vcpus] : null;
    if (harvester !== null) {
      sched_setaffinity(self, harvester);
      moved.push(self);
      const vcpuTids = new Set(runs.flatMap((run) => run.vm.vcpuIds.map((id) => run.vm.vcpuTid(id))));
      for (const tid of processThreads()) {
        if (tid === self || vcpuTids.has(tid)) continue;
        try {
          sched_setaffinity(tid, harvester);
          moved.push(tid);
        } catch {
          // The thread has exited meanwhile.
        }
      }
    }
    const others = Math.max(0, moved.length - 1);
    say(
      `pinned: vCPUs on CPUs ${list.slice(0, o.vcpus).join(",")}, harvester and ${others} other threads on ${harvester ?? "any"}`,
    );
    return { pinned: { vcpus: list.slice(0, o.vcpus), harvester, others }, undo };
  } catch (e) {
    undo();
    if (o.pin !== "auto") throw e;
    const error = (e as Error).message;
    process.stderr.write(`kvmmu: warning: running unpinned: ${error}\n`);
    return { pinned: { error }, undo: () => {} };
  }
}

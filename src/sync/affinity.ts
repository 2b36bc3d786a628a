/**
 * Thread affinity, as KVM's dirty_log_perf_test pins its vCPU threads and main thread (`-c`).
 * Node has no sched_setaffinity: a thread learns its kernel thread id from /proc/thread-self,
 * and util-linux's taskset sets the mask of that id (which moves only that thread). Linux only;
 * elsewhere, or without taskset, pinning fails with a typed error and the caller runs unpinned.
 */
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { KvmError } from "../errors.js";

/** gettid() of the calling thread, or 0 where /proc/thread-self does not exist. */
export function gettid(): number {
  try {
    // "<pid>/task/<tid>"
    const m = /\/task\/(\d+)$/.exec(readlinkSync("/proc/thread-self"));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** The kernel thread ids of this process's threads (V8's helpers included), or [] off Linux. */
export function processThreads(): number[] {
  try {
    return readdirSync("/proc/self/task").map(Number);
  } catch {
    return [];
  }
}

/**
 * sched_getaffinity of the calling thread, as the CPU numbers it may run on (from
 * /proc/thread-self/status), or null where that file does not exist.
 */
export function sched_getaffinity(): number[] | null {
  try {
    const m = /^Cpus_allowed_list:\s*(\S+)$/m.exec(readFileSync("/proc/thread-self/status", "utf8"));
    if (!m) return null;
    const cpus: number[] = [];
    for (const part of m[1].split(",")) {
      const [a, b] = part.split("-").map(Number);
      for (let c = a; c <= (b ?? a); c++) cpus.push(c);
    }
    return cpus;
  } catch {
    return null;
  }
}

/**
 * sched_setaffinity(tid, cpus): one CPU or a list. Throws ENOSYS (no way to pin here) or EINVAL
 * (the kernel refused: no such thread or CPU).
 */
export function sched_setaffinity(tid: number, cpus: number | readonly number[]): void {
  const list = typeof cpus === "number" ? String(cpus) : cpus.join(",");
  if (!Number.isInteger(tid) || tid <= 0)
    throw new KvmError("ENOSYS", "affinity: thread id unknown (not Linux?)");
  try {
    execFileSync("taskset", ["-p", "-c", list, String(tid)], { stdio: ["ignore", "ignore", "pipe"] });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: Buffer };
    if (err.code === "ENOENT")
      throw new KvmError("ENOSYS", "affinity: taskset (util-linux) is not installed");
    const why = err.stderr?.toString().trim().split("\n")[0] ?? err.message;
    throw new KvmError("EINVAL", `affinity: cpus ${list} for thread ${tid}: ${why}`);
  }
}

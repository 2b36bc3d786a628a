/**
 * The kernel in dirty-log-perf. Everywhere: what the kernel run does not do is refused with
 * EINVAL naming the option, before any VM is built. Where /dev/kvm opens (skipped elsewhere,
 * saying why): `--wp locked,kernel` alternates the two, and the kernel's result has the models'
 * per-call fields, its KVM flavour and counters, and a ratio against it with a CI.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvmError } from "../../src/errors.js";
import { resolvePerfOptions } from "../../src/bench/dirty_log_perf.js";
import type { PerfOptions } from "../../src/bench/dirty_log_perf.js";
import {
  checkKernelOptions,
  iterateKernel,
  KernelRun,
  kernelStrategyResult,
} from "../../src/bench/dirty_log_perf_kernel.js";
import { iterationStats } from "../../src/bench/dirty_log_perf_stats.js";
import type { IterationResult } from "../../src/bench/dirty_log_perf_result.js";
import type { KernelPerfSession } from "../../src/kernel/dirty_log_perf.js";
import { kvmDeviceProblem } from "../../src/kernel/kvm_dev.js";
import { runKvmmu } from "../helpers/cli.js";

const base = (): PerfOptions => ({
  ...resolvePerfOptions({ vcpus: 1, bytesPerVcpu: 2 << 20, iterations: 1, park: true, contention: "none" }),
  wp: ["locked", "kernel"],
});

test("dirty-log-perf --wp ...,kernel: unsupported options are EINVAL naming them; the parked GET form passes", () => {
  assert.doesNotThrow(() => checkKernelOptions(base()));
  assert.doesNotThrow(
    () => checkKernelOptions({ ...base(), park: false, wp: ["locked"] }),
    "no kernel, no check",
  );
  const refused: [Partial<PerfOptions>, string][] = [
    [{ park: false }, "park"],
    [{ contention: { migrateRate: 200, invalidateRate: 0 } }, "contention"],
    [{ mode: "shadow" }, "mode"],
    [{ windowMs: 100 }, "windowMs"],
    [{ writePercent: 50 }, "writePercent"],
    [{ random: true }, "writePercent"],
  ];
  for (const [change, opt] of refused)
    assert.throws(
      () => checkKernelOptions({ ...base(), ...change }),
      (e: unknown) =>
        e instanceof KvmError && e.code === "EINVAL" && e.message.startsWith(`EINVAL: ${opt}: --wp kernel: `),
      opt,
    );
});

const noKvm = kvmDeviceProblem();
const skip = noKvm ? `the kernel side cannot run here: ${noKvm.message}` : false;
if (skip) console.log(`# skipped: ${skip}`);

test(
  "dirty-log-perf --wp locked,kernel -g --park: alternated, per-call fields, ratio with CI",
  { skip, timeout: 300_000 },
  async () => {
    const r = await runKvmmu([
      "dirty-log-perf",
      "--wp",
      "locked,kernel",
      "--baseline",
      "kernel",
      "-g",
      "-v",
      "1",
      "-b",
      "64M",
      "-i",
      "4",
      "--park",
      "--contention",
      "none",
      "--json",
      "-q",
    ]);
    assert.equal(r.code, 0, r.err);
    const j = JSON.parse(r.out) as {
      results: Record<
        string,
        {
          nsPerDirtyPage: number;
          iterations: { dirtyPages: number; warmup: boolean }[];
          kernel?: { flavour: string };
        }
      >;
      ratios: Record<string, { getDirtyLog: { median: number; ci95: [number, number] } }>;
    };
    const k = j.results["kernel"];
    assert.ok(k.kernel && ["pvm", "vmx", "svm", "unknown"].includes(k.kernel.flavour));
    for (const it of k.iterations.filter((i) => !i.warmup)) assert.equal(it.dirtyPages, (64 << 20) / 4096);
    assert.ok(k.nsPerDirtyPage > 0);
    const q = j.ratios["locked/kernel"].getDirtyLog;
    assert.ok(q.ci95[0] <= q.median && q.median <= q.ci95[1]);
  },
);

/** A stand-in for KernelPerfSession: fixed harvests, so the kernel's bookkeeping runs without /dev/kvm. */
function fakeSession(log: "get" | "clear" | "ring"): KernelPerfSession {
  let pass = 0;
  const fake = {
    populateNs: 7_000,
    enableNs: 3_000,
    ringFullExits: () => 2 * pass,
    dirtyMemory: () => Promise.resolve(1_000_000 * ++pass),
    harvest: () => ({
      getNs: 1000 * pass,
      clearNs: log === "clear" ? 500 * pass : 0,
      ringHarvestNs: log === "ring" ? 600 * pass : 0,
      ringResetNs: log === "ring" ? 400 * pass : 0,
      dirtyPages: 100,
      writes: 100,
    }),
    vm: { stats: () => ({ pages_4k: 512 }) },
  };
  return fake as unknown as KernelPerfSession;
}

test("kernel run's result: the models' statistics over synthetic iterations (warm-ups left out)", async () => {
  for (const [log, logMode] of [
    ["get", "dirty-log"],
    ["clear", "clear-log"],
    ["ring", "dirty-ring"],
  ] as const) {
    const run: KernelRun = {
      kind: "kernel",
      wp: "kernel",
      session: fakeSession(log),
      iters: [],
      logMode,
      activeMs: 0,
      writes: 0,
      disableLoggingNs: 11,
    };
    for (const warmup of [true, false, false, false]) run.iters.push(await iterateKernel(run, warmup));
    const r = kernelStrategyResult(run);
    assert.equal(r.iterations.length, 4);
    assert.equal(r.logMode, logMode);
    assert.equal(run.writes, 300, "measured iterations only");
    // Passes 2, 3, 4 are measured: the pass-1 warm-up's 1000 ns is out of every statistic.
    // ns per dirty page of the whole harvest: GET, GET + CLEAR, or harvest + reset (= getNs).
    const perPass = log === "clear" ? 1500 : 1000;
    assert.equal(r.getDirtyLog.medianNs, 3000);
    assert.equal(r.getDirtyLog.minNs, 2000);
    assert.equal(r.getDirtyLog.n, 3);
    assert.equal(r.nsPerDirtyPage, (perPass * 3) / 100);
    assert.equal(r.dirtyMemory.medianNs, 3_000_000);
    assert.equal(r.populateNs, 7_000);
    assert.equal(r.enableLoggingNs, 3_000);
    assert.equal(r.disableLoggingNs, 11);
    assert.equal(r.lockWait.maxNs, 0);
    assert.deepEqual(r.kernel?.stats, { pages_4k: 512 });
    assert.equal(r.kernel?.ringFullExits, 8);
    assert.equal(r.mmuLock, undefined, "no model counters for the kernel");
    assert.equal(r.clearDirtyLog?.medianNs, log === "clear" ? 1500 : undefined);
    if (log === "ring") {
      assert.equal(r.ring?.harvest.medianNs, 1800);
      assert.equal(r.ring?.reset.medianNs, 1200);
      assert.equal(r.ring?.fullExits, 2, "ring-full exits per pass");
      assert.equal(r.ring?.perEntryNs, undefined, "the kernel's passes do not count entries");
      assert.deepEqual(Object.keys(r.nsPerDirtyPageByCall), [
        "ring harvest",
        "ring reset",
        "harvest + reset",
      ]);
    } else assert.equal(r.ring, undefined);
  }
});

test("iterationStats: one function over (run fields, iterations) for models and kernel", () => {
  const it = (ns: number, warmup = false): IterationResult => ({
    warmup,
    dirtyMemoryNs: 10,
    getDirtyLogNs: ns,
    lockWaitNs: 1,
    protectNs: ns - 1,
    flushNs: 0,
    dirtyPages: 10,
    guestThroughput: 5,
    cpuNs: 0,
    preemptions: 0,
    ringHarvestNs: ns / 2,
    ringResetNs: ns / 2,
    ringFullExits: 0,
    ringEntries: 10,
    vcpuLockWaitNs: 0,
    hostLockWaitNs: 0,
    switches: 0,
    writes: 10,
  });
  const fields = {
    logMode: "dirty-ring" as const,
    writes: 20,
    activeMs: 2000,
    populateNs: 1,
    enableLoggingNs: 2,
    disableLoggingNs: 3,
  };
  const s = iterationStats(fields, [it(1e6, true), it(100), it(300)]);
  assert.equal(s.getDirtyLog.medianNs, 200);
  assert.equal(s.guestWritesPerSec, 10);
  assert.equal(s.nsPerDirtyPage, 20);
  assert.deepEqual(s.ring?.perEntryNs, { harvest: 10, reset: 10, total: 20 });
});

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
import { checkKernelOptions } from "../../src/bench/dirty_log_perf_kernel.js";
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

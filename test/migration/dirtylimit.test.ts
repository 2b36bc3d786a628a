/**
 * migrate with dirty-limit (dirtylimit.ts): a small guest moved byte-exact over the dirty ring
 * with the limit armed; the options it needs refused (EINVAL, exit 2) before a VM is built; and
 * the controller, fed a known count of reaped pages, steps the vCPU's sleep as
 * dirtylimit_set_throttle says.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { migrateLocal } from "../../src/migration/local.js";
import { KvmError } from "../../src/errors.js";
import { DirtyLimit } from "../../src/migration/dirtylimit.js";
import { DirtyRingLog } from "../../src/migration/log_sync.js";
import type { GuestVm } from "../../src/migration/guest_vm.js";
import { runKvmmu } from "../helpers/cli.js";

import { dirtyLimitText } from "../../src/cli/migrate_cmd.js";
import type { DirtyLimitReport } from "../../src/migration/report.js";
test("migrate --log-mode dirty-ring --dirty-limit 50: completed, every page equal, invariant holds", async () => {
  const { source, destination } = await migrateLocal({
    memoryBytes: 4 << 20,
    vcpus: 1,
    warmupMs: 50,
    destination: "inline",
    logMode: "dirty-ring",
    dirtyRingSize: 256,
    dirtyLimit: 50,
    dirtyLimitPeriodMs: 100,
    maxBandwidth: 8 << 20,
    downtimeLimitMs: 1000,
    minRounds: 3,
  });
  assert.equal(source.status, "completed", JSON.stringify(source.error));
  assert.deepEqual([source.verify.pagesCompared, source.verify.mismatches], [1024, 0]);
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  assert.equal(destination?.status, "completed");
  assert.equal(source.logMode, "dirty-ring");
  assert.equal(source.dirtyLimit?.["vcpu-dirty-limit"], 50);
  assert.equal(source.dirtyLimit?.periodMs, 100);
  for (const r of source.rounds) assert.equal(typeof r["dirty-limit-throttle-time-per-round"], "number");
});

test("dirty-limit's options are refused before anything is built", async () => {
  const bad: [object, RegExp][] = [
    [{ dirtyLimit: 50 }, /dirty-ring/],
    [{ dirtyLimit: 50, logMode: "dirty-ring", autoConverge: true }, /autoConverge/],
    [{ dirtyLimit: 0, logMode: "dirty-ring" }, /dirtyLimit/],
    [{ dirtyLimit: 5, logMode: "dirty-ring", dirtyLimitPeriodMs: 0 }, /dirtyLimitPeriodMs/],
    [{ dirtyRingSize: 300, logMode: "dirty-ring" }, /dirtyRingSize/],
    [{ dirtyRingSize: 512 }, /dirty-ring/],
  ];
  for (const [o, re] of bad)
    await assert.rejects(
      migrateLocal({ memoryBytes: 1 << 20, destination: "inline", ...o }),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && re.test(e.message),
    );
  const cli = await runKvmmu(["migrate", "--local", "--dirty-limit", "50", "-b", "1M"]);
  assert.equal(cli.code, 2, cli.err);
  assert.match(cli.err, /EINVAL: --dirty-limit: needs --log-mode dirty-ring/);
});

test("the controller steps the sleep up on a vCPU far over its quota, and clears it on stop", async () => {
  // A stand-in VM and ring: each reap adds 2^20 pages (4 GiB) to vCPU 0, nothing to vCPU 1, so
  // whatever the period's real length (<= 10 s), vCPU 0 is far over a 1 MB/s quota.
  const set: [number, number][] = [];
  const ring = {
    ringEntries: 4096,
    dirtyPages: new Float64Array(64),
    reap(): number {
      this.dirtyPages[0] += 2 ** 20;
      return 2 ** 20;
    },
  };
  const vm = {
    dirtyRingStats: () => ({ fullExits: 0, dropped: 0 }),
    waitDirtyRingFull: (o: { timeoutMs: number }) => new Promise((r) => setTimeout(() => r(0), o.timeoutMs)),
    setDirtyRingThrottle: (v: number, us: number) => void set.push([v, us]),
  };
  const g = { vm, layout: { vcpus: 2 } } as unknown as GuestVm;
  const dl = new DirtyLimit(g, ring as unknown as DirtyRingLog, { quotaMBps: 1, periodMs: 20 });
  dl.start();
  while (dl.periods < 2) await new Promise((r) => setTimeout(r, 5));
  await dl.stop();
  assert.equal(dl.error, null);
  const v0 = set.filter(([v]) => v === 0).map(([, us]) => us);
  // The first adjustment is linear (error ~100%) and positive, at most 99 ring-full times.
  assert.ok(v0[0] > 0, `vCPU 0's first sleep ${v0[0]} us`);
  assert.ok(dl.rates[0] > 1000, `rate ${dl.rates[0]}`);
  // vCPU 1 dirtied nothing: within tolerance of its quota, never adjusted before the stop.
  assert.deepEqual(
    set.filter(([v, us]) => v === 1 && us !== 0),
    [],
  );
  // stop(): both back to 0.
  assert.deepEqual(set.slice(-2), [
    [0, 0],
    [1, 0],
  ]);
});

test("the report says what dirty-limit did: never triggered, not engaged within its first period, or ran", () => {
  const dl: DirtyLimitReport = {
    "vcpu-dirty-limit": 50,
    periodMs: 1000,
    started: true,
    throttleUsPerFull: [0],
    rates: [0],
    ringFullReaps: 3,
    periods: 0,
  };
  const none = dirtyLimitText(dl);
  assert.match(none, /not engaged: the migration ended within the first period \(1000 ms\)/);
  assert.doesNotMatch(none, /0 periods/);
  assert.match(dirtyLimitText({ ...dl, started: false }), /never triggered/);
  assert.match(
    dirtyLimitText({ ...dl, periods: 1, rates: [80], throttleUsPerFull: [2500] }),
    /ran \(1 period of 1000 ms, 3 ring-full reaps\); last rates 80 MB\/s, sleep per ring-full 2\.5 ms/,
  );
});

/**
 * dirty-log-test (src/verify/dirty_log_test.ts): a short run of both oracles on both
 * write-protect strategies must find no violation, and the same oracles must find violations
 * when the harvester is broken (bits dropped from, or added to, what getDirtyLog returns) or
 * when the engine's skip-flush bug is switched on.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dirtyLogTest, DirtyLogTestOptions } from "../../src/verify/dirty_log_test.js";
import { KvmError } from "../../src/errors.js";

const base: DirtyLogTestOptions = {
  iterations: 4,
  intervalMs: 10,
  vcpus: 2,
  bytesPerVcpu: 8 << 20,
  wp: ["locked", "lockless"],
  oracles: ["kvm", "qemu"],
  thp: true,
  migrateRate: 200,
  invalidateRate: 50,
  seed: 1,
};

test("both strategies, both oracles, notifier churn on: no violation", { timeout: 60_000 }, async () => {
  const r = await dirtyLogTest(base);
  assert.deepEqual(r.firstViolations, []);
  assert.equal(r.violations, 0);
  assert.ok(r.pagesChecked > 0);
  assert.equal(r.iterations, 16);
  assert.equal(r.slotPages, 2 * 2048 + 3);
  let churn = 0;
  for (const wp of ["locked", "lockless"] as const) {
    for (const oracle of ["kvm", "qemu"] as const) {
      const x = r.results[wp]?.[oracle];
      assert.ok(x, `${wp} ${oracle} ran`);
      assert.equal(x.iterations, 4);
      assert.equal(x.pagesChecked, 4 * r.slotPages);
      assert.equal(x.violations, 0);
      assert.ok(x.guestWrites >= 4 * 256, `${wp} ${oracle}: min-writes floor (${x.guestWrites} writes)`);
      assert.ok(x.dirtyPages > 0, `${wp} ${oracle}: something was reported dirty`);
      churn += x.host.migrations + x.host.invalidations;
    }
  }
  assert.ok(churn > 0, "the host thread migrated or invalidated pages");
  assert.ok(r.pagesCheckedPerSec > 0);
});

test(
  "negative control: a harvester that drops bits is caught by both oracles",
  { timeout: 60_000 },
  async () => {
    const r = await dirtyLogTest({
      ...base,
      iterations: 3,
      migrateRate: 0,
      invalidateRate: 0,
      // The lowest set bit of every bitmap word is lost.
      harvestFilter: (bm) => {
        for (let i = 0; i < bm.length; i++) bm[i] = bm[i] & (bm[i] - 1);
      },
    });
    assert.ok(r.violations > 0);
    for (const wp of ["locked", "lockless"] as const)
      for (const oracle of ["kvm", "qemu"] as const)
        assert.ok(r.results[wp]![oracle]!.violations > 0, `${wp} ${oracle} caught it`);
    assert.ok(r.firstViolations.some((v) => v.oracle === "kvm" && /lost dirty bit/.test(v.what)));
    assert.ok(r.firstViolations.some((v) => v.oracle === "qemu" && /not reported/.test(v.what)));
  },
);

test(
  "negative control: a harvester that reports pages not written this iteration is caught",
  { timeout: 60_000 },
  async () => {
    const r = await dirtyLogTest({
      ...base,
      iterations: 3,
      wp: ["lockless"],
      oracles: ["kvm"],
      migrateRate: 0,
      invalidateRate: 0,
      // Page 0 and the last page of the slot are always reported dirty, written or not.
      harvestFilter: (bm, phase) => {
        if (phase !== "final") return;
        bm[0] = bm[0] | 1;
        const last = 2 * 2048 + 3 - 1;
        bm[last >>> 5] = bm[last >>> 5] | (1 << (last & 31));
      },
    });
    assert.ok(r.violations > 0);
    assert.ok(r.firstViolations.some((v) => /dirty page .* value \d+ != iteration/.test(v.what)));
  },
);

test("negative control: bits past the end of the slot are caught", { timeout: 60_000 }, async () => {
  const r = await dirtyLogTest({
    ...base,
    iterations: 1,
    wp: ["locked"],
    migrateRate: 0,
    invalidateRate: 0,
    harvestFilter: (bm) => {
      bm[bm.length - 1] = bm[bm.length - 1] | (1 << 31);
    },
  });
  assert.ok(r.firstViolations.some((v) => /past the end of the slot/.test(v.what)));
});

test(
  "negative control: the engine's skip-flush bug (lockless) is caught on real threads",
  { timeout: 60_000 },
  async () => {
    // Small regions stay in the vCPUs' software TLBs; without churn nothing else flushes them.
    const r = await dirtyLogTest({
      ...base,
      iterations: 4,
      bytesPerVcpu: 2 << 20,
      wp: ["lockless"],
      migrateRate: 0,
      invalidateRate: 0,
      bugs: ["skip-flush"],
    });
    assert.ok(r.results.lockless!.kvm!.violations > 0, "kvm oracle");
    assert.ok(r.results.lockless!.qemu!.violations > 0, "qemu oracle");
  },
);

test(
  "--seconds runs until the time is spent; bad options are EINVAL naming the option",
  { timeout: 60_000 },
  async () => {
    const r = await dirtyLogTest({
      ...base,
      seconds: 1,
      iterations: 1_000_000,
      wp: ["lockless"],
      oracles: ["kvm"],
      bytesPerVcpu: 2 << 20,
    });
    assert.equal(r.violations, 0);
    assert.ok(r.iterations > 1);
    assert.ok(r.iterations < 1_000_000, "the time ended the run, not the iteration count");
    const bad: [Partial<DirtyLogTestOptions>, string][] = [
      [{ iterations: 0 }, "iterations"],
      [{ seconds: -1 }, "seconds"],
      [{ intervalMs: 0 }, "intervalMs"],
      [{ vcpus: 0 }, "vcpus"],
      [{ bytesPerVcpu: 5000 }, "bytesPerVcpu"],
      [{ wp: [] }, "wp"],
      [{ oracles: ["ring" as "kvm"] }, "oracles"],
      [{ migrateRate: -1 }, "migrateRate"],
      [{ seed: 1.5 }, "seed"],
    ];
    for (const [o, name] of bad)
      await assert.rejects(
        dirtyLogTest({ ...base, ...o }),
        (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && e.message.includes(name),
      );
  },
);

test(
  "-M all: dirty-log, clear-log and dirty-ring on both strategies, TDP and shadow, no violation",
  { timeout: 120_000 },
  async () => {
    for (const mode of ["tdp", "shadow"] as const) {
      const r = await dirtyLogTest({
        ...base,
        iterations: 3,
        bytesPerVcpu: 4 << 20,
        oracles: ["kvm"],
        modes: ["dirty-log", "clear-log", "dirty-ring"],
        ringEntries: 256,
        mode,
      });
      assert.deepEqual(r.firstViolations, [], mode);
      assert.equal(r.violations, 0);
      assert.equal(r.modes.length, 6);
      assert.equal(r.iterations, 18, "totals count every mode");
      assert.equal(r.pagesChecked, 18 * r.slotPages);
      assert.notEqual(r.slotPages % 64, 0, "the slot is not a multiple of 64 pages");
      for (const m of r.modes) {
        assert.equal(m.iterations, 3, `${m.wp} ${m.mode}`);
        assert.equal(m.violations, 0);
        assert.ok(m.dirtyPages > 0, `${m.wp} ${m.mode} reported something`);
        if (m.mode === "dirty-ring") assert.ok(m.ringFullExits > 0, `${m.wp}: a 256-entry ring filled up`);
      }
      assert.equal(r.results.locked?.kvm?.pagesChecked, 3 * r.slotPages, "results keeps the dirty-log run");
    }
  },
);

test(
  "negative controls per mode: a broken ring reset and a dropping ring harvester",
  { timeout: 60_000 },
  async () => {
    const opts = {
      ...base,
      iterations: 3,
      bytesPerVcpu: 4 << 20,
      wp: ["lockless" as const],
      oracles: ["kvm" as const],
      ringEntries: 256,
    };
    const coalesce = await dirtyLogTest({
      ...opts,
      modes: ["dirty-ring"],
      bugs: ["reset-coalesce-backward"],
    });
    assert.ok(coalesce.violations > 0, "reset-coalesce-backward loses pages");
    assert.equal(coalesce.firstViolations[0].mode, "dirty-ring");
    const drop = await dirtyLogTest({
      ...opts,
      modes: ["clear-log", "dirty-ring"],
      migrateRate: 0,
      invalidateRate: 0,
      harvestFilter: (bm) => {
        for (let i = 0; i < bm.length; i++) bm[i] = bm[i] & (bm[i] - 1);
      },
    });
    for (const m of drop.modes) assert.ok(m.violations > 0, `${m.mode}: dropped bits are caught`);
  },
);

test("modes and ring sizes are validated", async () => {
  await assert.rejects(dirtyLogTest({ ...base, modes: ["ring" as "dirty-ring"] }), /EINVAL: modes/);
  await assert.rejects(dirtyLogTest({ ...base, modes: [] }), /EINVAL: modes/);
  await assert.rejects(dirtyLogTest({ ...base, ringEntries: 300 }), /EINVAL: ringEntries/);
  await assert.rejects(dirtyLogTest({ ...base, ringEntries: 128 }), /EINVAL: ringEntries/);
});

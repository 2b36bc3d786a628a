/**
 * The TDP MMU end to end with real vCPU workers and the host thread: dirty-log-test's oracles in
 * every log mode, with and without PML, with notifier churn (page migrations, invalidations) and
 * with NUMA balancing's zaps run by the vCPUs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dirtyLogTest, MODES } from "../../../src/verify/dirty_log_test.js";

for (const pml of [true, false]) {
  test(
    `dirty-log-test --wp tdp-mmu -M all (${pml ? "PML" : "write protection"}), notifier churn: 0 violations`,
    { timeout: 120_000 },
    async () => {
      const r = await dirtyLogTest({
        iterations: 3,
        intervalMs: 10,
        vcpus: 2,
        bytesPerVcpu: 2 << 20,
        wp: ["tdp-mmu"],
        oracles: ["kvm", "qemu"],
        modes: [...MODES],
        thp: true,
        pml,
        migrateRate: 200,
        invalidateRate: 50,
        seed: 5,
      });
      assert.deepEqual(r.firstViolations, []);
      assert.equal(r.violations, 0);
      assert.ok((r.results["tdp-mmu"]?.kvm?.pagesChecked ?? 0) > 0, "pages checked");
    },
  );
}

test(
  "dirty-log-test --wp tdp-mmu with NUMA balancing's zaps every 5 ms: 0 violations",
  { timeout: 120_000 },
  async () => {
    const r = await dirtyLogTest({
      iterations: 4,
      intervalMs: 20,
      vcpus: 2,
      bytesPerVcpu: 2 << 20,
      wp: ["tdp-mmu"],
      oracles: ["kvm", "qemu"],
      thp: false,
      migrateRate: 0,
      invalidateRate: 0,
      numaScanPeriodMs: 5,
      seed: 3,
    });
    assert.equal(r.violations, 0);
    let scans = 0;
    for (const oracle of ["kvm", "qemu"] as const) scans += r.results["tdp-mmu"]?.[oracle]?.numa?.scans ?? 0;
    assert.ok(scans > 0, "the vCPUs scanned");
  },
);

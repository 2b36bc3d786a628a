/**
 * dirty-log-perf's variant run names (tdp-mmu:no-pml, tdp-mmu:no-eager-split): parsed and
 * refused as documented, and run in one alternation with the per-dirty-page fault count and the
 * PML flush of each.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { dirtyLogPerf } from "../../src/bench/dirty_log_perf.js";
import { formatPerf } from "../../src/bench/dirty_log_perf_format.js";
import { parseRunList, parseRunName } from "../../src/bench/dirty_log_perf_variant.js";
import { KvmError } from "../../src/errors.js";

test("run names: a design, or tdp-mmu with no-pml and/or no-eager-split", () => {
  assert.deepEqual(parseRunName("--wp", "locked"), { design: "locked" });
  assert.deepEqual(parseRunName("--wp", "tdp-mmu:no-pml"), { design: "tdp-mmu", pml: false });
  assert.deepEqual(parseRunName("--wp", "tdp-mmu:no-eager-split:no-pml"), {
    design: "tdp-mmu",
    pml: false,
    eager_page_split: false,
  });
  assert.deepEqual(parseRunList("--wp", "tdp-mmu, tdp-mmu:no-pml,tdp-mmu"), ["tdp-mmu", "tdp-mmu:no-pml"]);
  for (const bad of ["locked:no-pml", "tdp-mmu:pml", "tdp-mmu:no-pml:no-pml", "nope:no-pml", ""])
    assert.throws(
      () => parseRunList("--wp", bad),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /--wp/.test(e.message),
      bad,
    );
});

test("dirty-log-perf tdp-mmu against tdp-mmu:no-pml: no fault per dirty page with PML, one without", async () => {
  const r = await dirtyLogPerf({
    vcpus: 1,
    bytesPerVcpu: 4 << 20,
    iterations: 2,
    wp: ["tdp-mmu", "tdp-mmu:no-pml"],
    baseline: "tdp-mmu:no-pml",
    contention: { migrateRate: 0, invalidateRate: 0 },
    park: true,
    thp: false,
  });
  const pml = r.results["tdp-mmu"]!;
  const wp = r.results["tdp-mmu:no-pml"]!;
  assert.equal(pml.faultsPerDirtyPage, 0);
  assert.equal(wp.faultsPerDirtyPage, 1, "two passes per iteration, the first faults once per page");
  assert.ok(pml.iterations.every((i) => i.dirtyPages === 1024 && i.faults === 0));
  assert.ok(
    wp.iterations.every((i) => i.pmlFlushNs === 0),
    "no PML kick without PML",
  );
  assert.ok(r.ratios["tdp-mmu/tdp-mmu:no-pml"] !== undefined);
  assert.match(formatPerf(r), /0\.000 per dirty page per iteration/);
});

test("--relog: logging re-enabled before every iteration; eager splitting's first pass takes no fault, lazy one per 4 KiB page", async () => {
  const r = await dirtyLogPerf({
    vcpus: 1,
    bytesPerVcpu: 4 << 20,
    iterations: 2,
    wp: ["tdp-mmu", "tdp-mmu:no-eager-split"],
    baseline: "tdp-mmu:no-eager-split",
    contention: { migrateRate: 0, invalidateRate: 0 },
    park: true,
    thp: true,
    manualProtect: false,
    relog: true,
  });
  const eager = r.results["tdp-mmu"]!;
  const lazy = r.results["tdp-mmu:no-eager-split"]!;
  for (const s of [eager, lazy]) {
    assert.ok(
      s.iterations.every((i) => i.enableLoggingNs !== undefined && i.enableLoggingCpuNs !== undefined),
    );
    assert.equal(s.enableLogging?.n, 2);
    assert.equal(s.firstPassNs, s.iterations[0].dirtyMemoryNs);
    assert.ok(s.iterations.every((i) => i.dirtyPages === 1024));
  }
  // Each iteration is a first pass: the huge pages came back while logging was off.
  assert.ok(eager.iterations.every((i) => i.faults === 0));
  assert.ok(
    lazy.iterations.every((i) => i.faults === 1024),
    "lazy: a slow fault splits each 2 MiB page, a fast one fixes each other 4 KiB page",
  );
  const q = r.ratios["tdp-mmu/tdp-mmu:no-eager-split"];
  assert.ok(q?.enableLogging && q.dirtyMemory && q.dirtyMemoryCpu && q.enableLoggingCpu);
  assert.match(formatPerf(r), /enable logging +\d/);
  await assert.rejects(
    dirtyLogPerf({ wp: ["tdp-mmu"], relog: true, ring: 256 }),
    (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /relog/.test(e.message),
  );
});

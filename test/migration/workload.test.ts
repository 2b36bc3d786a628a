/**
 * The migration workload: `--working-set` (fill all memory, then rewrite only the working set)
 * and `--dirty-rate` (a bounded dirtying rate), checked in the library and on the command line.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { migrateLocal } from "../../src/migration/local.js";
import { KvmError } from "../../src/errors.js";
import { checkLayout, layoutFor } from "../../src/migration/guest_vm.js";
import { invariantOf, pageOfStep, touchesOf } from "../../src/migration/guest.js";
import { runKvmmu } from "../helpers/cli.js";

test("workload: step k touches page k during the fill, then the working set round and round", () => {
  const n = 6;
  const w = 2;
  assert.deepEqual(
    Array.from({ length: 11 }, (_, k) => pageOfStep(k, n, w)),
    [0, 1, 2, 3, 4, 5, 0, 1, 0, 1, 0],
  );
  // After 9 steps: pages 0 and 1 touched 1 + 1 + 1 (page 0) / 1 + 1 (page 1)... counted here.
  const touched = new Array<number>(n).fill(0);
  for (let k = 0; k < 9; k++) touched[pageOfStep(k, n, w)]++;
  assert.deepEqual(
    touched,
    Array.from({ length: n }, (_, j) => touchesOf(j, 9, n, w)),
  );
  // The whole guest as the working set is the plain guest: pass + (j < next).
  for (const c of [0, 3, 6, 7, 13])
    for (let j = 0; j < n; j++)
      assert.equal(touchesOf(j, c, n, n), Math.floor(c / n) + (j < c % n ? 1 : 0), `c=${c} j=${j}`);
});

test("workload: the invariant finds a page of the working set that did not advance", () => {
  const n = 8;
  const w = 3;
  const c = 20;
  const bytes = Array.from({ length: n }, (_, j) => touchesOf(j, c, n, w));
  const o = { stateGpa: 0, regionGpa: 4096, pages: n, workingPages: w, vcpus: 1 };
  const read = (gpa: number): number => bytes[gpa / 4096 - 1] & 255;
  assert.equal(invariantOf(read, () => c, o).ok, true);
  bytes[1]--;
  const bad = invariantOf(read, () => c, o);
  assert.equal(bad.ok, false);
  assert.match(bad.problems[0], /page 1 /);
});

test("workload: layoutFor and a peer's config are checked, naming the argument", () => {
  const l = layoutFor(1 << 20, 2, { workingSetBytes: 64 << 10, dirtyRateBytes: 1 << 20 });
  assert.equal(l.workingPages, 8);
  assert.equal(l.dirtyRate, 128);
  assert.equal(layoutFor(1 << 20, 1).workingPages, l.pagesPerVcpu * 2 + 1);
  const bad: [() => unknown, RegExp][] = [
    [() => layoutFor(1 << 20, 1, { workingSetBytes: 0 }), /EINVAL: workingSet/],
    [() => layoutFor(1 << 20, 1, { workingSetBytes: 5000 }), /EINVAL: workingSet/],
    [() => layoutFor(1 << 20, 1, { workingSetBytes: 1 << 20 }), /EINVAL: workingSet/],
    [() => layoutFor(1 << 20, 1, { dirtyRateBytes: -1 }), /EINVAL: dirtyRate/],
    [() => layoutFor(1 << 20, 1, { dirtyRateBytes: NaN }), /EINVAL: dirtyRate/],
    [() => layoutFor(1 << 20, 1, { dirtyRateBytes: 100 }), /EINVAL: dirtyRate/],
    [() => checkLayout({ ...l, workingPages: 0 }, 1 << 30), /EINVAL: config.workingPages/],
    [() => checkLayout({ ...l, workingPages: 10_000 }, 1 << 30), /EINVAL: config.workingPages/],
    [() => checkLayout({ ...l, dirtyRate: "fast" }, 1 << 30), /EINVAL: config.dirtyRate/],
  ];
  for (const [f, re] of bad) assert.throws(f, (e: unknown) => e instanceof KvmError && re.test(e.message));
  assert.deepEqual(checkLayout(l, 1 << 30), l);
});

test("workload: a 64K working set in a 1 MiB guest, dirty rate bounded, migrates byte-exact", async () => {
  const { source, destination } = await migrateLocal({
    memoryBytes: 1 << 20,
    vcpus: 1,
    warmupMs: 50,
    destination: "inline",
    workingSetBytes: 64 << 10,
    dirtyRateBytes: 4 << 20,
    minRounds: 2,
    downtimeLimitMs: 1000,
  });
  assert.equal(source.status, "completed", JSON.stringify(source.error));
  assert.deepEqual([source.verify.pagesCompared, source.verify.mismatches], [256, 0]);
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  assert.equal(destination?.guestInvariant, true, destination?.problems.join("; "));
  // Filled before the migration: the bulk round sends every page whole, none as a ZERO record.
  assert.equal(source.rounds[0].duplicate, 0);
  // The guest dirties at most ~1024 pages/s (4 MiB/s): far below its unbounded rate.
  assert.ok(source.guestRate < 4 * 1024, `guest rate ${source.guestRate}`);
  // Only the working set (16 pages) and the state page are dirty after the bulk round.
  for (const r of source.rounds.slice(1)) assert.ok(r.remaining <= 17 * 4096, `remaining ${r.remaining}`);
});

test("kvmmu migrate: --working-set and --dirty-rate refused by name (exit 2)", async () => {
  for (const [args, re] of [
    [["--working-set", "0"], /EINVAL: --working-set/],
    [["--working-set", "5000"], /EINVAL: --working-set/],
    [["-b", "8M", "--working-set", "8M"], /EINVAL: --working-set/],
    [["--working-set", "lots"], /EINVAL: --working-set/],
    [["--dirty-rate", "-1"], /EINVAL: --dirty-rate/],
    [["--dirty-rate", "fast"], /EINVAL: --dirty-rate/],
  ] as const) {
    const r = await runKvmmu(["migrate", "--local", ...args]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, re);
  }
});

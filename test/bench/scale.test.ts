/** Scale: what a 16 GiB guest needs, what is refused, and MMU metadata against guest memory. */
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  checkMachineMemory,
  CONTENTION,
  dirtyLogPerf,
  hostMemoryFor,
  PerfOptions,
  validatePerfOptions,
} from "../../src/bench/dirty_log_perf.js";
import { KvmError } from "../../src/errors.js";
import { MAX_MEMORY, Vm } from "../../src/vm.js";
import { PAGE_SIZE } from "../../src/kvm_host.js";
import { vmShared } from "../../src/vm/internal.js";

const GiB = 2 ** 30;
const O: PerfOptions = {
  vcpus: 1,
  bytesPerVcpu: 16 * GiB,
  iterations: 1,
  writePercent: 100,
  random: false,
  wp: ["lockless"],
  thp: true,
  contention: CONTENTION["none"],
  park: true,
  seed: 1,
};

const enomem = (arg: string) => (e: unknown) =>
  e instanceof KvmError && e.code === "ENOMEM" && e.message.includes(` ${arg}: `);

test("a 16 GiB TDP guest without page migration needs exactly the 2^22 frames one Int32Array holds", () => {
  assert.equal(hostMemoryFor(O).memory, MAX_MEMORY);
  validatePerfOptions(O);
  // An invalidation moves no page: it needs no spare frame either.
  validatePerfOptions({ ...O, contention: { migrateRate: 0, invalidateRate: 100 } });
});

test("past 16 GiB of host memory: ENOMEM naming bytesPerVcpu, saying what the extra frames are for", () => {
  assert.throws(
    () => validatePerfOptions({ ...O, contention: CONTENTION["default"] }),
    (e: unknown) => {
      assert.ok(enomem("bytesPerVcpu")(e));
      assert.match((e as Error).message, /page migration/);
      return true;
    },
  );
  assert.throws(
    () => validatePerfOptions({ ...O, mode: "shadow" }),
    (e: unknown) => {
      assert.ok(enomem("bytesPerVcpu")(e));
      assert.match((e as Error).message, /shadow mode/);
      return true;
    },
  );
  assert.throws(
    () => validatePerfOptions({ ...O, vcpus: 2, bytesPerVcpu: 8 * GiB + (2 << 20) }),
    enomem("bytesPerVcpu"),
  );
  // 2 MiB less guest leaves room for the migration's spare frames.
  validatePerfOptions({ ...O, bytesPerVcpu: 16 * GiB - (2 << 20), contention: CONTENTION["default"] });
});

test("both designs' VMs must fit the machine's free memory, else ENOMEM naming wp", () => {
  const both: PerfOptions = { ...O, wp: ["locked", "lockless"] };
  assert.throws(() => checkMachineMemory(both, 21 * GiB), enomem("wp"));
  checkMachineMemory(O, 21 * GiB);
  assert.throws(() => checkMachineMemory(O, 16 * GiB), enomem("bytesPerVcpu"));
  checkMachineMemory({ ...both, bytesPerVcpu: 8 * GiB }, 21 * GiB);
});

test("Vm.create: one byte of host memory past 16 GiB is ENOMEM naming memory", () => {
  assert.throws(() => Vm.create({ memory: MAX_MEMORY + PAGE_SIZE, wp: "lockless" }), enomem("memory"));
});

for (const mode of ["tdp", "shadow"] as const)
  for (const gib of [1, 4])
    test(`MMU metadata is at most 1% of guest memory: ${mode}, ${gib} GiB`, () => {
      // Sized as dirty-log-perf sizes it; the guest memory itself is never touched here.
      const o = { ...O, mode, bytesPerVcpu: gib * GiB };
      const { memory, ptPages } = hostMemoryFor(o);
      const vm = Vm.create({
        memory,
        wp: "lockless",
        mode,
        maxVcpus: 1,
        maxSlotPages: o.bytesPerVcpu / PAGE_SIZE + ptPages,
      });
      const pct = (100 * vm.metadataBytes()) / o.bytesPerVcpu;
      assert.ok(pct <= 1, `${pct.toFixed(3)}%`);
      // A shadow guest mapping its memory once with 4 KiB pages needs a page per 512: it has two.
      assert.ok(vmShared(vm).config.maxSp >= (2 * o.bytesPerVcpu) / PAGE_SIZE / 512);
    });

test(
  "dirty-log-perf reports first touch, process CPU time and preemptions",
  { timeout: 60_000 },
  async () => {
    const r = await dirtyLogPerf({ ...O, bytesPerVcpu: 8 << 20, iterations: 2, manualProtect: false });
    const s = r.results.lockless!;
    assert.ok(s.mmapNs! > 0, "host_mmap timed");
    assert.ok(s.cpu!.populateNs > 0 && s.cpu!.enableLoggingNs >= 0);
    for (const it of s.iterations) {
      assert.ok(it.cpuNs >= 0 && Number.isInteger(it.preemptions) && it.preemptions >= 0);
    }
    assert.equal(s.cpu!.nsPerDirtyPage, s.cpu!.protectCallNs / 2048, "8 MiB: 2048 pages, all dirty");
    assert.ok(r.metadataPercent > 0);
  },
);

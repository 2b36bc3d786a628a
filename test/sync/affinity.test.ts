/**
 * Thread affinity (src/sync/affinity.ts) and Vm.pinVcpu: a worker has its own thread id, a
 * pinned vCPU thread's mask is the one CPU asked for, and bad requests are typed errors.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { Worker } from "node:worker_threads";
import { gettid, processThreads, sched_getaffinity, sched_setaffinity } from "../../src/sync/affinity.js";
import { autoPin, CONTENTION, dirtyLogPerf } from "../../src/bench/dirty_log_perf.js";
import { Vm } from "../../src/vm.js";
import { PAGE_SIZE, VCPU } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import { vmKvm } from "../../src/vm/internal.js";

const linux = process.platform === "linux";
function hasTaskset(): boolean {
  try {
    execFileSync("taskset", ["-V"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** The affinity list of a thread, as taskset prints it ("0", "0,1", "0-1"). */
function affinityOf(tid: number): string {
  return execFileSync("taskset", ["-p", "-c", String(tid)])
    .toString()
    .trim()
    .split(": ")[1];
}

test("gettid: the main thread is the process; a worker has an id of its own", { skip: !linux }, async () => {
  assert.equal(gettid(), process.pid);
  const url = new URL("../../src/sync/affinity.js", import.meta.url).href;
  const w = new Worker(
    `import(${JSON.stringify(url)}).then((m) => require("node:worker_threads").parentPort.postMessage(m.gettid()));`,
    {
      eval: true,
    },
  );
  const tid = await new Promise<number>((res) => w.once("message", res));
  await w.terminate();
  assert.ok(tid > 0 && tid !== process.pid, `worker tid ${tid}`);
});

test(
  "sched_setaffinity: an unknown thread is EINVAL, a missing id ENOSYS",
  { skip: !linux || !hasTaskset() },
  () => {
    assert.throws(
      () => sched_setaffinity(2 ** 30, 0),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /thread 1073741824/.test(e.message),
    );
    assert.throws(
      () => sched_setaffinity(0, 0),
      (e: unknown) => e instanceof KvmError && e.code === "ENOSYS",
    );
  },
);

test(
  "Vm.pinVcpu: the vCPU's thread runs on the CPU asked for; bad ids and CPUs are refused",
  { skip: !linux || !hasTaskset() },
  async () => {
    const vm = Vm.create({ memory: 256 * PAGE_SIZE, wp: "lockless", maxVcpus: 2 });
    try {
      const hva = vm.mmap(256 * PAGE_SIZE, { thp: false });
      vm.setUserMemoryRegion({
        slot: 0,
        flags: 0,
        guestPhysAddr: 0,
        memorySize: 256 * PAGE_SIZE,
        userspaceAddr: hva,
      });
      vm.createVcpu(0);
      assert.throws(
        () => vm.pinVcpu(0, 0),
        (e: unknown) => e instanceof KvmError && e.code === "ENOENT",
        "no thread before run",
      );
      await vm.run(() => ({
        kind: "memstress",
        baseGfn: 0,
        pages: 256,
        writePercent: 50,
        random: true,
        seed: 1,
      }));
      const tid = Atomics.load(vmKvm(vm).vcpu, VCPU.tid(0));
      assert.ok(tid > 0 && tid !== process.pid, `the vCPU's thread id ${tid}`);
      vm.pinVcpu(0, 0);
      assert.equal(affinityOf(tid), "0");
      assert.throws(
        () => vm.pinVcpu(0, 4096),
        (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /cpu/.test(e.message),
      );
      assert.throws(
        () => vm.pinVcpu(1, 0),
        (e: unknown) => e instanceof KvmError && e.code === "ENOENT",
        "vCPU 1 was never created",
      );
      assert.throws(
        () => vm.pinVcpu(-1, 0),
        (e: unknown) => e instanceof KvmError && e.code === "EINVAL",
      );
    } finally {
      await vm.stop();
    }
  },
);

test("autoPin: the harvester on the first allowed CPU, the vCPUs round robin on the others", () => {
  assert.deepEqual(autoPin([0, 1], 1), [1, 0]);
  assert.deepEqual(autoPin([2, 3, 5], 3), [3, 5, 3, 2]);
  assert.deepEqual(autoPin([4], 2), [4, 4, 4]);
});

test(
  "dirty-log-perf with a pin list: the harvester's CPUs of before the run are given back",
  { skip: !linux || !hasTaskset(), timeout: 120_000 },
  async () => {
    const before = sched_getaffinity();
    assert.ok(before !== null && before.length >= 1);
    const r = await dirtyLogPerf({
      vcpus: 1,
      bytesPerVcpu: 2 << 20,
      iterations: 1,
      warmup: 0,
      writePercent: 100,
      random: false,
      wp: ["lockless"],
      thp: false,
      contention: CONTENTION["none"],
      park: false,
      seed: 1,
      pin: [before[before.length - 1], before[0]],
    });
    assert.ok(r.pinned !== null && "vcpus" in r.pinned);
    assert.deepEqual(r.pinned.vcpus, [before[before.length - 1]]);
    assert.equal(r.pinned.harvester, before[0]);
    assert.ok((r.pinned.others ?? 0) >= 1, "V8's helper threads went with the harvester");
    for (const tid of processThreads())
      try {
        assert.deepEqual(
          affinityOf(tid).split(","),
          affinityOf(process.pid).split(","),
          `thread ${tid} given back`,
        );
      } catch (e) {
        if (!(e instanceof Error && /No such process|ENOENT|status 1/.test(e.message))) throw e;
      }
    assert.deepEqual(sched_getaffinity(), before, "the mask is restored");
    assert.equal(r.machine.cpus, before.length, "the machine's CPUs counted before pinning");
  },
);

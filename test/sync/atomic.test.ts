/**
 * aread (READ_ONCE): a plain load with no hook, a scheduling point with one; and the harvest's
 * per-spte accesses stay visible to the controlled scheduler after the inline fast paths.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { aread, Op, setSchedHook } from "../../src/sync/atomic.js";
import { Vm, WpName } from "../../src/vm.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { KVM_MEM_LOG_DIRTY_PAGES } from "../../src/kvm_host.js";
import { vmKvm } from "../../src/vm/internal.js";

test("aread: the current value; under a hook a Load scheduling point on that word", () => {
  const a = new Int32Array(new SharedArrayBuffer(16));
  a[2] = 7;
  assert.equal(aread(a, 2), 7);
  const seen: [Op, Int32Array, number][] = [];
  setSchedHook((op, arr, i) => void seen.push([op, arr, i]));
  try {
    a[2] = 9;
    assert.equal(aread(a, 2), 9);
  } finally {
    setSchedHook(null);
  }
  assert.deepEqual(seen, [[Op.Load, a, 2]]);
  seen.length = 0;
  aread(a, 2);
  assert.equal(seen.length, 0, "no hook after removal");
});

const PAGES = 256;

for (const wp of ["locked", "lockless"] as WpName[]) {
  test(`${wp} harvest: each protected spte is read and changed through scheduling points`, () => {
    const vm = Vm.create({ memory: 4 << 20, wp, maxVcpus: 1 });
    const hva = vm.mmap(PAGES * 4096);
    const region = { slot: 0, guestPhysAddr: 0, memorySize: PAGES * 4096, userspaceAddr: hva };
    vm.setUserMemoryRegion({ ...region, flags: 0 });
    vm.createVcpu(0);
    const v = new Vcpu(vmKvm(vm), 0, 4);
    const touch = (x: number): void => {
      v.enterGuest();
      for (let g = 0; g < PAGES; g++) v.write32(g, 0, x);
      v.exitGuest();
    };
    touch(1);
    vm.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES });
    touch(2);
    const spt = vmKvm(vm).spt;
    const ops = new Map<Op, number>();
    setSchedHook((op, arr) => {
      if (arr === spt) ops.set(op, (ops.get(op) ?? 0) + 1);
    });
    let bm: Uint32Array;
    try {
      bm = vm.getDirtyLog(0);
    } finally {
      setSchedHook(null);
    }
    assert.equal(
      bm.reduce((n, w) => n + (w === 0xffffffff ? 32 : 0), 0),
      PAGES,
      "every page reported",
    );
    // One load and one RMW per page: xchg (locked, mmu_spte_update) or cmpxchg (lockless).
    assert.equal(ops.get(Op.Load), PAGES);
    assert.equal(ops.get(wp === "locked" ? Op.Xchg : Op.Cas), PAGES);
  });
}

test("waitAsyncAlive: settles after its timeout even when nothing else keeps the process alive", () => {
  const mod = new URL("../../src/sync/atomic.js", import.meta.url).href;
  const run = (body: string): string =>
    execFileSync(process.execPath, ["--input-type=module", "-e", body], {
      encoding: "utf8",
      timeout: 20_000,
    });
  const prelude = `import { waitAsyncAlive } from ${JSON.stringify(mod)};
const a = new Int32Array(new SharedArrayBuffer(8));`;
  // A bare Atomics.waitAsync's timer does not hold the event loop: the process exits unsettled.
  assert.equal(run(`${prelude} Atomics.waitAsync(a, 0, 0, 100).value.then(() => console.log("bare"));`), "");
  assert.equal(
    run(`${prelude} waitAsyncAlive(a, 0, 0, 100).then(() => console.log("settled"));`),
    "settled\n",
  );
  // A changed value settles at once, a notify before the timeout too.
  assert.equal(
    run(`${prelude} waitAsyncAlive(a, 0, 1, 60_000).then(() => console.log("changed"));`),
    "changed\n",
  );
  // The notify, not the 60 s timeout, settles it: run() gives the child 20 s.
  assert.equal(
    run(`${prelude} const p = waitAsyncAlive(a, 0, 0, 60_000).then(() => console.log("woken"));
Atomics.store(a, 0, 1); Atomics.notify(a, 0);`),
    "woken\n",
  );
});

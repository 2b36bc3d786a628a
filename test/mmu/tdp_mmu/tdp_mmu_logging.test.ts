/** The TDP MMU end to end in one thread: faults map, logging reports exactly the written pages. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm } from "../../../src/vm.js";
import { KvmError } from "../../../src/errors.js";
import { is_writable_pte, SPTE_DIRTY } from "../../../src/mmu/spte.js";
import { leaves, makeTdpVm, NPAGES, reported, setLogging, writePages } from "./helpers.js";

test("tdp-mmu refuses shadow paging with a typed error naming the reason", () => {
  assert.throws(
    () => Vm.create({ memory: 16 << 20, wp: "tdp-mmu", mode: "shadow" }),
    (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /shadow paging/.test(e.message),
  );
});

for (const pml of [false, true]) {
  test(`tdp-mmu ${pml ? "PML" : "write-protect"} logging: GET reports exactly the written pages`, () => {
    const vm = makeTdpVm({ pml, eager: false });
    const kvm = vm.kvm;
    const all = Array.from({ length: NPAGES }, (_, g) => g);
    writePages(vm, all, 1);
    assert.ok(
      [...leaves(kvm).values()].some(([, l]) => l === 2),
      "THP backing maps 2 MiB leaves",
    );
    setLogging(vm, true);
    for (const [g, [s, l]] of leaves(kvm)) {
      if (l > 1 || !pml)
        assert.ok(!is_writable_pte(s), `gfn ${g} level ${l} writable after enabling logging`);
      else assert.equal(s & SPTE_DIRTY, 0, `gfn ${g}: D still set`);
    }
    const some = all.filter((g) => g % 3 === 0 || (g >= 600 && g < 700));
    const v = writePages(vm, some, 2);
    v.exitGuest?.();
    const bm = vm.getDirtyLog(0);
    assert.deepEqual(reported(bm), some);
    writePages(vm, [5, 6], 3);
    assert.deepEqual(reported(vm.getDirtyLog(0)), [5, 6]);
    assert.deepEqual(reported(vm.getDirtyLog(0)), []);
    setLogging(vm, false);
  });
}

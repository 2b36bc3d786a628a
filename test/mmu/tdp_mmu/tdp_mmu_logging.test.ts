/** The TDP MMU end to end in one thread: faults map, logging reports exactly the written pages. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm } from "../../../src/vm.js";
import { CTL, SLOT, SP } from "../../../src/kvm_host.js";
import { audit } from "../../../src/verify/audit.js";
import { KvmError } from "../../../src/errors.js";
import { is_writable_pte, SPTE_DIRTY } from "../../../src/mmu/spte.js";
import { leaves, makeTdpVm, NPAGES, reported, setLogging, writePages } from "./helpers.js";
import { vmKvm } from "../../../src/vm/internal.js";

test("tdp-mmu refuses shadow paging with a typed error naming the reason", () => {
  assert.throws(
    () => Vm.create({ memory: 16 << 20, wp: "tdp-mmu", mode: "shadow" }),
    (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /shadow paging/.test(e.message),
  );
});

for (const pml of [false, true]) {
  test(`tdp-mmu ${pml ? "PML" : "write-protect"} logging: GET reports exactly the written pages`, () => {
    const vm = makeTdpVm({ pml, eager: false });
    const kvm = vmKvm(vm);
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
    assert.deepEqual(audit(kvm), []);
    writePages(vm, [5, 6], 3);
    assert.deepEqual(reported(vm.getDirtyLog(0)), [5, 6]);
    assert.deepEqual(reported(vm.getDirtyLog(0)), []);
    assert.deepEqual(audit(kvm), []);
    setLogging(vm, false);
    assert.deepEqual(audit(kvm), []);
  });
}

test("TDP MMU audit: catches a frozen spte, a freed table still linked, a wrong frame, a lost dirty bit", () => {
  const vm = makeTdpVm({ thp: false, pml: false });
  const kvm = vmKvm(vm);
  writePages(vm, [0, 1], 1);
  setLogging(vm, true);
  writePages(vm, [1], 2);
  assert.deepEqual(audit(kvm), []);
  const [[, [s1]]] = [...leaves(kvm).entries()].filter(([g]) => g === 1);
  const root = kvm.ctl[CTL.root];
  let sp = root;
  for (let l = 4; l > 1; l--) sp = kvm.spt[sp * 512] >>> 8;
  const p1 = sp * 512 + 1;
  kvm.spt[p1] = 0x5a0;
  assert.match(audit(kvm).join("\n"), /frozen/);
  kvm.spt[p1] = s1 + (1 << 8);
  assert.match(audit(kvm).join("\n"), /backing is frame/);
  kvm.spt[p1] = s1;
  kvm.bitmapPool[kvm.slots[SLOT.bitmap_base(0)]] = 0;
  assert.match(audit(kvm).join("\n"), /writable, dirty bit clear/);
  kvm.spHdr[SP.next(sp)] = kvm.ctl[CTL.sp_free];
  kvm.ctl[CTL.sp_free] = sp + 1;
  assert.match(audit(kvm).join("\n"), /on a free or pending list/);
});

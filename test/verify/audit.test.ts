import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm, WpName } from "../../src/vm.js";
import { audit } from "../../src/verify/audit.js";
import { CTL, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, VCPU } from "../../src/kvm_host.js";
import {
  is_shadow_present_pte,
  is_last_spte,
  PT64_ENT_PER_PAGE,
  PT_WRITABLE_MASK,
  spte_to_child_sp,
} from "../../src/mmu/spte.js";
import { vmKvm } from "../../src/vm/internal.js";

async function runAndQuiesce(wp: WpName): Promise<Vm> {
  const vm = Vm.create({ memory: 40 << 20, wp, maxVcpus: 2 });
  const bytes = 16 << 20;
  const hva = vm.mmap(bytes);
  const region = { slot: 0, flags: 0, guestPhysAddr: 1 << 30, memorySize: bytes, userspaceAddr: hva };
  vm.setUserMemoryRegion(region);
  const pages = bytes / PAGE_SIZE / 2;
  vm.createVcpu(0);
  vm.createVcpu(1);
  await vm.run((id) => ({
    kind: "memstress",
    baseGfn: (1 << 18) + id * pages,
    pages,
    writePercent: 70,
    random: true,
    seed: 3,
  }));
  const passes = (): number[] => [0, 1].map((i) => Atomics.load(vmKvm(vm).vcpu, VCPU.passes(i)));
  while (Math.min(...passes()) < 1) await new Promise((r) => setTimeout(r, 2));
  vm.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES });
  await vm.startHostThread({ migrateRate: 500, invalidateRate: 100 });
  for (let i = 0; i < 4; i++) {
    const p = passes();
    while (passes().some((x, k) => x < p[k] + 1)) await new Promise((r) => setTimeout(r, 2));
    vm.getDirtyLog(0);
  }
  await vm.pause();
  await vm.pauseHostThread();
  vm.throwIfFailed();
  return vm;
}

for (const wp of ["locked", "lockless"] as const) {
  test(`audit is clean after a logged run with notifier churn (${wp})`, async () => {
    const vm = await runAndQuiesce(wp);
    try {
      assert.deepEqual(audit(vmKvm(vm)), []);
    } finally {
      await vm.stop();
    }
  });
}

test("audit reports a writable spte whose dirty bit is clear", async () => {
  const vm = await runAndQuiesce("lockless");
  try {
    vm.getDirtyLog(0); // every spte is now write-protected and every bit clear
    assert.deepEqual(audit(vmKvm(vm)), []);
    // Find a present 4 KiB leaf (depth-first: some leaf tables may be empty after invalidations)
    // and make it writable behind the dirty log's back.
    const kvm = vmKvm(vm);
    const find = (sp: number, level: number): number => {
      for (let i = 0; i < PT64_ENT_PER_PAGE; i++) {
        const s = kvm.spt[sp * PT64_ENT_PER_PAGE + i];
        if (!is_shadow_present_pte(s)) continue;
        if (level === 1) return sp * PT64_ENT_PER_PAGE + i;
        if (is_last_spte(s, level)) continue;
        const r = find(spte_to_child_sp(s), level - 1);
        if (r >= 0) return r;
      }
      return -1;
    };
    const leaf = find(kvm.ctl[CTL.root], 4);
    assert.ok(leaf >= 0, "a present 4 KiB leaf exists");
    kvm.spt[leaf] |= PT_WRITABLE_MASK;
    const bad = audit(kvm);
    assert.ok(
      bad.some((m) => m.includes("dirty bit clear")),
      bad.join("\n"),
    );
  } finally {
    await vm.stop();
  }
});

test("TLB audit: clean after a quiesced logged run; stale writable entries found when W is cleared without a flush", async () => {
  const vm = await runAndQuiesce("lockless");
  try {
    // Run once more with the host thread parked, so that no flush request is left pending for the
    // parked vCPUs (a pending request would legitimately empty the TLB before its next use).
    const passes = (): number[] => [0, 1].map((i) => Atomics.load(vmKvm(vm).vcpu, VCPU.passes(i)));
    const p0 = passes();
    vm.resume();
    while (passes().some((x, k) => x < p0[k] + 1)) await new Promise((r) => setTimeout(r, 2));
    await vm.pause();
    const clean = await vm.auditTlbs();
    assert.equal(clean.size, 2);
    for (const [id, bad] of clean) assert.equal(bad, 0, `vcpu ${id}`);
    // Both vCPUs were writing: their TLBs hold writable entries. Clear W on every leaf behind
    // their back (a write-protect without the flush) and the audit must see stale entries.
    const kvm = vmKvm(vm);
    for (let i = 0; i < kvm.spt.length; i++) {
      const s = kvm.spt[i];
      if (is_shadow_present_pte(s) && (s & 0x40) !== 0) kvm.spt[i] = s & ~PT_WRITABLE_MASK; // HOST_W: a leaf
    }
    const stale = await vm.auditTlbs();
    const total = [...stale.values()].reduce((a, b) => a + b, 0);
    assert.ok(total > 0, "stale writable TLB entries are reported");
  } finally {
    await vm.stop();
  }
});

test("TLB audit refuses running vCPUs", async () => {
  const vm = Vm.create({ memory: 8 << 20, wp: "lockless", maxVcpus: 1 });
  const hva = vm.mmap(4 << 20);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 4 << 20, userspaceAddr: hva });
  vm.createVcpu(0);
  await vm.run(() => ({
    kind: "memstress",
    baseGfn: 0,
    pages: 1024,
    writePercent: 100,
    random: false,
    seed: 1,
  }));
  try {
    await assert.rejects(vm.auditTlbs(), /EBUSY/);
  } finally {
    await vm.stop();
  }
});

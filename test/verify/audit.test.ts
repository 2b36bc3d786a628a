import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm, WpName } from "../../src/vm.js";
import { audit } from "../../src/verify/audit.js";
import {
  KVM_MEM_LOG_DIRTY_PAGES,
  PAGE_SIZE,
  VCPU_PASSES,
  VCPU_STRIDE,
  CTL_ROOT,
} from "../../src/kvm_host.js";
import {
  is_shadow_present_pte,
  is_last_spte,
  PT64_ENT_PER_PAGE,
  PT_WRITABLE_MASK,
  spte_to_child_sp,
} from "../../src/mmu/spte.js";

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
  const passes = (): number[] => [0, 1].map((i) => Atomics.load(vm.kvm.vcpu, i * VCPU_STRIDE + VCPU_PASSES));
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
      assert.deepEqual(audit(vm.kvm), []);
    } finally {
      await vm.stop();
    }
  });
}

test("audit reports a writable spte whose dirty bit is clear", async () => {
  const vm = await runAndQuiesce("lockless");
  try {
    vm.getDirtyLog(0); // every spte is now write-protected and every bit clear
    assert.deepEqual(audit(vm.kvm), []);
    // Find a present 4 KiB leaf (depth-first: some leaf tables may be empty after invalidations)
    // and make it writable behind the dirty log's back.
    const kvm = vm.kvm;
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
    const leaf = find(kvm.ctl[CTL_ROOT], 4);
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

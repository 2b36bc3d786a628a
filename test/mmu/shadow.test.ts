/**
 * Shadow paging and guest paging, driven from this thread: a Vcpu object runs "guest code"
 * (the test body) against a VM in shadow or TDP mode, with no worker.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm, MmuModeName } from "../../src/vm.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { audit } from "../../src/verify/audit.js";
import { PAGE_SIZE, ROLE_DIRECT, ROLE_INVALID, ROLE_LEVEL_MASK, SCTL, SP, VCPU } from "../../src/kvm_host.js";
import { active_mmu_pages, for_each_gfn_sp, make_role, role_access } from "../../src/mmu/mmu_page_hash.js";
import { kvm_mmu_get_shadow_page, shadow_prepare_zap_page } from "../../src/mmu/shadow_page.js";
import { kvm_mmu_commit_zap_page } from "../../src/mmu/mmu_page.js";
import {
  ACC_ALL,
  ACC_EXEC_MASK,
  ACC_USER_MASK,
  GPTE_A,
  GPTE_D,
  GuestPageFault,
  gpt_index,
  gpte_gfn,
  make_gpte_hi,
  make_gpte_lo,
} from "../../src/mmu/guest_pt.js";
import { GuestKernel, MAP_RO, MAP_RW } from "../../src/workload/guest_paging.js";
import { VcpuGuestContext } from "../../src/guest/context.js";
import { pte_list_count, pte_list_walk } from "../../src/mmu/rmap.js";
import { gfn_to_memslot, gfn_to_rmap } from "../../src/mem/memslot.js";
import {
  is_large_pte,
  is_shadow_present_pte,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  SPTE_MMU_WRITEABLE,
} from "../../src/mmu/spte.js";
import { vmKvm } from "../../src/vm/internal.js";

const KERNEL_GFN = 256; // kernel area: slot 1 at 1 MiB
const KERNEL_PAGES = 512;
const DATA_GFN = 1 << 18; // data: slot 0 at 1 GiB
const DATA_PAGES = 2048;
const USER_VPN = 1 << 27; // PML4 index 1

interface Rig {
  vm: Vm;
  vcpus: Vcpu[];
  kernels: GuestKernel[];
}

function rig(mode: MmuModeName, opts: { vcpus?: number; thp?: boolean; kernelLarge?: boolean } = {}): Rig {
  const n = opts.vcpus ?? 1;
  const vm = Vm.create({ memory: 32 << 20, wp: "lockless", mode, maxVcpus: 4 });
  const dhva = vm.mmap(DATA_PAGES * PAGE_SIZE, { thp: opts.thp ?? false });
  const khva = vm.mmap(KERNEL_PAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: DATA_GFN * PAGE_SIZE,
    memorySize: DATA_PAGES * PAGE_SIZE,
    userspaceAddr: dhva,
  });
  vm.setUserMemoryRegion({
    slot: 1,
    flags: 0,
    guestPhysAddr: KERNEL_GFN * PAGE_SIZE,
    memorySize: KERNEL_PAGES * PAGE_SIZE,
    userspaceAddr: khva,
  });
  const vcpus: Vcpu[] = [];
  const kernels: GuestKernel[] = [];
  const pool = KERNEL_PAGES / 4;
  for (let i = 0; i < n; i++) {
    vm.createVcpu(i);
    const v = new Vcpu(vmKvm(vm), i);
    v.enterGuest();
    vcpus.push(v);
    kernels.push(
      new GuestKernel(new VcpuGuestContext(v), {
        kernel: { baseGfn: KERNEL_GFN, pages: KERNEL_PAGES, large: opts.kernelLarge ?? false },
        poolGfn: KERNEL_GFN + i * pool,
        poolPages: pool,
      }),
    );
  }
  return { vm, vcpus, kernels };
}

/** Guest memory as the host sees it (not through any translation). */
function hostWord(vm: Vm, gfn: number, w: number): number {
  const [lo, hi] = vm.readGuestU64(gfn * PAGE_SIZE + (w & ~1) * 4);
  return (w & 1) === 0 ? lo : hi;
}

/** The gpte for vpn at `level` as guest memory holds it. */
function gpteOf(vm: Vm, cr3: number, vpn: number, level: number): number {
  let table = cr3;
  for (let l = 4; l > level; l--) {
    const i = gpt_index(vpn, l);
    table = gpte_gfn(hostWord(vm, table, 2 * i), hostWord(vm, table, 2 * i + 1));
  }
  return hostWord(vm, table, 2 * gpt_index(vpn, level));
}

function spsOf(vm: Vm, gfn: number): number[] {
  const out: number[] = [];
  for_each_gfn_sp(vmKvm(vm), gfn, (sp) => {
    if ((vmKvm(vm).spHdr[SP.role(sp)] & ROLE_INVALID) === 0) out.push(sp);
  });
  return out;
}

for (const mode of ["shadow", "tdp"] as const) {
  test(`guest paging (${mode}): translation through guest tables, A/D bits, guest page faults`, () => {
    const { vm, vcpus, kernels } = rig(mode);
    const [v] = vcpus;
    const k = kernels[0];
    const pml4 = k.newAddressSpace();
    // Non-identity: vpn USER_VPN + i -> gfn DATA_GFN + 7 * i.
    for (let i = 0; i < 8; i++) k.map(pml4, USER_VPN + i, DATA_GFN + 7 * i, MAP_RW);
    k.map(pml4, USER_VPN + 100, DATA_GFN + 900, MAP_RO);
    v.loadCr3(pml4);
    assert.equal(v.cr3, pml4);
    for (let i = 0; i < 8; i++) v.write64(USER_VPN + i, 4, 1000 + i, -i | 0);
    for (let i = 0; i < 8; i++) {
      assert.equal(hostWord(vm, DATA_GFN + 7 * i, 4), 1000 + i, `gva page ${i} lands in gfn +${7 * i}`);
      assert.equal(hostWord(vm, DATA_GFN + 7 * i, 5), -i | 0);
      assert.equal(v.read32(USER_VPN + i, 4), 1000 + i);
    }
    // A on every level, D on the written leaf only.
    for (let level = 4; level >= 1; level--)
      assert.ok((gpteOf(vm, pml4, USER_VPN, level) & GPTE_A) !== 0, `A at level ${level}`);
    assert.ok((gpteOf(vm, pml4, USER_VPN, 1) & GPTE_D) !== 0, "D on the written leaf");
    assert.equal(v.read32(USER_VPN + 100, 0), 0);
    const ro = gpteOf(vm, pml4, USER_VPN + 100, 1);
    assert.ok((ro & GPTE_A) !== 0 && (ro & GPTE_D) === 0, "a read sets A, not D");
    // A write to a read-only mapping and an access to an unmapped page are guest page faults.
    assert.throws(
      () => v.write64(USER_VPN + 100, 0, 1, 1),
      (e: unknown) => e instanceof GuestPageFault && e.present && e.write,
    );
    assert.throws(
      () => v.read32(USER_VPN + 5000, 0),
      (e: unknown) => e instanceof GuestPageFault && !e.present,
    );
    // Unmap + INVLPG, remap elsewhere: the new translation is used.
    assert.equal(k.unmap(pml4, USER_VPN + 3), DATA_GFN + 21);
    assert.throws(() => v.read32(USER_VPN + 3, 4), GuestPageFault);
    k.map(pml4, USER_VPN + 3, DATA_GFN + 500, MAP_RW);
    v.write64(USER_VPN + 3, 0, 77, 0);
    assert.equal(hostWord(vm, DATA_GFN + 500, 0), 77);
    assert.equal(hostWord(vm, DATA_GFN + 21, 4), 1003, "the old page keeps its data");
    assert.deepEqual(audit(vmKvm(vm)), []);
  });

  test(`guest paging (${mode}): 2 MiB guest pages`, () => {
    const { vm, vcpus, kernels } = rig(mode, { thp: true });
    const [v] = vcpus;
    const k = kernels[0];
    const pml4 = k.newAddressSpace();
    k.mapRange(pml4, USER_VPN, DATA_GFN, 1024, MAP_RW, true);
    v.loadCr3(pml4);
    for (const p of [0, 1, 511, 512, 700, 1023]) v.write64(USER_VPN + p, 2, p, 0);
    for (const p of [0, 1, 511, 512, 700, 1023]) assert.equal(hostWord(vm, DATA_GFN + p, 2), p);
    assert.ok((gpteOf(vm, pml4, USER_VPN, 2) & GPTE_D) !== 0, "D on the 2 MiB gpte");
    if (mode === "shadow") {
      // Host THP, no logging, no guest table inside: 2 MiB sptes (level-2 rmap of the first gfn).
      const slot = gfn_to_memslot(vmKvm(vm), DATA_GFN);
      assert.equal(
        pte_list_count(vmKvm(vm), vmKvm(vm).rmapPool, gfn_to_rmap(vmKvm(vm), slot, DATA_GFN, 2)),
        1,
      );
      assert.equal(
        pte_list_count(vmKvm(vm), vmKvm(vm).rmapPool, gfn_to_rmap(vmKvm(vm), slot, DATA_GFN + 512, 2)),
        1,
      );
    }
    assert.deepEqual(audit(vmKvm(vm)), []);
  });
}

test("shadow: pages by (gfn, role) in the hash; one root per address space; shared tables have several parents", () => {
  const { vm, vcpus, kernels } = rig("shadow", { vcpus: 2 });
  const kvm = vmKvm(vm);
  const k = kernels[0];
  const as1 = k.newAddressSpace();
  const as2 = k.newAddressSpace();
  k.map(as1, USER_VPN, DATA_GFN, MAP_RW);
  k.map(as2, USER_VPN, DATA_GFN + 1, MAP_RW);
  // One thread plays both vCPUs: the one not running stays outside guest mode, so a flush by the
  // other does not wait for it.
  const on = (i: number, fn: () => void): void => {
    vcpus[i].enterGuest();
    try {
      fn();
    } finally {
      vcpus[i].exitGuest();
    }
  };
  vcpus[0].exitGuest();
  vcpus[1].exitGuest();
  on(0, () => vcpus[0].loadCr3(as1));
  on(1, () => vcpus[1].loadCr3(as1));
  const root1 = kvm.vcpu[VCPU.root(0)];
  assert.equal(kvm.vcpu[VCPU.root(1)], root1, "two vCPUs on one address space share the root");
  assert.equal(kvm.spHdr[SP.root_count(root1)], 2);
  assert.equal(kvm.spHdr[SP.gfn(root1)], as1);
  assert.equal(kvm.spHdr[SP.role(root1)] & (ROLE_LEVEL_MASK | ROLE_DIRECT), 4, "an indirect level-4 page");
  on(1, () => vcpus[1].loadCr3(as2));
  const root2 = kvm.vcpu[VCPU.root(1)];
  assert.notEqual(root2, root1);
  assert.equal(kvm.spHdr[SP.root_count(root1)], 1);
  // Touch the kernel area and user pages from both address spaces.
  on(0, () => vcpus[0].read32(KERNEL_GFN, 0));
  on(1, () => vcpus[1].read32(KERNEL_GFN, 0));
  on(0, () => vcpus[0].write64(USER_VPN, 0, 1, 0));
  on(1, () => vcpus[1].write64(USER_VPN, 0, 2, 0));
  assert.equal(hostWord(vm, DATA_GFN, 0), 1);
  assert.equal(hostWord(vm, DATA_GFN + 1, 0), 2);
  // The kernel area's PDPT is one guest table referenced from both PML4s.
  const kpdpt = gpte_gfn(hostWord(vm, as1, 0), hostWord(vm, as1, 1));
  assert.equal(gpte_gfn(hostWord(vm, as2, 0), hostWord(vm, as2, 1)), kpdpt);
  const sps = spsOf(vm, kpdpt);
  assert.equal(sps.length, 1, "one shadow page for the shared PDPT");
  assert.equal(pte_list_count(kvm, kvm.spHdr, SP.parent_ptes(sps[0])), 2, "linked from both roots");
  // Lookup: same (gfn, role) -> same page; another role -> another page.
  kvm.mmu_lock.lock();
  try {
    const role = kvm.spHdr[SP.role(sps[0])];
    const access = role_access(role);
    assert.equal(kvm_mmu_get_shadow_page(kvm, kpdpt, 3, false, access), sps[0]);
    const other = kvm_mmu_get_shadow_page(kvm, kpdpt, 3, false, ACC_EXEC_MASK | ACC_USER_MASK);
    assert.notEqual(other, sps[0]);
    assert.equal(kvm.spHdr[SP.role(other)], make_role(3, false, ACC_EXEC_MASK | ACC_USER_MASK));
    assert.equal(spsOf(vm, kpdpt).length, 2);
    assert.notEqual(make_role(3, false, ACC_ALL), make_role(3, true, ACC_ALL));
  } finally {
    kvm.mmu_lock.unlock();
  }
  assert.ok(active_mmu_pages(kvm).includes(root1));
  assert.equal(
    kvm.sctl[SCTL.indirect_shadow_pages],
    active_mmu_pages(kvm).filter((sp) => (kvm.spHdr[SP.role(sp)] & ROLE_DIRECT) === 0).length,
  );
  assert.deepEqual(audit(kvm), []);
});

test("shadow: guest tables are write-protected; guest writes to them are emulated and keep the shadow consistent", () => {
  const { vm, vcpus, kernels } = rig("shadow");
  const kvm = vmKvm(vm);
  const [v] = vcpus;
  const k = kernels[0];
  const pml4 = k.newAddressSpace();
  for (let i = 0; i < 4; i++) k.map(pml4, USER_VPN + i, DATA_GFN + i, MAP_RW);
  v.loadCr3(pml4);
  for (let i = 0; i < 4; i++) v.write64(USER_VPN + i, 0, 10 + i, 0);
  const pt = gpte_gfn(gpteOf(vm, pml4, USER_VPN, 2), 0);
  assert.equal(spsOf(vm, pt).length, 1, "the guest PT is shadowed");
  // No spte maps the guest PT writable, nor with MMU_W (pt_protect).
  v.read32(pt, 0); // the kernel's identity mapping of the table
  const slot = gfn_to_memslot(kvm, pt);
  let mapped = 0;
  for (let level = 1; level <= 3; level++)
    for (const e of rmapEntries(vm, gfn_to_rmap(kvm, slot, pt, level))) {
      mapped++;
      assert.equal(kvm.spt[e] & (PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE), 0);
      assert.ok(!is_large_pte(kvm.spt[e]));
    }
  assert.ok(mapped >= 1);
  // Retarget gva page 2 by writing its PTE (a guest store to the protected table): emulated.
  const e0 = kvm.sctl[SCTL.emulated];
  k.map(pml4, USER_VPN + 2, DATA_GFN + 300, MAP_RW);
  assert.ok(kvm.sctl[SCTL.emulated] > e0, "the PTE store was emulated");
  assert.ok(kvm.sctl[SCTL.pte_prefetch] > 0, "and the spte was re-created from the new gpte (update_pte)");
  assert.equal(gpte_gfn(gpteOf(vm, pml4, USER_VPN + 2, 1), 0), DATA_GFN + 300, "and reached guest memory");
  v.invlpg(USER_VPN + 2);
  assert.equal(v.read32(USER_VPN + 2, 0), 0, "the new page, not the old one");
  v.write64(USER_VPN + 2, 0, 99, 0);
  assert.equal(hostWord(vm, DATA_GFN + 300, 0), 99);
  assert.equal(hostWord(vm, DATA_GFN + 2, 0), 12);
  assert.deepEqual(audit(kvm), []);
  // Flooding: stores to the table with no fault walking through it zap its shadow page; the
  // table is then an ordinary writable page again.
  const f0 = kvm.sctl[SCTL.flooded];
  for (let i = 10; i < 20; i++) k.writePte(pt, i, 0, 0);
  assert.ok(kvm.sctl[SCTL.flooded] > f0);
  assert.equal(spsOf(vm, pt).length, 0, "no shadow page for the flooded table");
  const e1 = kvm.sctl[SCTL.emulated];
  for (let i = 20; i < 30; i++) k.writePte(pt, i, 0, 0);
  assert.equal(kvm.sctl[SCTL.emulated], e1, "writes to an unshadowed table are not emulated");
  // Using the mapping again shadows (and protects) the table again.
  assert.equal(v.read32(USER_VPN + 1, 0), 11);
  assert.equal(spsOf(vm, pt).length, 1);
  assert.deepEqual(audit(kvm), []);
});

test("shadow: a 2 MiB guest page maps with 4 KiB sptes where a guest table lives in it", () => {
  const { vm, vcpus, kernels } = rig("shadow", { thp: true });
  const kvm = vmKvm(vm);
  const [v] = vcpus;
  const k = kernels[0];
  const pml4 = k.newAddressSpace();
  k.mapRange(pml4, USER_VPN, DATA_GFN, 1024, MAP_RW, true);
  // A guest table placed inside the second 2 MiB page of data, referenced by a PD entry.
  const tableGfn = DATA_GFN + 512 + 17;
  k.map(pml4, USER_VPN + 4096, DATA_GFN + 3, MAP_RW); // builds the PD for that range
  const pd = gpte_gfn(gpteOf(vm, pml4, USER_VPN + 4096, 3), 0);
  v.write64(tableGfn, 0, make_gpte_lo(DATA_GFN + 3, MAP_RW), make_gpte_hi(DATA_GFN + 3)); // paging off: gfn
  k.writePte(pd, gpt_index(USER_VPN + 4096, 2), make_gpte_lo(tableGfn, MAP_RW), make_gpte_hi(tableGfn));
  v.loadCr3(pml4);
  v.write64(USER_VPN + 4096, 0, 4, 0);
  assert.equal(hostWord(vm, DATA_GFN + 3, 0), 4);
  assert.equal(spsOf(vm, tableGfn).length, 1, "the table inside the 2 MiB page is shadowed");
  v.write64(USER_VPN + 512, 0, 5, 0);
  v.write64(USER_VPN, 0, 6, 0);
  const slot = gfn_to_memslot(kvm, DATA_GFN);
  assert.equal(
    pte_list_count(kvm, kvm.rmapPool, gfn_to_rmap(kvm, slot, DATA_GFN + 512, 2)),
    0,
    "no large spte over the guest table",
  );
  assert.equal(
    pte_list_count(kvm, kvm.rmapPool, gfn_to_rmap(kvm, slot, DATA_GFN, 2)),
    1,
    "the other 2 MiB page is large",
  );
  // Writing guest memory in that 2 MiB page through its mapping is emulated only for the table.
  const e0 = kvm.sctl[SCTL.emulated];
  v.write64(USER_VPN + 513, 0, 7, 0);
  assert.equal(kvm.sctl[SCTL.emulated], e0);
  v.write64(USER_VPN + 512 + 17, 100, 8, 0);
  assert.equal(kvm.sctl[SCTL.emulated], e0 + 1);
  assert.equal(hostWord(vm, tableGfn, 100), 8);
  assert.deepEqual(audit(kvm), []);
});

function rmapEntries(vm: Vm, hi: number): number[] {
  const out: number[] = [];
  pte_list_walk(vmKvm(vm), vmKvm(vm).rmapPool, hi, (s) => out.push(s));
  return out;
}

test("shadow: a zapped root in use is reloaded at the vCPU's next fault", () => {
  const { vm, vcpus, kernels } = rig("shadow");
  const kvm = vmKvm(vm);
  const [v] = vcpus;
  const k = kernels[0];
  const pml4 = k.newAddressSpace();
  k.map(pml4, USER_VPN, DATA_GFN, MAP_RW);
  v.loadCr3(pml4);
  v.write64(USER_VPN, 0, 1, 0);
  const root = kvm.vcpu[VCPU.root(0)];
  // Zap the root (as recycling does): it stays, invalid, while the vCPU holds it.
  v.exitGuest();
  kvm.mmu_lock.lock();
  const invalid: number[] = [];
  assert.equal(shadow_prepare_zap_page(kvm, root, invalid), false, "a root in use is not freed");
  kvm_mmu_commit_zap_page(kvm, invalid);
  kvm.mmu_lock.unlock();
  v.enterGuest();
  assert.ok(active_mmu_pages(kvm).includes(root));
  assert.deepEqual(audit(kvm), []);
  assert.ok((kvm.spHdr[SP.role(root)] & ROLE_INVALID) !== 0);
  assert.ok(
    kvm.spt
      .subarray(root * PT64_ENT_PER_PAGE, (root + 1) * PT64_ENT_PER_PAGE)
      .every((s) => !is_shadow_present_pte(s)),
  );
  v.invlpg(USER_VPN);
  assert.equal(v.read32(USER_VPN, 0), 1);
  const root2 = kvm.vcpu[VCPU.root(0)];
  assert.equal(kvm.sctl[SCTL.reloads], 1, "the vCPU reloaded its root");
  assert.equal(kvm.spHdr[SP.role(root2)] & ROLE_INVALID, 0);
  assert.equal(kvm.spHdr[SP.root_count(root2)], 1);
  assert.equal(kvm.spHdr[SP.gfn(root2)], pml4);
  assert.deepEqual(audit(kvm), []);
});

for (const [wp, maxSp] of [
  ["locked", undefined],
  ["lockless", undefined],
  ["locked", 80],
  ["lockless", 80],
] as const) {
  const what = maxSp ? `, ${maxSp} shadow pages: pages and roots recycled` : "";
  test(`shadow: audit is clean after a logged memstress run with notifier churn (${wp}${what})`, async () => {
    const vcpus = 2;
    const pages = 4096;
    const pool = 64;
    const vm = Vm.create({ memory: 64 << 20, wp, mode: "shadow", maxVcpus: vcpus, maxSp });
    const hva = vm.mmap(vcpus * pages * PAGE_SIZE);
    const khva = vm.mmap(vcpus * pool * PAGE_SIZE);
    const region = {
      slot: 0,
      flags: 0,
      guestPhysAddr: DATA_GFN * PAGE_SIZE,
      memorySize: vcpus * pages * PAGE_SIZE,
      userspaceAddr: hva,
    };
    vm.setUserMemoryRegion(region);
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: KERNEL_GFN * PAGE_SIZE,
      memorySize: vcpus * pool * PAGE_SIZE,
      userspaceAddr: khva,
    });
    for (let i = 0; i < vcpus; i++) vm.createVcpu(i);
    const kernel = { baseGfn: KERNEL_GFN, pages: vcpus * pool };
    try {
      await vm.run((id) => ({
        kind: "memstress",
        baseGfn: DATA_GFN + id * pages,
        pages,
        writePercent: 70,
        random: true,
        seed: 3,
        paging: {
          kernel,
          poolGfn: KERNEL_GFN + id * pool,
          poolPages: pool,
          vpn: USER_VPN + id * pages,
          large: id === 1,
        },
      }));
      const passes = (): number[] => [0, 1].map((i) => Atomics.load(vmKvm(vm).vcpu, VCPU.passes(i)));
      const waitPass = async (): Promise<void> => {
        const p = passes();
        while (passes().some((x, k) => x < p[k] + 1)) {
          vm.throwIfFailed();
          await new Promise((r) => setTimeout(r, 2));
        }
      };
      await waitPass();
      vm.setUserMemoryRegion({ ...region, flags: 1 });
      await vm.startHostThread({ migrateRate: 500, invalidateRate: 100 });
      for (let i = 0; i < 4; i++) {
        await waitPass();
        vm.getDirtyLog(0);
      }
      await vm.pause();
      await vm.pauseHostThread();
      vm.throwIfFailed();
      assert.deepEqual(audit(vmKvm(vm)), []);
      if (maxSp)
        assert.ok(
          vmKvm(vm).sctl[SCTL.recycled] > 0 && vmKvm(vm).sctl[SCTL.reloads] > 0,
          "pages were recycled",
        );
    } finally {
      await vm.stop();
    }
  });
}

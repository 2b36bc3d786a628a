/**
 * KVM_SET_USER_MEMORY_REGION below the ioctl (src/mem/set_memslot.ts): what each change does to
 * the slot table and the pools, and which MMU hooks it calls (KvmArchMemslotOps), in what lock.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL, Kvm, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, SLOT } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import { host_mmap } from "../../src/mem/host_memory.js";
import { __kvm_set_memory_region, KvmArchMemslotOps, MemoryRegion } from "../../src/mem/set_memslot.js";
import { makeKvm } from "../helpers/kvm.js";

/** Hooks that record their calls and whether mmu_lock was held at each. */
function recorder(): { ops: KvmArchMemslotOps; calls: string[] } {
  const calls: string[] = [];
  const ops: KvmArchMemslotOps = {
    flush_shadow_memslot: (kvm: Kvm, slot: number) =>
      calls.push(`flush ${slot} locked=${kvm.mmu_lock.isLocked()}`),
    slot_apply_flags: (kvm: Kvm, slot: number, log: boolean) => {
      calls.push(`flags ${slot} ${log}`);
      const f = kvm.slots[SLOT.flags(slot)];
      kvm.slots[SLOT.flags(slot)] = log ? f | KVM_MEM_LOG_DIRTY_PAGES : f & ~KVM_MEM_LOG_DIRTY_PAGES;
    },
  };
  return { ops, calls };
}

const idle = (): void => {};

function region(kvm: Kvm, pages: number, flags = 0): MemoryRegion {
  const hva = host_mmap(kvm, pages, false) * PAGE_SIZE;
  return { slot: 0, flags, guestPhysAddr: 0, memorySize: pages * PAGE_SIZE, userspaceAddr: hva };
}

test("set_memslot: create takes the pools and applies the flags; flags-only and delete call the MMU's hooks", () => {
  const kvm = makeKvm();
  const { ops, calls } = recorder();
  const m = region(kvm, 64, KVM_MEM_LOG_DIRTY_PAGES);
  __kvm_set_memory_region(kvm, m, ops, idle);
  assert.equal(kvm.slots[SLOT.active(0)], 1);
  assert.equal(kvm.slots[SLOT.npages(0)], 64);
  // 64 rmap heads at 4K, one each at 2M and 1G; two bitmaps of 2 words.
  assert.equal(kvm.ctl[CTL.rmap_pool_next], 66);
  assert.equal(kvm.ctl[CTL.bitmap_pool_next], 4);
  // lpage_info: one write_count at 2M, one at 1G; the next slot's start past both.
  assert.equal(kvm.ctl[CTL.lpage_pool_next], 2);
  __kvm_set_memory_region(kvm, { ...m, flags: 0 }, ops, idle);
  __kvm_set_memory_region(kvm, { ...m, memorySize: 0 }, ops, idle);
  assert.equal(kvm.slots[SLOT.active(0)], 0);
  assert.equal(kvm.mmu_lock.isLocked(), false);
  assert.deepEqual(calls, ["flags 0 true", "flags 0 false", "flush 0 locked=true"]);
});

test("set_memslot: a refused change calls no hook and leaves the pools as they were", () => {
  const kvm = makeKvm({ maxSlotPages: 32 });
  const { ops, calls } = recorder();
  const before = [kvm.ctl[CTL.rmap_pool_next], kvm.ctl[CTL.bitmap_pool_next], kvm.ctl[CTL.lpage_pool_next]];
  assert.throws(
    () => __kvm_set_memory_region(kvm, region(kvm, 512), ops, idle),
    (e: unknown) => e instanceof KvmError && e.code === "ENOMEM" && /memorySize/.test(e.message),
  );
  const busy = (arg: string): void => {
    throw new KvmError("EBUSY", `${arg}: busy`);
  };
  assert.throws(
    () => __kvm_set_memory_region(kvm, region(kvm, 16), ops, busy),
    (e: unknown) => e instanceof KvmError && e.code === "EBUSY" && /slot/.test(e.message),
  );
  assert.deepEqual(
    [kvm.ctl[CTL.rmap_pool_next], kvm.ctl[CTL.bitmap_pool_next], kvm.ctl[CTL.lpage_pool_next]],
    before,
  );
  assert.equal(kvm.slots[SLOT.active(0)], 0);
  assert.deepEqual(calls, []);
});

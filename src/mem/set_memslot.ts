/**
 * KVM_SET_USER_MEMORY_REGION below the ioctl: __kvm_set_memory_region decides what the call
 * changes (create, delete, flags only) and kvm_set_memslot makes the change, as kvm_main.c.
 * Creation takes the slot's rmaps, dirty bitmaps and lpage_info from the pools
 * (kvm_prepare_memory_region); deletion zaps the slot's mappings under mmu_lock
 * (kvm_delete_memslot). What the MMU does for a slot comes from above through
 * KvmArchMemslotOps (mem/ is below mmu/), as KVM's generic code calls kvm_arch_*.
 *
 * The caller holds slots_lock. Creation and deletion happen only while no vCPU runs (the
 * caller's `checkIdle`), so a vCPU never sees a slot half made.
 */
import {
  CTL,
  Kvm,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_MEM_READONLY,
  KVM_USER_MEM_SLOTS,
  PAGE_SIZE,
  SLOT,
  UFFD,
} from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { slot_level_pages } from "./memslot.js";
import { hva_to_pfn } from "./host_memory.js";

/** KVM_SET_USER_MEMORY_REGION's argument (struct kvm_userspace_memory_region), in bytes. */
export interface MemoryRegion {
  slot: number;
  flags: number;
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: number;
}

/** What the MMU does for a memslot change (kvm_arch_flush_shadow_memslot and friends). */
export interface KvmArchMemslotOps {
  /** kvm_arch_flush_shadow_memslot: drop every mapping of `slot` and flush. mmu_lock held. */
  flush_shadow_memslot(kvm: Kvm, slot: number): void;
  /** kvm_arch_commit_memory_region's kvm_mmu_slot_apply_flags: dirty logging on or off. */
  slot_apply_flags(kvm: Kvm, slot: number, log: boolean): void;
}

/** Where a new slot's metadata goes in the pools (kvm_arch_prepare_memory_region's allocation). */
interface SlotAlloc {
  l2: number;
  l3: number;
  rmapWords: number;
  bitmapWords: number;
  rNext: number;
  bNext: number;
  lpBase: number;
}

/**
 * __kvm_set_memory_region: checks the region against the existing slots and dispatches to
 * kvm_set_memslot. The fields are integers, page-aligned and in range (the ioctl checked).
 * `checkIdle(arg)` throws EBUSY naming `arg` while vCPUs run. slots_lock held.
 */
export function __kvm_set_memory_region(
  kvm: Kvm,
  m: MemoryRegion,
  arch: KvmArchMemslotOps,
  checkIdle: (arg: string) => void,
): void {
  const slot = m.slot;
  const s = kvm.slots;
  const npages = m.memorySize / PAGE_SIZE;
  const baseGfn = m.guestPhysAddr / PAGE_SIZE;
  const hvaPage = m.userspaceAddr / PAGE_SIZE;
  const active = s[SLOT.active(slot)] !== 0;
  if (npages === 0) {
    if (!active) throw einval("memorySize", `0 deletes a slot, but slot ${m.slot} does not exist`);
    checkIdle("memorySize");
    kvm_delete_memslot(kvm, slot, arch);
    return;
  }
  if (active) {
    if (
      s[SLOT.base_gfn(slot)] !== baseGfn ||
      s[SLOT.npages(slot)] !== npages ||
      s[SLOT.hva_page(slot)] !== hvaPage
    )
      throw einval("slot", `slot ${m.slot} exists: only its flags may change (delete it first)`);
    if (((s[SLOT.flags(slot)] ^ m.flags) & KVM_MEM_READONLY) !== 0)
      throw einval("flags", "KVM_MEM_READONLY cannot change");
    // KVM_MR_FLAGS_ONLY
    arch.slot_apply_flags(kvm, slot, (m.flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0);
    return;
  }
  if (baseGfn + npages >= 2 ** 31)
    throw einval("guestPhysAddr", "beyond the 43-bit guest-physical space this engine models");
  if (hvaPage + npages > kvm.ctl[CTL.hva_next] || !hva_mapped(kvm, hvaPage, npages))
    throw new KvmError(
      "EFAULT",
      `userspaceAddr: [0x${m.userspaceAddr.toString(16)}, +0x${m.memorySize.toString(16)}) is not mapped`,
    );
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (s[SLOT.active(id)] === 0) continue;
    const ob = s[SLOT.base_gfn(id)];
    if (baseGfn < ob + s[SLOT.npages(id)] && ob < baseGfn + npages)
      throw new KvmError(
        "EEXIST",
        `guestPhysAddr: [0x${m.guestPhysAddr.toString(16)}, +0x${m.memorySize.toString(16)}) overlaps slot ${id}`,
      );
  }
  checkIdle("slot");
  kvm_create_memslot(kvm, slot, baseGfn, npages, hvaPage, m.flags, arch);
}

/** Every page of [hvaPage, +npages) is backed (KVM would fault on first access; we refuse early). */
function hva_mapped(kvm: Kvm, hvaPage: number, npages: number): boolean {
  for (let p = hvaPage; p < hvaPage + npages; p++) if (hva_to_pfn(kvm, p) < 0) return false;
  return true;
}

/**
 * kvm_prepare_memory_region for a new slot: where its rmaps (4K, 2M, 1G), its two dirty
 * bitmaps and its lpage_info go in the pools. ENOMEM when they do not fit.
 */
export function kvm_prepare_memory_region(kvm: Kvm, baseGfn: number, npages: number): SlotAlloc {
  const l2 = slot_level_pages(baseGfn, npages, 2);
  const l3 = slot_level_pages(baseGfn, npages, 3);
  const rmapWords = npages + l2 + l3;
  const bitmapWords = Math.ceil(npages / 32);
  const rNext = kvm.ctl[CTL.rmap_pool_next];
  const bNext = kvm.ctl[CTL.bitmap_pool_next];
  const lpBase = kvm.ctl[CTL.lpage_pool_next];
  if (
    rNext + rmapWords > kvm.rmapPool.length ||
    bNext + 2 * bitmapWords > kvm.bitmapPool.length ||
    lpBase + l2 + l3 > kvm.lpagePool.length
  )
    throw new KvmError(
      "ENOMEM",
      `memorySize: ${npages} pages do not fit the memslot metadata (maxSlotPages)`,
    );
  return { l2, l3, rmapWords, bitmapWords, rNext, bNext, lpBase };
}

/** kvm_set_memslot(KVM_MR_CREATE): fills the slot's metadata, publishes it, then applies flags. */
export function kvm_create_memslot(
  kvm: Kvm,
  slot: number,
  baseGfn: number,
  npages: number,
  hvaPage: number,
  flags: number,
  arch: KvmArchMemslotOps,
): void {
  const { l2, l3, rmapWords, bitmapWords, rNext, bNext, lpBase } = kvm_prepare_memory_region(
    kvm,
    baseGfn,
    npages,
  );
  const s = kvm.slots;
  kvm.rmapPool.fill(0, rNext, rNext + rmapWords);
  kvm.bitmapPool.fill(0, bNext, bNext + 2 * bitmapWords);
  // lpage_info write_count: disallow large pages that the slot or its backing cannot hold.
  const lp = kvm.lpagePool;
  lp.fill(0, lpBase, lpBase + l2);
  lp.fill(1, lpBase + l2, lpBase + l2 + l3); // no 1 GiB host pages
  if (baseGfn % 512 !== 0) lp[lpBase] = 1;
  if ((baseGfn + npages) % 512 !== 0) lp[lpBase + l2 - 1] = 1;
  if ((baseGfn ^ hvaPage) % 512 !== 0) lp.fill(1, lpBase, lpBase + l2);
  s[SLOT.base_gfn(slot)] = baseGfn;
  s[SLOT.npages(slot)] = npages;
  s[SLOT.hva_page(slot)] = hvaPage;
  s[SLOT.rmap_base(slot)] = rNext;
  s[SLOT.rmap_l2(slot)] = rNext + npages;
  s[SLOT.rmap_l3(slot)] = rNext + npages + l2;
  s[SLOT.bitmap_base(slot)] = bNext;
  s[SLOT.bitmap_words(slot)] = bitmapWords;
  s[SLOT.lpage_l2(slot)] = lpBase;
  s[SLOT.lpage_l3(slot)] = lpBase + l2;
  s[SLOT.flags(slot)] = 0;
  kvm.ctl[CTL.rmap_pool_next] = rNext + rmapWords;
  kvm.ctl[CTL.bitmap_pool_next] = bNext + 2 * bitmapWords;
  kvm.ctl[CTL.lpage_pool_next] = lpBase + l2 + l3;
  Atomics.store(s, SLOT.active(slot), 1);
  // kvm_commit_memory_region
  if ((flags & KVM_MEM_LOG_DIRTY_PAGES) !== 0) arch.slot_apply_flags(kvm, slot, true);
  s[SLOT.flags(slot)] |= flags & KVM_MEM_READONLY;
}

/**
 * kvm_delete_memslot: under mmu_lock, zap the slot's mappings and flush (the arch hook), then
 * retire the slot. Its pool space is not reused (the pools only grow).
 */
export function kvm_delete_memslot(kvm: Kvm, slot: number, arch: KvmArchMemslotOps): void {
  const s = kvm.slots;
  kvm.mmu_lock.lock();
  try {
    arch.flush_shadow_memslot(kvm, slot);
    Atomics.store(s, SLOT.active(slot), 0);
    // Its userfaultfd registration goes with it (no vCPU runs: nobody waits on it).
    if (kvm.uffd[UFFD.slot] === slot + 1) kvm.uffd[UFFD.slot] = 0;
  } finally {
    kvm.mmu_lock.unlock();
  }
}

/**
 * The MMU seam: the ops a design gives a VM (KVM's struct kvm_mmu, which init_kvm_tdp_mmu /
 * kvm_init_shadow_mmu fill per vCPU, plus the VM-wide ops where designs differ: write-protect
 * for dirty logging, the notifier's zap, ...). A Kvm resolves its table once, at construction,
 * from config.wp and its paging mode (src/mmu/design.ts); every caller goes through kvm.ops.
 *
 * Each op declares the mode in which it holds mmu_lock (`lock`): "write" (the designs of Linux
 * 3.11 and the seed), "read" (the TDP MMU's faults and zaps of Linux 5.12+, with atomic spte
 * updates) or "none" (lockless). Ops that run inside a section their caller opened
 * (protectMasked between harvestBegin and harvestEnd, zap_gfn_range inside the notifier's
 * range_start) assert the mode at entry (lockdep_assert_held_*, kvm_host.ts); the others take
 * the lock themselves.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import { DesignName, Kvm } from "../kvm_host.js";
import { lockdep_assert_held, lockdep_assert_held_read, lockdep_assert_held_write } from "../kvm/lockdep.js";
import type { KvmPageFault } from "./mmu.js";
import type { WriteProtectDesign } from "./write_protect.js";

export type MmuLockMode = "write" | "read" | "none";

/** RET_PF_*: what the vCPU does after a fault. */
export const RET_PF_RETRY = 0;
/** A write to a write-tracked page (shadow mode: a guest page table): emulate it. */
export const RET_PF_EMULATE = 1;

/** Error-code bits (PFERR_*) of kvm_mmu_page_fault. */
export const PFERR_PRESENT_MASK = 1 << 0;
export const PFERR_WRITE_MASK = 1 << 1;

/** The ops whose lock mode a design declares. */
export type MmuOpName =
  "page_fault" | "fast_page_fault" | "protectMasked" | "slotRemoveWriteAccess" | "zap_gfn_range";

export interface KvmMmuOps extends WriteProtectDesign {
  readonly name: DesignName;
  /**
   * kvm_mmu->page_fault: resolves `fault` (filled by kvm_mmu_page_fault) outside guest mode.
   * Returns RET_PF_RETRY or RET_PF_EMULATE; throws KvmError for a fault it cannot resolve.
   */
  readonly page_fault: (kvm: Kvm, fault: KvmPageFault) => number;
  /**
   * fast_page_fault: fixes a write fault on a present, write-protected spte without mmu_lock.
   * Returns true when done (the vCPU retries the access).
   */
  readonly fast_page_fault: (kvm: Kvm, fault: KvmPageFault) => boolean;
  /**
   * kvm_unmap_gfn_range for the MMU notifier: zaps the sptes of host pages [hvaStart, hvaEnd)
   * in every slot. Runs inside invalidate_range_start's section (its `lock` mode held). Returns
   * true when a remote TLB flush is needed.
   */
  readonly zap_gfn_range: (kvm: Kvm, hvaStart: number, hvaEnd: number) => boolean;
  /**
   * Eager page splitting (the TDP MMU's kvm_mmu_try_split_huge_pages) when dirty logging starts
   * on `slot`: optional; without it huge pages are split lazily by the next write fault.
   */
  readonly split_huge_pages?: (kvm: Kvm, slot: number) => void;
  /**
   * Dirty logging stopped on `slot`: map huge pages again (kvm_mmu_zap_collapsible_sptes).
   * Optional; takes mmu_lock itself.
   */
  readonly recover_huge_pages?: (kvm: Kvm, slot: number) => void;
  /**
   * Drops every mapping (kvm_mmu_zap_all_fast), for reclaim when the pools run short; mmu_lock
   * held for write. Optional: without it reclaim zaps the rmap MMU's TDP root. Returns whether
   * it freed anything.
   */
  readonly zap_all?: (kvm: Kvm) => boolean;
  /**
   * kvm_x86_ops.cpu_dirty_log_size: entries of the vCPU's PML buffer when the VM logs dirty
   * pages by D bit (the vCPU sets D and logs the gfn on its first write through a writable spte
   * with D clear), 0 or absent when it logs by write protection.
   */
  readonly cpu_dirty_log_size?: (kvm: Kvm) => number;
  /** The mmu_lock mode of each op. */
  readonly lock: Readonly<Record<MmuOpName, MmuLockMode>>;
}

/*
 * kvm_host.ts declares KvmOps opaque (it may import nothing from this layer); here it gains the
 * ops' members, so kvm.ops is typed wherever this file is in scope.
 */
declare module "../kvm_host.js" {
  interface KvmOps extends KvmMmuOps {
    readonly name: DesignName;
  }
}

/**
 * kvm_mmu_page_fault: the one entry of the vCPU into the MMU. Fills the vCPU's fault record
 * (no allocation: the record is reused) and dispatches to the VM's page_fault op. `addr` is a
 * gfn (TDP) or a guest virtual page (shadow); `errorCode` has PFERR_* bits. The vCPU is
 * outside guest mode.
 */
export function kvm_mmu_page_fault(kvm: Kvm, fault: KvmPageFault, addr: number, errorCode: number): number {
  const kfd = kfunc_enter(KF.kvm_mmu_page_fault);
  try {
    fault.addr = addr;
    fault.gfn = addr;
    fault.error_code = errorCode;
    fault.present = (errorCode & PFERR_PRESENT_MASK) !== 0;
    fault.write = (errorCode & PFERR_WRITE_MASK) !== 0;
    fault.slot = -1;
    return kvm.ops.page_fault(kvm, fault);
  } finally {
    kfunc_exit(kfd);
  }
}

/** Asserts that this thread holds mmu_lock as op `op` of the VM's design declares. */
export function kvm_mmu_assert_lock(kvm: Kvm, op: MmuOpName): void {
  const mode = kvm.ops.lock[op];
  if (mode === "write") lockdep_assert_held_write(kvm);
  else if (mode === "read") lockdep_assert_held_read(kvm);
}

/** Asserts that mmu_lock is held in either mode (code both kinds of design share). */
export function kvm_mmu_assert_held(kvm: Kvm): void {
  lockdep_assert_held(kvm);
}

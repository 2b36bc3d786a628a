/**
 * Write protection for dirty logging: the part of a design's MMU ops (KvmMmuOps, kvm_mmu.ts)
 * that dirty logging calls, and what the designs share. A design is chosen once per VM by name
 * (config.wp, the registry in design.ts); src/mmu/wp_locked.ts is Linux 3.11's,
 * src/mmu/wp_lockless.ts the seed's.
 *
 * The calls mirror today's KVM: protectMasked is kvm_arch_mmu_enable_log_dirty_pt_masked (the
 * pages of one bitmap word), slotRemoveWriteAccess is kvm_mmu_slot_remove_write_access (a whole
 * slot), and harvestBegin/harvestEnd bracket a run of protectMasked calls: the design decides
 * which critical section that is (mmu_lock, an RCU read section) and where the remote TLB flush
 * happens (inside or after it). begin/protect/end do not depend on GET_DIRTY_LOG: a clear-log
 * or ring-reset path can call them with its own masks.
 */
import { Kvm } from "../kvm_host.js";

/**
 * Time spent in get-dirty-log calls (one call's record, or sums over calls). Written only by the
 * thread that runs the call.
 */
export interface DirtyLogTimes {
  /** ns waiting for mmu_lock (0 in designs that do not take it). */
  lockWaitNs: number;
  /** ns harvesting and protecting: the call's wall time less lockWaitNs and flushNs. */
  protectNs: number;
  /** ns in the remote TLB flush. */
  flushNs: number;
  /** ns bringing the vCPUs' PML buffers into the log first (kvm_arch_sync_dirty_log; 0 without PML). */
  pmlFlushNs: number;
  dirtyPages: number;
}

export function newDirtyLogTimes(): DirtyLogTimes {
  return { lockWaitNs: 0, protectNs: 0, flushNs: 0, pmlFlushNs: 0, dirtyPages: 0 };
}

export function addDirtyLogTimes(into: DirtyLogTimes, t: DirtyLogTimes): void {
  into.lockWaitNs += t.lockWaitNs;
  into.protectNs += t.protectNs;
  into.flushNs += t.flushNs;
  into.pmlFlushNs += t.pmlFlushNs;
  into.dirtyPages += t.dirtyPages;
}

export interface WriteProtectDesign {
  /** The config.wp name ("locked", "lockless"). */
  readonly name: string;
  /** Enters the section protectMasked needs; adds any lock wait to times.lockWaitNs. */
  readonly harvestBegin: (kvm: Kvm, times: DirtyLogTimes) => void;
  /**
   * Between harvestBegin and harvestEnd: write-protects the level-1 pages of slot `slot`
   * whose bits are set in `mask`, bitmap word `wordIndex` (gfn base_gfn + 32 * wordIndex + bit).
   * Returns true if it changed an spte a TLB may still hold writable.
   */
  readonly protectMasked: (kvm: Kvm, slot: number, wordIndex: number, mask: number) => boolean;
  /**
   * Leaves the section; flushes remote TLBs when `flush` (where the design flushes: inside or
   * after the section), adding the time to times.flushNs. Runs even if a protectMasked threw.
   */
  readonly harvestEnd: (kvm: Kvm, flush: boolean, times: DirtyLogTimes) => void;
  /**
   * Write-protects every spte of slot `slot` at levels minLevel (default 1) and up, and
   * flushes. slots_lock held, mmu_lock not held; the slot's KVM_MEM_LOG_DIRTY_PAGES is already
   * set. minLevel 2 is INITIALLY_SET's: 4 KiB pages wait for the first CLEAR.
   */
  readonly slotRemoveWriteAccess: (kvm: Kvm, slot: number, minLevel?: number) => void;
}

/** The RCU reader slot of the thread that runs the ioctls (the VM owner). */
export const RCU_READER_IOCTL = 0;

/** Times fn (a remote flush) into times.flushNs. */
export function timedFlush(kvm: Kvm, times: DirtyLogTimes, fn: (kvm: Kvm) => void): void {
  const t = performance.now();
  fn(kvm);
  times.flushNs += (performance.now() - t) * 1e6;
}

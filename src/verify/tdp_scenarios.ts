/**
 * Explorer scenarios for the TDP MMU's own bugs (docs/bugs.md, "The TDP MMU's bugs"; the switches
 * are BUG_TDP in src/mmu/tdp_mmu/tdp_mmu_bugs.ts). They apply to design `tdp-mmu` in TDP mode
 * only (Scenario.onlyDesign): the code they run has no twin in the rmap designs.
 *
 * The invariants each one checks, beyond the TDP MMU audit run after the threads:
 *  - a walk with a pending TLB flush flushes before it drops mmu_lock: no vCPU keeps a writable
 *    translation of a page once the MMU notifier's invalidate_range_start has returned;
 *  - kvm_tdp_mmu_write_protect_gfn leaves no leaf of the gfn writable or MMU-writable;
 *  - dirty state is cleared on present leaves only: a link spte stays what tdp_mmu_link_sp made
 *    (the audit);
 *  - every entry point holds mmu_lock in the mode it asserts (a LockdepError in a thread is a
 *    violation, as a lockdep splat is);
 *  - a walk visits every spte of its range, also after a yield: a root torn down leaves no table
 *    linked (the audit: every table in use is reachable from the root);
 *  - a guest write is never lost to the host: when dirty state (D) leaves an spte, the host page
 *    is marked dirty (kvm_set_pfn_dirty), also when the vCPU set D just before a locked store.
 */
import { BugName, CTL, Kvm, PAGE_SIZE } from "../kvm_host.js";
import { MmuModeName, VmOptions } from "../vm.js";
import { ShadowWalkIterator, walk_shadow_page_lockless } from "../mmu/mmu.js";
import { clear_page_dirty_for_io, host_invalidate_range, page_dirty } from "../mem/host_memory.js";
import { aload, astore, spinPoint } from "../sync/atomic.js";
import { kvm_flush_remote_tlbs } from "../kvm/requests.js";
import { is_shadow_present_pte, PT_WRITABLE_MASK, SPTE_DIRTY, SPTE_MMU_WRITEABLE } from "../mmu/spte.js";
import { kvm_tdp_mmu_write_protect_gfn } from "../mmu/tdp_mmu/tdp_mmu_dirty.js";
import type { TdpBugName } from "../mmu/tdp_mmu/tdp_mmu_bugs.js";
import { vmKvm } from "../vm/internal.js";
import {
  asVcpu,
  auditCheck,
  enableLogging,
  HVA0,
  notifierOf,
  NPAGES,
  pageWord,
  prefault,
  S_EXTRA,
  Scenario,
  slot,
  withMmuLock,
} from "./scenario_util.js";

const G = 100; // a gfn in the first 2 MiB block
/** The first gfn the root's entry 1 maps (512 GiB). */
const HI = 2 ** 27;
/** scratch word: set (atomically) by the host thread once its MMU-notifier call has returned. */
const DONE = 2;

function tdpVm(bugs: (BugName | TdpBugName)[], mode: MmuModeName, extra: Partial<VmOptions> = {}): VmOptions {
  return {
    memory: 8 << 20,
    wp: "tdp-mmu",
    bugs,
    mode,
    maxVcpus: 4,
    maxSlotPages: NPAGES,
    maxSp: 64,
    maxDesc: 64,
    ...extra,
  };
}

/** The leaf spte mapping gfn now (0 if none), read as a lockless walker would. */
function leafOf(kvm: Kvm, gfn: number): number {
  return walk_shadow_page_lockless(kvm, aload(kvm.ctl, CTL.root), gfn, new ShadowWalkIterator());
}

export const TDP_SCENARIOS: Record<string, Scenario> = {
  "tdp-zap-yield-noflush": {
    name: "tdp-zap-yield-noflush",
    bug: "tdp-zap-yield-noflush",
    onlyDesign: "tdp-mmu",
    auditable: true,
    description:
      "the MMU notifier zaps two pages (write lock, may yield) while vCPU 0 writes one of them through its TLB and vCPU 1 faults, contending for mmu_lock",
    vmOptions: (bugs, mode) => tdpVm(bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      vm.createVcpu(1);
      prefault(vm, 0, [G]); // G mapped writable; G + 1 is not, so the zap owes no flush after it
    },
    threads: [
      {
        name: "vcpu0",
        run: (kvm, scratch) =>
          asVcpu(kvm, 0, (v) => {
            v.write64(G, 0, 1, 0); // a writable TLB entry for G
            for (let i = 2; i < 40 && aload(scratch, S_EXTRA + DONE) === 0; i++) {
              v.write64(G, 0, i, 0);
              spinPoint(scratch, S_EXTRA + DONE);
            }
            if (aload(scratch, S_EXTRA + DONE) === 0) return;
            // invalidate_range_start has returned: no translation of G may survive it.
            if (v.tlbAudit() !== 0)
              throw new Error(
                `gfn ${G}: vCPU 0 still holds a writable TLB entry after invalidate_range_start returned (the zap dropped mmu_lock without its flush)`,
              );
          }),
      },
      {
        name: "host-invalidate",
        run: (kvm, scratch) => {
          host_invalidate_range(kvm, scratch[S_EXTRA + HVA0] + G, 2, notifierOf(kvm));
          astore(scratch, S_EXTRA + DONE, 1);
        },
      },
      { name: "vcpu1", run: (kvm) => asVcpu(kvm, 1, (v) => v.write64(512 + G, 0, 0xb, 0)) },
    ],
    check: auditCheck,
  },

  "tdp-wrprot-early-break": {
    name: "tdp-wrprot-early-break",
    bug: "tdp-wrprot-early-break",
    onlyDesign: "tdp-mmu",
    auditable: true,
    description:
      "write-protect logging (no PML): a page is write-protected for tracking (kvm_tdp_mmu_write_protect_gfn) while vCPU 0 writes it through fast_page_fault",
    vmOptions: (bugs, mode) => tdpVm(bugs, mode, { pml: false }),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G]);
      enableLogging(vm, hva); // G: W cleared, MMU-writable kept (fast_page_fault may restore W)
    },
    threads: [
      {
        name: "write-protect",
        run: (kvm) =>
          withMmuLock(kvm, () => {
            // kvm_mmu_slot_gfn_write_protect, as page tracking does for a shadowed guest table.
            kvm_tdp_mmu_write_protect_gfn(kvm, G, 1);
            const s = leafOf(kvm, G);
            if (is_shadow_present_pte(s) && (s & (PT_WRITABLE_MASK | SPTE_MMU_WRITEABLE)) !== 0)
              throw new Error(
                `gfn ${G}: spte 0x${s.toString(16)} is still ${(s & PT_WRITABLE_MASK) !== 0 ? "writable" : "MMU-writable"} after kvm_tdp_mmu_write_protect_gfn (fast_page_fault can make it writable again)`,
              );
            kvm_flush_remote_tlbs(kvm);
          }),
      },
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 5, 0)) },
    ],
    check: auditCheck,
  },

  "tdp-clear-dirty-nonpresent": {
    name: "tdp-clear-dirty-nonpresent",
    bug: "tdp-clear-dirty-nonpresent",
    onlyDesign: "tdp-mmu",
    auditable: true,
    description:
      "dirty logging starts with PML on a THP-backed slot (clear_dirty_gfn_range and wrprot_gfn_range under the read lock) while vCPU 0 faults a 2 MiB page in and writes another",
    vmOptions: (bugs, mode) => tdpVm(bugs, mode, { eager_page_split: false }),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      // THP-backed: 2 MiB leaves under two links, so the walks are a few sptes long.
      const hva = slot(vm, true, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G]);
    },
    threads: [
      // kvm_mmu_slot_apply_flags when logging starts: 4 KiB leaves lose D, huge leaves W.
      { name: "start-logging", run: (kvm) => kvm.ops.slotRemoveWriteAccess(kvm, 0) },
      {
        name: "vcpu0",
        run: (kvm) =>
          asVcpu(kvm, 0, (v) => {
            v.write64(512 + G, 0, 3, 0);
            v.write64(G, 0, 4, 0);
          }),
      },
    ],
    check: auditCheck,
  },

  "tdp-plain-write": {
    name: "tdp-plain-write",
    bug: "tdp-plain-write",
    onlyDesign: "tdp-mmu",
    auditable: true,
    description:
      "PML logging: the host reclaims a clean page (MMU notifier zap, write lock) while vCPU 0 writes it, setting D without mmu_lock",
    vmOptions: (bugs, mode) => tdpVm(bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G]); // G mapped writable, D set
      enableLogging(vm, hva); // D cleared (the page is marked dirty in the host)
      // Writeback saved the page: clean in the host, and its spte has no D; the guest's next
      // write sets D, and the zap that replaces that spte must mark the page dirty again.
      clear_page_dirty_for_io(vmKvm(vm), hva + G);
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 5, 0)) },
      {
        name: "host-reclaim",
        // try_to_unmap of the clean page: the notifier zaps its spte (tdp_mmu_zap_leafs).
        run: (kvm, scratch) => host_invalidate_range(kvm, scratch[S_EXTRA + HVA0] + G, 1, notifierOf(kvm)),
      },
    ],
    check(vm, scratch) {
      const kvm = vmKvm(vm);
      const hva = scratch[S_EXTRA + HVA0] + G;
      const s = leafOf(kvm, G);
      // The write is safe if the host page is dirty, or a leaf still holds its dirty state (D).
      if (
        pageWord(kvm, hva) === 5 &&
        !page_dirty(kvm, hva) &&
        !(is_shadow_present_pte(s) && (s & SPTE_DIRTY) !== 0)
      )
        return `gfn ${G}: the guest wrote 5, but its host page is clean and no spte holds D: reclaim would drop the write (a locked store lost the D bit the vCPU set)`;
      return auditCheck(vm);
    },
  },

  "tdp-iter-skip": {
    name: "tdp-iter-skip",
    bug: "tdp-iter-skip",
    onlyDesign: "tdp-mmu",
    auditable: true,
    description:
      "the root is dropped to reclaim pages (its teardown walks the root's entries, write lock, may yield) while vCPU 1 faults, contending for mmu_lock; the root has two present entries",
    vmOptions: (bugs, mode) => tdpVm(bugs, mode, { maxSlotPages: NPAGES + 512 }),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      // THP-backed: 2 MiB leaves, so each root entry has two tables below it.
      const hva = slot(vm, true, false);
      scratch[S_EXTRA + HVA0] = hva;
      // A second slot 512 GiB up: the root's entry 1 (gfns from 2^27) is present too.
      vm.setUserMemoryRegion({
        slot: 1,
        flags: 0,
        guestPhysAddr: HI * PAGE_SIZE,
        memorySize: 2 << 20,
        userspaceAddr: vm.mmap(2 << 20, { thp: true }),
      });
      vm.createVcpu(0);
      vm.createVcpu(1);
      prefault(vm, 0, [G, HI + 5]);
    },
    threads: [
      // kvm_mmu_reclaim's zap_all: kvm_tdp_mmu_invalidate_all_roots, then the root's teardown.
      { name: "reclaim", run: (kvm) => withMmuLock(kvm, () => void kvm.ops.zap_all?.(kvm)) },
      {
        name: "vcpu1",
        run: (kvm) =>
          asVcpu(kvm, 1, (v) => {
            v.write64(G, 0, 2, 0);
            v.write64(HI + 5, 0, 3, 0);
          }),
      },
    ],
    // The audit: every table in use is reachable from the root (a skipped entry leaks its tables).
    check: auditCheck,
  },

  "tdp-wrong-lock": {
    name: "tdp-wrong-lock",
    bug: "tdp-wrong-lock",
    onlyDesign: "tdp-mmu",
    auditable: true,
    description: "two vCPUs fault in parallel under the read side of mmu_lock",
    vmOptions: (bugs, mode) => tdpVm(bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      vm.createVcpu(1);
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 0xa, 0)) },
      { name: "vcpu1", run: (kvm) => asVcpu(kvm, 1, (v) => v.write64(512 + G, 0, 0xb, 0)) },
    ],
    check(vm, scratch) {
      const hva = scratch[S_EXTRA + HVA0];
      const a = pageWord(vmKvm(vm), hva + G);
      const b = pageWord(vmKvm(vm), hva + 512 + G);
      if (a !== 0xa || b !== 0xb)
        return `guest write lost: gfn ${G} holds ${a} (want 10), gfn ${512 + G} holds ${b} (want 11)`;
      return auditCheck(vm);
    },
  },
};

/** Each TDP MMU bug's scenario. */
export const TDP_BUG_SCENARIO: Record<TdpBugName, string> = {
  "tdp-zap-yield-noflush": "tdp-zap-yield-noflush",
  "tdp-wrprot-early-break": "tdp-wrprot-early-break",
  "tdp-clear-dirty-nonpresent": "tdp-clear-dirty-nonpresent",
  "tdp-wrong-lock": "tdp-wrong-lock",
  "tdp-plain-write": "tdp-plain-write",
  "tdp-iter-skip": "tdp-iter-skip",
};

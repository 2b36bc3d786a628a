/**
 * Scenarios for controlled exploration (src/verify/explore.ts): small VMs, a few threads running
 * production MMU code, and the invariant that must hold when they are done. Each scenario is the
 * one that exposes a bug of the catalog (docs/bugs.md) when that bug is put back; with the code
 * as it should be, no schedule may break its invariant.
 *
 * Setup runs on the controller thread without the hook; threads run in explore workers with it.
 * Slot 0 is 4 MiB at gpa 0 (gfns 0..1023, two 2 MiB blocks); vCPU ids are the thread indices.
 */
import { BugName, CTL, Kvm, MmuMode, SP } from "../kvm_host.js";
import { MmuModeName, Vm, VmOptions } from "../vm.js";
import { kvm_dirty_ring_harvest } from "../mem/dirty_ring.js";
import { kvm_reset_dirty_rings } from "../mmu/dirty_ring.js";
import { newDirtyLogTimes, wp_design } from "../mmu/dirty_log.js";
import {
  drop_spte,
  kvm_mmu_commit_zap_page,
  kvm_mmu_get_page,
  kvm_mmu_prepare_zap_page,
  page_header,
} from "../mmu/mmu_page.js";
import { shadow_prepare_zap_page } from "../mmu/shadow_page.js";
import { rmap_add, rmap_get_first } from "../mmu/rmap.js";
import { gfn_to_rmap } from "../mem/memslot.js";
import { host_migrate_page, hva_to_pfn } from "../mem/host_memory.js";
import {
  is_writable_pte,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  SPTE_HOST_WRITEABLE,
  SPTE_MMU_WRITEABLE,
  SPTE_PFN_SHIFT,
} from "../mmu/spte.js";
import { vmKvm } from "../vm/internal.js";
import type { TdpBugName } from "../mmu/tdp_mmu/tdp_mmu_bugs.js";
import {
  asVcpu,
  auditCheck,
  clearLog,
  copyAll,
  copyReported,
  enableLogging,
  finalRoundMismatch,
  harvest,
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
import { TDP_BUG_SCENARIO, TDP_SCENARIOS } from "./tdp_scenarios.js";

export {
  asVcpu,
  auditCheck,
  clearLog,
  copyAll,
  copyReported,
  enableLogging,
  harvest,
  HVA0,
  notifierOf,
  NPAGES,
  pageWord,
  prefault,
  S_EXTRA,
  slot,
  SLOT_BYTES,
  withMmuLock,
} from "./scenario_util.js";
export type { Scenario, ScenarioThread } from "./scenario_util.js";

function makeVm(wp: "locked" | "lockless", bugs: (BugName | TdpBugName)[], mode: MmuModeName): VmOptions {
  return { memory: 8 << 20, wp, bugs, mode, maxVcpus: 4, maxSlotPages: NPAGES, maxSp: 64, maxDesc: 64 };
}

/** Manual-protect round: GET (a copy), CLEAR what it reported, then copy those pages. */
function clearRound(kvm: Kvm, hvaBase: number, scratch: Int32Array): void {
  const bm = harvest(kvm);
  clearLog(kvm, bm);
  copyReported(kvm, hvaBase, bm, scratch);
}

/** Ring round as the selftest and QEMU do it: harvest vCPU 0's ring, reset, then copy the pages. */
function ringRound(kvm: Kvm, hvaBase: number, scratch: Int32Array): void {
  const size = kvm.ctl[CTL.dirty_ring_size];
  const slots = new Int32Array(size);
  const offsets = new Int32Array(size);
  let n: number;
  kvm.slots_lock.lock();
  try {
    n = kvm_dirty_ring_harvest(kvm, 0, slots, offsets, Infinity);
    kvm_reset_dirty_rings(kvm, wp_design(kvm), newDirtyLogTimes());
  } finally {
    kvm.slots_lock.unlock();
  }
  for (let k = 0; k < n; k++) {
    const g = offsets[k];
    if (g < NPAGES) scratch[g] = pageWord(kvm, hvaBase + g);
  }
}

/** Final ring round (quiesced) and comparison. */
function finalRingMismatch(vm: Vm, hvaBase: number, scratch: Int32Array): string | null {
  const kvm = vmKvm(vm);
  ringRound(kvm, hvaBase, scratch);
  for (let g = 0; g < NPAGES; g++) {
    const m = pageWord(kvm, hvaBase + g);
    if (m !== scratch[g])
      return `lost dirty page: gfn ${g} holds ${m} but the migrated copy holds ${scratch[g]} (no ring entry reported it after the write)`;
  }
  return null;
}

/** A writable leaf for gfn in a fresh, unlinked level-1 page whose sp->gfn is gfn: an alias, as shadow paging makes. mmu_lock held. */
function aliasSpte(kvm: Kvm, gfn: number, pfn: number): number {
  const sp = kvm_mmu_get_page(kvm, gfn, 1);
  kvm.spHdr[SP.gfn(sp)] = gfn;
  const sptep = sp * PT64_ENT_PER_PAGE;
  kvm.spt[sptep] =
    PT_PRESENT_MASK |
    PT_USER_MASK |
    PT_WRITABLE_MASK |
    SPTE_HOST_WRITEABLE |
    SPTE_MMU_WRITEABLE |
    (pfn << SPTE_PFN_SHIFT);
  rmap_add(kvm, sptep, gfn, 1);
  return sptep;
}

function markDirty(kvm: Kvm, gfn: number): void {
  kvm.bitmapPool[kvm.slots[0 + 8] + (gfn >>> 5)] |= 1 << (gfn & 31);
}

function writableLeft(kvm: Kvm, sptes: number[], names: string[]): string | null {
  for (let i = 0; i < sptes.length; i++)
    if (is_writable_pte(kvm.spt[sptes[i]]))
      return `spte ${names[i]} (${sptes[i]}) is still writable after get-dirty-log reported its gfn`;
  return null;
}

/**
 * Zaps the last-level shadow page that maps gfn (found through its rmap, so it works for the
 * TDP tree and for the shadow MMU's direct pages alike). mmu_lock held.
 */
export function zapLeafTable(kvm: Kvm, gfn: number): void {
  const s = rmap_get_first(kvm, kvm.rmapPool, gfn_to_rmap(kvm, 0, gfn, 1));
  if (s < 0) return;
  const invalid: number[] = [];
  if (kvm.mode === MmuMode.Shadow) shadow_prepare_zap_page(kvm, page_header(s), invalid);
  else kvm_mmu_prepare_zap_page(kvm, page_header(s), invalid);
  kvm_mmu_commit_zap_page(kvm, invalid);
}

const G = 100; // a gfn in the first 2 MiB block

export const SCENARIOS: Record<string, Scenario> = {
  "dirty-before-rmap": {
    name: "dirty-before-rmap",
    bug: "dirty-before-rmap",
    auditable: true,
    description: "a vCPU maps a page through the slow path while get-dirty-log (lockless) harvests it",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, true);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G + 1]); // the leaf table exists; G itself is not mapped
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 7, 0)) },
      { name: "get-dirty-log", run: (kvm) => void harvest(kvm) },
    ],
    check: auditCheck,
  },

  "skip-flush": {
    name: "skip-flush",
    bug: "skip-flush",
    auditable: true,
    description:
      "a vCPU keeps writing through its TLB while get-dirty-log protects the page and migration copies it",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, true);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G]);
      copyAll(vmKvm(vm), hva, scratch);
    },
    threads: [
      {
        name: "vcpu0",
        run: (kvm) =>
          asVcpu(kvm, 0, (v) => {
            v.write64(G, 0, 2, 0);
            v.write64(G, 0, 3, 0);
          }),
      },
      {
        name: "migration",
        run: (kvm, scratch) => copyReported(kvm, scratch[S_EXTRA + HVA0], harvest(kvm), scratch),
      },
    ],
    check: (vm, scratch) => finalRoundMismatch(vm, scratch[S_EXTRA + HVA0], scratch),
  },

  "fast-pf-large": {
    name: "fast-pf-large",
    bug: "fast-pf-large",
    auditable: true,
    description: "writes to a 2 MiB page made read-only by dirty logging, harvested concurrently",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, true, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [0]); // a writable 2 MiB spte
      enableLogging(vm, hva); // now read-only, HOST_W|MMU_W kept
      copyAll(vmKvm(vm), hva, scratch);
    },
    threads: [
      {
        name: "vcpu0",
        run: (kvm) =>
          asVcpu(kvm, 0, (v) => {
            v.write64(5, 0, 11, 0);
            v.write64(9, 0, 12, 0);
          }),
      },
      {
        name: "migration",
        run: (kvm, scratch) => copyReported(kvm, scratch[S_EXTRA + HVA0], harvest(kvm), scratch),
      },
    ],
    check: (vm, scratch) => finalRoundMismatch(vm, scratch[S_EXTRA + HVA0], scratch) ?? auditCheck(vm),
  },

  "backward-move": {
    name: "backward-move",
    rmapOnly: true,
    bug: "backward-move",
    auditable: false,
    description: "get-dirty-log walks a one-descriptor rmap [A, B, C] while A is removed",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 8,
    setup(vm, scratch) {
      slot(vm, false, true);
      const kvm = vmKvm(vm);
      const pfn = hva_to_pfn(kvm, 1);
      withMmuLock(kvm, () => {
        for (let i = 0; i < 3; i++) scratch[S_EXTRA + i] = aliasSpte(kvm, G, pfn);
      });
      markDirty(kvm, G);
    },
    threads: [
      {
        name: "zap-A",
        run: (kvm, scratch) => {
          withMmuLock(kvm, () => {
            drop_spte(kvm, scratch[S_EXTRA]);
          });
        },
      },
      { name: "get-dirty-log", run: (kvm) => void harvest(kvm) },
    ],
    check: (vm, scratch) => writableLeft(vmKvm(vm), [scratch[S_EXTRA + 1], scratch[S_EXTRA + 2]], ["B", "C"]),
  },

  "no-nulls-check": {
    name: "no-nulls-check",
    rmapOnly: true,
    bug: "no-nulls-check",
    auditable: false,
    description:
      "get-dirty-log walks rmap X = [E] -> [A, B, C] while E is removed and its descriptor is reused by rmap Y",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 8,
    setup(vm, scratch) {
      slot(vm, false, true);
      const kvm = vmKvm(vm);
      const pfn = hva_to_pfn(kvm, 1);
      withMmuLock(kvm, () => {
        for (let i = 0; i < 3; i++) scratch[S_EXTRA + i] = aliasSpte(kvm, G, pfn); // A, B, C: one full descriptor
        scratch[S_EXTRA + 3] = aliasSpte(kvm, G, pfn); // E: a new first descriptor
        scratch[S_EXTRA + 4] = aliasSpte(kvm, G + 1, pfn); // F: single entry of rmap Y
      });
      markDirty(kvm, G);
    },
    threads: [
      {
        name: "writer",
        run: (kvm, scratch) => {
          withMmuLock(kvm, () => {
            drop_spte(kvm, scratch[S_EXTRA + 3]); // frees E's descriptor
            aliasSpte(kvm, G + 1, hva_to_pfn(kvm, 1)); // Y becomes a chain: reuses it
          });
        },
      },
      { name: "get-dirty-log", run: (kvm) => void harvest(kvm) },
    ],
    check: (vm, scratch) =>
      writableLeft(
        vmKvm(vm),
        [scratch[S_EXTRA], scratch[S_EXTRA + 1], scratch[S_EXTRA + 2]],
        ["A", "B", "C"],
      ),
  },

  "plain-clear": {
    name: "plain-clear",
    bug: "plain-clear",
    auditable: true,
    description: "get-dirty-log protects a page while the host migrates it and a vCPU faults it back in",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, true);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G]);
    },
    threads: [
      { name: "get-dirty-log", run: (kvm) => void harvest(kvm) },
      {
        name: "host-migrate",
        run: (kvm, scratch) => void host_migrate_page(kvm, scratch[S_EXTRA + HVA0] + G, notifierOf(kvm)),
      },
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 9, 0)) },
    ],
    check: auditCheck,
  },

  "early-free": {
    name: "early-free",
    bug: "early-free",
    auditable: true,
    description: "a vCPU walks a leaf table while it is zapped and another vCPU's fault allocates a table",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      vm.createVcpu(1);
      prefault(vm, 0, [G], 0);
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 0xa, 0)) },
      {
        name: "zap",
        run: (kvm) => {
          withMmuLock(kvm, () => {
            zapLeafTable(kvm, G);
          });
        },
      },
      { name: "vcpu1", run: (kvm) => asVcpu(kvm, 1, (v) => v.write64(512 + G, 0, 0xb, 0)) },
    ],
    check(vm, scratch) {
      const hva = scratch[S_EXTRA + HVA0];
      const a = pageWord(vmKvm(vm), hva + G);
      const b = pageWord(vmKvm(vm), hva + 512 + G);
      if (a !== 0xa || b !== 0xb)
        return `guest write went to the wrong frame: gfn ${G} holds ${a} (want 10), gfn ${512 + G} holds ${b} (want 11)`;
      return auditCheck(vm);
    },
  },

  "no-notifier-retry": {
    name: "no-notifier-retry",
    bug: "no-notifier-retry",
    auditable: true,
    description: "a vCPU faults a page in while the host migrates it to another frame",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      const hva = slot(vm, false, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G + 1], 0);
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 0xa, 0)) },
      {
        name: "host-migrate",
        run: (kvm, scratch) => void host_migrate_page(kvm, scratch[S_EXTRA + HVA0] + G, notifierOf(kvm)),
      },
    ],
    check(vm, scratch) {
      const w = pageWord(vmKvm(vm), scratch[S_EXTRA + HVA0] + G);
      if (w !== 0xa)
        return `guest write lost: gfn ${G} holds ${w} through the host mapping (want 10): the vCPU wrote a stale frame`;
      return auditCheck(vm);
    },
  },

  "clear-protect-first": {
    name: "clear-protect-first",
    bug: "clear-protect-first",
    auditable: true,
    description: "manual protect: migration clears (CLEAR) and copies a page while two vCPUs write it",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      vm.enableManualDirtyLogProtect(1);
      const hva = slot(vm, false, true);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      vm.createVcpu(1);
      // G and the seven pages after it, writable and dirty: CLEAR protects them one by one.
      prefault(vm, 0, [G, G + 1, G + 2, G + 3, G + 4, G + 5, G + 6, G + 7]);
      prefault(vm, 1, [G + 8]); // vCPU 1 has its root (shadow MMU)
      copyAll(vmKvm(vm), hva, scratch);
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 2, 0)) },
      { name: "migration", run: (kvm, scratch) => clearRound(kvm, scratch[S_EXTRA + HVA0], scratch) },
      { name: "vcpu1", run: (kvm) => asVcpu(kvm, 1, (v) => v.write64(G, 0, 3, 0)) },
    ],
    check: (vm, scratch) => finalRoundMismatch(vm, scratch[S_EXTRA + HVA0], scratch),
  },

  "initially-set-zero": {
    name: "initially-set-zero",
    bug: "initially-set-zero",
    auditable: true,
    description:
      "manual protect with INITIALLY_SET: logging turned on over a writable page, then GET, CLEAR and copy while a vCPU writes it",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      vm.enableManualDirtyLogProtect(3);
      const hva = slot(vm, false, false);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      prefault(vm, 0, [G]); // writable before logging
      enableLogging(vm, hva); // all ones, 4 KiB pages left writable
      copyAll(vmKvm(vm), hva, scratch);
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 2, 0)) },
      { name: "migration", run: (kvm, scratch) => clearRound(kvm, scratch[S_EXTRA + HVA0], scratch) },
    ],
    check: (vm, scratch) => finalRoundMismatch(vm, scratch[S_EXTRA + HVA0], scratch),
  },

  "ring-flags-before-entry": {
    name: "ring-flags-before-entry",
    bug: "ring-flags-before-entry",
    auditable: true,
    description:
      "dirty ring: a vCPU faults a page in and pushes its entry while migration harvests, resets and copies",
    vmOptions: (bugs, mode) => makeVm("lockless", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      vm.enableDirtyRing(256);
      const hva = slot(vm, false, true);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      copyAll(vmKvm(vm), hva, scratch);
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 7, 0)) },
      { name: "migration", run: (kvm, scratch) => ringRound(kvm, scratch[S_EXTRA + HVA0], scratch) },
    ],
    check: (vm, scratch) => finalRingMismatch(vm, scratch[S_EXTRA + HVA0], scratch),
  },

  "reset-coalesce-backward": {
    name: "reset-coalesce-backward",
    bug: "reset-coalesce-backward",
    auditable: true,
    description:
      "dirty ring: entries G+1 then G (a backwards visit) are harvested, reset and copied while a vCPU writes G again",
    vmOptions: (bugs, mode) => makeVm("locked", bugs, mode),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      vm.enableDirtyRing(256);
      const hva = slot(vm, false, true);
      scratch[S_EXTRA + HVA0] = hva;
      vm.createVcpu(0);
      copyAll(vmKvm(vm), hva, scratch);
      prefault(vm, 0, [G + 1, G]); // two ring entries, the second one page below the first
    },
    threads: [
      { name: "vcpu0", run: (kvm) => asVcpu(kvm, 0, (v) => v.write64(G, 0, 3, 0)) },
      { name: "migration", run: (kvm, scratch) => ringRound(kvm, scratch[S_EXTRA + HVA0], scratch) },
    ],
    check: (vm, scratch) => finalRingMismatch(vm, scratch[S_EXTRA + HVA0], scratch),
  },
  // The TDP MMU's own bugs (design `tdp-mmu`, TDP mode only): src/verify/tdp_scenarios.ts.
  ...TDP_SCENARIOS,
};

/** Each catalog bug's scenario (the TDP MMU's: those that have one). */
export const BUG_SCENARIO: Record<BugName, string> & Partial<Record<TdpBugName, string>> = {
  ...TDP_BUG_SCENARIO,
  "backward-move": "backward-move",
  "no-nulls-check": "no-nulls-check",
  "dirty-before-rmap": "dirty-before-rmap",
  "skip-flush": "skip-flush",
  "fast-pf-large": "fast-pf-large",
  "plain-clear": "plain-clear",
  "early-free": "early-free",
  "no-notifier-retry": "no-notifier-retry",
  "clear-protect-first": "clear-protect-first",
  "initially-set-zero": "initially-set-zero",
  "ring-flags-before-entry": "ring-flags-before-entry",
  "reset-coalesce-backward": "reset-coalesce-backward",
};

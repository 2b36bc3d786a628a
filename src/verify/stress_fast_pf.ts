/**
 * Stress test d of `kvmmu stress` (src/verify/stress_tests.ts): fast_page_fault against one step
 * of the lockless get-dirty-log, on one page of a tiny VM.
 */
import {
  Kvm,
  KVM_MEM_LOG_DIRTY_PAGES,
  KvmShared,
  OUTSIDE_GUEST_MODE,
  PAGE_SIZE,
  READING_SHADOW_PAGE_TABLES,
  SLOT,
  VCPU,
} from "../kvm_host.js";
import { define } from "./stress_spec.js";
import type { ActorSpec, AnyStressTest, OutcomeSpec } from "./stress_spec.js";
import { acas, aload, astore } from "../sync/atomic.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { rmap_single_spte } from "../mmu/rmap.js";
import { fast_page_fault, KvmPageFault } from "../mmu/mmu.js";
import { kvm_get_dirty_log, newDirtyLogTimes } from "../mmu/dirty_log.js";
import { gfn_to_rmap, mark_page_dirty } from "../mem/memslot.js";
import {
  is_shadow_present_pte,
  is_writable_pte,
  PT_WRITABLE_MASK,
  spte_is_locklessly_modifiable,
} from "../mmu/spte.js";
import { Vm } from "../vm.js";
import { vmKvm, vmShared } from "../vm/internal.js";

const FP_GFN = 5;
const FP_PAGES = 16;
const FP_REPORTED = 0;
const FP_WORDS = 2;

interface FastPfData {
  kvm: KvmShared;
  /** The leaf spte of FP_GFN, and its writable value (W | HOST_W | MMU_W). */
  sptep: number;
  spte: number;
  res: SharedArrayBuffer;
}

interface FastPfState {
  kvm: Kvm;
  sptep: number;
  spte: number;
  res: Int32Array;
  bitmapWord: number;
  pf: KvmPageFault;
  out: Uint32Array;
}

/**
 * Bug for the negative control: fast_pf_fix_direct_spte marking the page dirty before its
 * cmpxchg instead of after a successful one (against invariants 8 and 10). A harvest between
 * the two reports and clears the bit while the spte is still read-only (nothing to protect);
 * the cmpxchg then leaves a writable spte with a clear bit.
 */
function fastPfMarkBeforeCas(s: FastPfState): void {
  const kvm = s.kvm;
  astore(kvm.vcpu, VCPU.mode(0), READING_SHADOW_PAGE_TABLES);
  const old = aload(kvm.spt, s.sptep);
  if (is_shadow_present_pte(old) && !is_writable_pte(old) && spte_is_locklessly_modifiable(old)) {
    mark_page_dirty(kvm, FP_GFN);
    acas(kvm.spt, s.sptep, old, old | PT_WRITABLE_MASK);
  }
  astore(kvm.vcpu, VCPU.mode(0), OUTSIDE_GUEST_MODE);
}

/** vCPU 0's fault record for a write to FP_GFN on a present spte (what kvm_mmu_page_fault fills). */
function fastPf(): KvmPageFault {
  const pf = new KvmPageFault(0);
  pf.addr = FP_GFN;
  pf.gfn = FP_GFN;
  pf.write = true;
  pf.present = true;
  return pf;
}

const FP_OUTCOMES: OutcomeSpec[] = [
  {
    id: "clean: W=1 D=1 R=0",
    kind: "ACCEPTABLE",
    description:
      "B's xchg came before A set the bit (nothing to protect); A's cmpxchg made the spte writable and set the bit: reported next round",
  },
  {
    id: "clean: W=0 D=0 R=1",
    kind: "ACCEPTABLE",
    description:
      "A's fix (cmpxchg, then the bit) finished before B's xchg: B reported the page and write-protected it again",
  },
  {
    id: "dirty: W=0 D=0 R=1",
    kind: "ACCEPTABLE",
    description:
      "A found the spte still writable (a spurious fault, nothing to fix); B reported the page and write-protected it",
  },
  {
    id: "dirty: W=1 D=1 R=1",
    kind: "ACCEPTABLE_INTERESTING",
    description:
      "B reported and write-protected the page, then A's fast path made it writable again and set the bit (the design: the fast path undoes the lockless protect)",
  },
  ...["clean", "dirty"].flatMap((start) =>
    [0, 1].map((r): OutcomeSpec => ({
      id: `${start}: W=1 D=0 R=${r}`,
      kind: "FORBIDDEN",
      description: "writable spte with a clear dirty bit: the next guest write is never reported",
    })),
  ),
];

/** B: one KVM_GET_DIRTY_LOG of slot 0 under slots_lock; R = whether it reported FP_GFN. */
const fastPfHarvester: ActorSpec<FastPfState> = {
  name: "get-dirty-log",
  run(s) {
    const kvm = s.kvm;
    kvm.slots_lock.lock();
    try {
      kvm_get_dirty_log(kvm, 0, s.out, newDirtyLogTimes());
    } finally {
      kvm.slots_lock.unlock();
    }
    s.res[FP_REPORTED] = (s.out[0] >>> FP_GFN) & 1;
  },
};

/** A tiny `wp` VM, slot 0 logged, FP_GFN mapped writable by a guest write through the slow path. */
function fastPfAlloc(wp: "locked" | "lockless"): FastPfData {
  const vm = Vm.create({
    memory: 2 * FP_PAGES * PAGE_SIZE,
    wp,
    maxVcpus: 1,
    maxSlotPages: FP_PAGES,
    maxSp: 8,
    maxDesc: 8,
  });
  const hva = vm.mmap(FP_PAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: FP_PAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  // A guest write maps the page through the slow path: a writable leaf in its rmap.
  const v = new Vcpu(vmKvm(vm), 0, 4);
  v.enterGuest();
  v.write32(FP_GFN, 0, 1);
  v.exitGuest();
  const sptep = rmap_single_spte(vmKvm(vm).rmapPool[gfn_to_rmap(vmKvm(vm), 0, FP_GFN, 1)]);
  if (sptep < 0) throw new Error(`fast-pf stress: gfn ${FP_GFN} has no single rmap entry`);
  const spte = vmKvm(vm).spt[sptep];
  if (!is_writable_pte(spte) || !spte_is_locklessly_modifiable(spte))
    throw new Error(`fast-pf stress: spte 0x${spte.toString(16)} is not a writable leaf`);
  return { kvm: vmShared(vm), sptep, spte, res: new SharedArrayBuffer(FP_WORDS * 4) };
}

export function fastPfTest(name: string, markFirst: boolean, wp: "locked" | "lockless"): AnyStressTest {
  return define<FastPfState, FastPfData>({
    name,
    description: `${wp} VM, slot logged, gfn 5 mapped by a leaf with HOST_W|MMU_W. Start 'clean' (read-only, bit clear: after a harvest) or 'dirty' (writable, bit set: after a write), alternating. A: fast_page_fault on gfn 5 (vCPU 0); B: KVM_GET_DIRTY_LOG (xchg of the bitmap word, ${wp === "lockless" ? "spte_write_protect_lockless" : "under mmu_lock: spte_write_protect_locked"} of reported pages, flush). Outcome: final spte writable (W), dirty bit set (D), B reported the page (R)`,
    ...(markFirst
      ? {
          control:
            "A's fix marks the page dirty before its cmpxchg: 'clean: W=1 D=0 R=1' needs B's xchg and write-protect check to land in the few instructions between them",
        }
      : {}),
    stride: 16,
    jitter: 160,
    defaultIterations: 40_000,
    actors: [
      {
        name: "vcpu0 fast_page_fault",
        run(s) {
          if (markFirst) fastPfMarkBeforeCas(s);
          else fast_page_fault(s.kvm, s.pf);
        },
      },
      fastPfHarvester,
    ],
    alloc: () => fastPfAlloc(wp),
    attach(d) {
      const kvm = new Kvm(d.kvm);
      return {
        kvm,
        sptep: d.sptep,
        spte: d.spte,
        res: new Int32Array(d.res),
        bitmapWord: kvm.slots[SLOT.bitmap_base(0)],
        pf: fastPf(),
        out: new Uint32Array(1),
      };
    },
    reset(s, iter) {
      const kvm = s.kvm;
      const clean = (iter & 1) === 0;
      kvm.spt[s.sptep] = clean ? s.spte & ~PT_WRITABLE_MASK : s.spte;
      kvm.bitmapPool[s.bitmapWord] = clean ? 0 : 1 << FP_GFN;
      kvm.vcpu[VCPU.mode(0)] = OUTSIDE_GUEST_MODE;
      kvm.vcpu[VCPU.requests(0)] = 0;
      s.res.fill(0);
    },
    arbiter(s, iter) {
      const kvm = s.kvm;
      const w = is_writable_pte(kvm.spt[s.sptep]) ? 1 : 0;
      const d = (kvm.bitmapPool[s.bitmapWord] >>> FP_GFN) & 1;
      return `${(iter & 1) === 0 ? "clean" : "dirty"}: W=${w} D=${d} R=${s.res[FP_REPORTED]}`;
    },
    outcomes: FP_OUTCOMES,
  });
}

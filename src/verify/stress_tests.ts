/**
 * The stress tests of `kvmmu stress` (src/verify/stress.ts), by name. Every actor runs production
 * code (the mutex, the request/ack protocol, the lockless rmap walk, fast_page_fault and the
 * lockless get-dirty-log); the negative controls wire one known-wrong order on purpose to show
 * what the harness can and cannot observe on real threads.
 *
 * This module is imported by the stress workers too, so it holds all actor and setup code.
 */
import {
  allocKvmShared,
  BUG,
  BugName,
  CTL,
  IN_GUEST_MODE,
  Kvm,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_REQ_TLB_FLUSH,
  KvmShared,
  OUTSIDE_GUEST_MODE,
  PAGE_SIZE,
  READING_SHADOW_PAGE_TABLES,
  SLOT,
  VCPU,
} from "../kvm_host.js";
import type { ActorSpec, AnyStressTest, OutcomeKind, OutcomeSpec, StressTest } from "./stress_spec.js";
import { Mutex, MUTEX_WORDS } from "../sync/mutex.js";
import { acas, aload, astore, axchg } from "../sync/atomic.js";
import { kvm_flush_remote_tlbs, VcpuState } from "../kvm/requests.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { pte_list_add, pte_list_remove, pte_list_walk_lockless, rmap_single_spte } from "../mmu/rmap.js";
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

/** Erases a test's types for the registry (its methods are checked against S and D here). */
function define<S, D>(t: StressTest<S, D>): AnyStressTest {
  return t;
}

/** A Kvm with just enough of everything for tests that need no guest memory. */
function tinyKvmShared(bugs: number, maxDesc: number): KvmShared {
  return allocKvmShared({
    hostFrames: 1,
    maxSlotPages: 1,
    maxSp: 1,
    maxDesc,
    maxVcpus: 1,
    wp: "lockless",
    bugs,
  });
}

function bugMask(bugs: BugName[]): number {
  return bugs.reduce((m, b) => m | BUG[b], 0);
}

/** Thread-private sink, so the compiler keeps busy work. */
const sink = new Int32Array(1);

/** A little arithmetic between a load and a store, to widen a race window. */
function busy(v: number, turns: number): void {
  let x = v;
  for (let k = 0; k < turns; k++) x = (Math.imul(x, 31) + k) | 0;
  sink[0] = x;
}

// ---------------------------------------------------------------------------------------------
// a. mutex: two actors each lock; read a plain counter; write counter + 1; unlock.

const M_COUNTER = MUTEX_WORDS;
const M_READ = MUTEX_WORDS + 1; // + actor: the value the actor read

interface MutexState {
  w: Int32Array;
  m: Mutex;
}

function mutexTest(name: string, locked: boolean): AnyStressTest {
  const actor = (k: number): ActorSpec<MutexState> => ({
    name: `t${k}`,
    run(s) {
      if (locked) s.m.lock();
      const v = s.w[M_COUNTER]; // plain load and store: only the lock orders them
      s.w[M_READ + k] = v;
      busy(v, 16);
      s.w[M_COUNTER] = v + 1;
      if (locked) s.m.unlock();
    },
  });
  return define<MutexState, SharedArrayBuffer>({
    name,
    description: locked
      ? "2 actors: mmu_lock's ticket Mutex; read a plain counter; write counter + 1; unlock. Outcome: (t0 read, t1 read, final counter)"
      : "the same read-increment-write of a plain counter with no lock",
    ...(locked
      ? {}
      : {
          control:
            "no lock: a lost update ('0, 0, 1') must be observable, or this harness could not see the bug the mutex test looks for",
        }),
    stride: 256,
    jitter: 32,
    defaultIterations: 100_000,
    actors: [actor(0), actor(1)],
    alloc: () => new SharedArrayBuffer((MUTEX_WORDS + 4) * 4),
    attach: (d) => {
      const w = new Int32Array(d);
      return { w, m: new Mutex(w, 0, false) };
    },
    reset(s) {
      s.w.fill(0);
      s.w[M_READ] = -1;
      s.w[M_READ + 1] = -1;
    },
    arbiter: (s) => `${s.w[M_READ]}, ${s.w[M_READ + 1]}, ${s.w[M_COUNTER]}`,
    outcomes: [
      { id: "0, 1, 2", kind: "ACCEPTABLE", description: "t0 went first, t1 saw its increment" },
      { id: "1, 0, 2", kind: "ACCEPTABLE", description: "t1 went first, t0 saw its increment" },
      {
        id: "0, 0, 1",
        kind: "FORBIDDEN",
        description: "lost update: both read 0, so both were inside the critical section at once",
      },
    ],
  });
}

// ---------------------------------------------------------------------------------------------
// b. request and ack: A is a vCPU in guest mode with a TLB entry, polling safe points and using
// its TLB; B calls kvm_flush_remote_tlbs, then raises a flag. Once A sees the flag, its TLB
// must not hold the entry any more.

const RQ_FLAG = 0; // B's kvm_flush_remote_tlbs has returned
const RQ_STALE = 1; // A's TLB still hit after A saw the flag
const RQ_WHERE = 2; // where A flushed: 0 nowhere, 1 at a safe point, 2 re-entering after a VM exit
const RQ_GAVE_UP = 3;
const RQ_WORDS = 4;
const RQ_GFN = 7;
const RQ_PFN = 42;
const RQ_GIVE_UP_MS = 5000;

interface RequestData {
  kvm: KvmShared;
  res: SharedArrayBuffer;
}

interface RequestState {
  kvm: Kvm;
  res: Int32Array;
  vcpu: Vcpu;
}

/**
 * Bug for the negative control: vcpu_enter_guest reading requests before publishing mode = IN,
 * with no re-check after (the smp_mb and second look KVM has: "We should set ->mode before
 * check ->requests"). A request made in between is neither seen now nor waited for by the
 * flusher, which finds the vCPU OUTSIDE_GUEST_MODE.
 */
function enterGuestNoRecheck(v: Vcpu): void {
  const req = axchg(v.kvm.vcpu, VCPU.requests(v.id), 0);
  if ((req & KVM_REQ_TLB_FLUSH) !== 0) v.tlb.flush();
  astore(v.kvm.vcpu, VCPU.mode(v.id), IN_GUEST_MODE);
}

function requestTest(name: string, broken: boolean): AnyStressTest {
  const where = ["nowhere", "safe point", "re-entry"];
  const stale = (w: number): OutcomeSpec => ({
    id: `stale, flushed at ${where[w]}`,
    kind: "FORBIDDEN",
    description: "A used its pre-flush TLB entry after B's kvm_flush_remote_tlbs had returned",
  });
  return define<RequestState, RequestData>({
    name,
    description:
      "A: vCPU 0 in guest mode with a TLB entry, polling safePoint() and using its TLB (on 3 of 4 iterations with one VM exit and re-entry early on); B: kvm_flush_remote_tlbs, then a flag. Outcome: did A's TLB still hit once A saw the flag, and where A flushed",
    ...(broken
      ? {
          control:
            "A's re-entry after its VM exit reads requests before setting mode = IN and never re-checks; a flush that lands in between finds A outside guest mode, does not wait, and A keeps its stale entry",
        }
      : {}),
    stride: 32,
    jitter: 64,
    defaultIterations: 40_000,
    actors: [
      {
        name: "vcpu",
        prepare(s) {
          s.vcpu.enterGuest();
          s.vcpu.tlb.fill(RQ_GFN, RQ_PFN, true);
        },
        run(s, iter) {
          const v = s.vcpu;
          const res = s.res;
          const exitAt = (iter & 3) - 1; // -1: no VM exit
          let at = 0;
          let t0 = 0;
          for (let k = 0; ; k++) {
            if (k === exitAt) {
              const f = v.tlb.flushes;
              v.exitGuest();
              if (broken) enterGuestNoRecheck(v);
              else v.enterGuest();
              if (v.tlb.flushes !== f) at = 2;
            }
            const f = v.tlb.flushes;
            v.safePoint();
            if (v.tlb.flushes !== f) at = 1;
            const done = Atomics.load(res, RQ_FLAG) !== 0;
            const hit = v.tlb.lookup(RQ_GFN) !== -1;
            if (done) {
              res[RQ_STALE] = hit ? 1 : 0;
              break;
            }
            if ((k & 1023) === 1023) {
              if (t0 === 0) t0 = performance.now();
              else if (performance.now() - t0 > RQ_GIVE_UP_MS) {
                res[RQ_GAVE_UP] = 1;
                break;
              }
            }
          }
          res[RQ_WHERE] = at;
          v.exitGuest();
        },
      },
      {
        name: "flusher",
        run(s) {
          kvm_flush_remote_tlbs(s.kvm);
          Atomics.store(s.res, RQ_FLAG, 1);
        },
      },
    ],
    alloc: () => ({ kvm: tinyKvmShared(0, 1), res: new SharedArrayBuffer(RQ_WORDS * 4) }),
    attach(d) {
      const kvm = new Kvm(d.kvm);
      return { kvm, res: new Int32Array(d.res), vcpu: new Vcpu(kvm, 0, 4) };
    },
    reset(s) {
      const v = s.kvm.vcpu;
      v[VCPU.mode(0)] = OUTSIDE_GUEST_MODE;
      v[VCPU.requests(0)] = 0;
      v[VCPU.run(0)] = 0;
      v[VCPU.state(0)] = VcpuState.Running;
      s.kvm.ctl[CTL.nr_vcpus] = 1;
      s.res.fill(0);
    },
    arbiter(s) {
      if (s.res[RQ_GAVE_UP] !== 0) return "A gave up";
      return `${s.res[RQ_STALE] !== 0 ? "stale" : "fresh"}, flushed at ${where[s.res[RQ_WHERE]] ?? "?"}`;
    },
    outcomes: [
      {
        id: "fresh, flushed at safe point",
        kind: "ACCEPTABLE",
        description:
          "B kicked A in guest mode and waited; A acknowledged at a safe point and flushed on its way back in",
      },
      {
        id: "fresh, flushed at re-entry",
        kind: "ACCEPTABLE_INTERESTING",
        description:
          "B's request met A in (or leaving for) a VM exit: A flushed when it re-entered guest mode, before any TLB use",
      },
      stale(0),
      stale(1),
      stale(2),
      {
        id: "A gave up",
        kind: "FORBIDDEN",
        description: `B's flush did not return within ${RQ_GIVE_UP_MS} ms while A kept acknowledging`,
      },
    ],
  });
}

// ---------------------------------------------------------------------------------------------
// c. the lockless rmap walk against concurrent add and remove on the same head and on another
// head that shares the descriptor slab.

const RW_X = 2; // the walked head (rmapPool index = head id)
const RW_Y = 3; // the other head
const RW_STABLE = [11, 12, 13]; // entries (spte index + 1) that stay on X throughout
const RW_CHURN = [21, 22, 23, 24, 25];
const RW_FOREIGN = [31, 32];
const RW_B_DONE = 0;
const RW_MISSED = 1; // walks that did not visit every stable entry
const RW_RESTARTS = 2;
const RW_FOREIGN_WALKS = 3; // walks that visited Y's entries
const RW_BOGUS = 4; // walks that visited a value that is on neither list
const RW_WORDS = 8;
const RW_MAX_WALKS = 100_000;

interface RmapData {
  kvm: KvmShared;
  res: SharedArrayBuffer;
}

interface RmapState {
  kvm: Kvm;
  res: Int32Array;
  seen: number;
  foreign: boolean;
  bogus: boolean;
  visit: (spte: number) => void;
}

type RmapOp = [add: boolean, head: number, entry: number];

/**
 * B's operations, all under mmu_lock. With the seed's removal (forward move) they do, from
 *   X: d2[C4] -> d1[S2 C3 S3] -> d0[C1 S1 C2] -> nulls(X),  Y: F1
 * remove C1 (C4 fills its hole in d0; d2 empties and is freed), remove C3 (S3 moves down
 * inside the first descriptor), add F2 to Y (Y becomes a chain on the reused d2), remove C2
 * (S3 moves from the first descriptor into d0), add C5 to X.
 */
const RW_OPS: RmapOp[] = [
  [false, RW_X, 21],
  [false, RW_X, 23],
  [true, RW_Y, 32],
  [false, RW_X, 22],
  [true, RW_X, 25],
];

function rmapTest(name: string, bugs: BugName[]): AnyStressTest {
  const outcomes: OutcomeSpec[] = [];
  for (const missed of [false, true])
    for (const restarted of [false, true])
      for (const foreign of [false, true]) {
        let kind: OutcomeKind = "ACCEPTABLE";
        let description =
          "every walk visited S1..S3 without meeting a descriptor being freed or reused (or B was done first)";
        if (missed) {
          kind = "FORBIDDEN";
          description = "a walk missed an entry that was on the list the whole time";
        } else if (foreign && !restarted) {
          kind = "FORBIDDEN";
          description = "a walk ran onto Y's chain through a reused descriptor and did not restart";
        } else if (foreign) {
          kind = "ACCEPTABLE_INTERESTING";
          description =
            "a walk was carried onto Y's chain by the reused descriptor, met Y's nulls and restarted; nothing missed";
        } else if (restarted) {
          kind = "ACCEPTABLE_INTERESTING";
          description =
            "a walk met a descriptor being (re)initialised (more == 0) or a foreign nulls and restarted; nothing missed";
        }
        outcomes.push({ id: rmapOutcome(missed, restarted, foreign), kind, description });
      }
  const bogus: OutcomeSpec = {
    id: "garbage",
    kind: "FORBIDDEN",
    description: "a walk visited a value that was never on either list",
  };
  return define<RmapState, RmapData>({
    name,
    description:
      "A: pte_list_walk_lockless of head X (3 stable and 4 churning entries), repeated until B is done; B under mmu_lock: 3 removals from X, an add to X, an add to head Y on a freed descriptor (every other iteration dropping the lock between operations). Outcome: did every walk see the stable entries; did one restart; did one visit Y's chain",
    ...(bugs.length
      ? {
          control: `bug ${bugs.join(", ")} put back: walks may miss stable entries, how often depends on thread timing (test/mmu/rmap_race.test.ts and the explorer show it too)`,
        }
      : {}),
    stride: 64,
    jitter: 96,
    defaultIterations: 40_000,
    actors: [
      {
        name: "walker",
        run(s) {
          const kvm = s.kvm;
          const res = s.res;
          const r0 = kvm.rmapStats.restarts;
          let missed = 0;
          let foreign = 0;
          let bogusWalks = 0;
          let walks = 0;
          do {
            s.seen = 0;
            s.foreign = false;
            s.bogus = false;
            pte_list_walk_lockless(kvm, kvm.rmapPool, RW_X, RW_X, s.visit);
            if (s.seen !== 7) missed++;
            if (s.foreign) foreign++;
            if (s.bogus) bogusWalks++;
          } while (Atomics.load(res, RW_B_DONE) === 0 && ++walks < RW_MAX_WALKS);
          res[RW_MISSED] = missed;
          res[RW_RESTARTS] = kvm.rmapStats.restarts - r0;
          res[RW_FOREIGN_WALKS] = foreign;
          res[RW_BOGUS] = bogusWalks;
        },
      },
      {
        name: "writer",
        run(s, iter) {
          const kvm = s.kvm;
          const split = (iter & 1) === 1;
          kvm.mmu_lock.write_lock();
          for (const [add, head, e] of RW_OPS) {
            if (add) pte_list_add(kvm, kvm.rmapPool, head, head, e);
            else pte_list_remove(kvm, kvm.rmapPool, head, e);
            if (split) {
              kvm.mmu_lock.write_unlock();
              kvm.mmu_lock.write_lock();
            }
          }
          kvm.mmu_lock.write_unlock();
          Atomics.store(s.res, RW_B_DONE, 1);
        },
      },
    ],
    alloc: () => ({ kvm: tinyKvmShared(bugMask(bugs), 8), res: new SharedArrayBuffer(RW_WORDS * 4) }),
    attach(d) {
      const s: RmapState = {
        kvm: new Kvm(d.kvm),
        res: new Int32Array(d.res),
        seen: 0,
        foreign: false,
        bogus: false,
        visit: (spte) => {
          const e = spte + 1;
          const i = RW_STABLE.indexOf(e);
          if (i >= 0) s.seen |= 1 << i;
          else if (RW_FOREIGN.includes(e)) s.foreign = true;
          else if (!RW_CHURN.includes(e)) s.bogus = true;
        },
      };
      return s;
    },
    reset(s) {
      const kvm = s.kvm;
      kvm.desc.fill(0);
      kvm.rmapPool.fill(0);
      for (const w of [CTL.desc_free, CTL.desc_high, CTL.desc_used, CTL.desc_allocs]) kvm.ctl[w] = 0;
      kvm.mmu_lock.write_lock();
      const [s1, s2, s3] = RW_STABLE;
      const [c1, c2, c3, c4] = RW_CHURN;
      for (const e of [c1, s1, c2, s2, c3, s3, c4]) pte_list_add(kvm, kvm.rmapPool, RW_X, RW_X, e);
      pte_list_add(kvm, kvm.rmapPool, RW_Y, RW_Y, RW_FOREIGN[0]);
      kvm.mmu_lock.write_unlock();
      s.res.fill(0);
    },
    arbiter(s) {
      const res = s.res;
      if (res[RW_BOGUS] !== 0) return bogus.id;
      return rmapOutcome(res[RW_MISSED] !== 0, res[RW_RESTARTS] !== 0, res[RW_FOREIGN_WALKS] !== 0);
    },
    outcomes: [...outcomes, bogus],
  });
}

function rmapOutcome(missed: boolean, restarted: boolean, foreign: boolean): string {
  return `${missed ? "MISSED" : "all seen"}, ${restarted ? "restarted" : "no restart"}${foreign ? ", via Y" : ""}`;
}

// ---------------------------------------------------------------------------------------------
// d. fast_page_fault against one step of the lockless get-dirty-log, on one page of a tiny VM.

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

function fastPfTest(name: string, markFirst: boolean, wp: "locked" | "lockless"): AnyStressTest {
  const outcomes: OutcomeSpec[] = [
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
  ];
  for (const start of ["clean", "dirty"])
    for (const r of [0, 1])
      outcomes.push({
        id: `${start}: W=1 D=0 R=${r}`,
        kind: "FORBIDDEN",
        description: "writable spte with a clear dirty bit: the next guest write is never reported",
      });
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
      {
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
      },
    ],
    alloc() {
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
    },
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
    outcomes,
  });
}

// ---------------------------------------------------------------------------------------------
// Self-tests of the harness: an actor that throws mid-run (the run must fail with its message,
// not hang at a barrier), and an arbiter that names an outcome the spec does not list.

function selfTest(name: string): AnyStressTest {
  const throws = name === "selftest-throw";
  return define<Int32Array, SharedArrayBuffer>({
    name,
    hidden: true,
    description: throws ? "actor t1 throws at iteration 100" : "the arbiter names an unlisted outcome",
    stride: 8,
    jitter: 0,
    defaultIterations: 1000,
    actors: [
      { name: "t0", run: (s) => void Atomics.add(s, 0, 1) },
      {
        name: "t1",
        run(s, iter) {
          if (throws && iter === 100) throw new Error("selftest: t1 throws at iteration 100");
          Atomics.add(s, 0, 1);
        },
      },
    ],
    alloc: () => new SharedArrayBuffer(8),
    attach: (d) => new Int32Array(d),
    reset: (s) => s.fill(0),
    arbiter: (s, iter) => (iter % 10 === 9 ? "surprise" : String(s[0])),
    outcomes: [{ id: "2", kind: "ACCEPTABLE", description: "both actors ran" }],
  });
}

export const STRESS_TESTS: Record<string, AnyStressTest> = {
  mutex: mutexTest("mutex", true),
  "request-ack": requestTest("request-ack", false),
  "rmap-walk": rmapTest("rmap-walk", []),
  "fast-pf-wp": fastPfTest("fast-pf-wp", false, "lockless"),
  "fast-pf-wp@locked": fastPfTest("fast-pf-wp@locked", false, "locked"),
  // negative controls
  "mutex-none": mutexTest("mutex-none", false),
  "request-ack@no-recheck": requestTest("request-ack@no-recheck", true),
  "rmap-walk@backward-move": rmapTest("rmap-walk@backward-move", ["backward-move"]),
  "rmap-walk@no-nulls-check": rmapTest("rmap-walk@no-nulls-check", ["no-nulls-check"]),
  "fast-pf-wp@mark-before-cas": fastPfTest("fast-pf-wp@mark-before-cas", true, "lockless"),
  // the harness's own checks (hidden from listings)
  "selftest-throw": selfTest("selftest-throw"),
  "selftest-unlisted": selfTest("selftest-unlisted"),
};

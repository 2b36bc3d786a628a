/**
 * The stress tests of `kvmmu stress` (src/verify/stress.ts), by name. Every actor runs production
 * code (the mutex, the request/ack protocol, the lockless rmap walk, fast_page_fault and the
 * lockless get-dirty-log); the negative controls wire one known-wrong order on purpose to show
 * what the harness can and cannot observe on real threads.
 *
 * This module is imported by the stress workers too, so it gathers all actor and setup code: the
 * mutex and request/ack tests here, the rmap walk in stress_rmap.ts, the fast page fault in
 * stress_fast_pf.ts.
 */
import {
  CTL,
  IN_GUEST_MODE,
  Kvm,
  KVM_REQ_TLB_FLUSH,
  KvmShared,
  OUTSIDE_GUEST_MODE,
  VCPU,
} from "../kvm_host.js";
import { define, tinyKvmShared } from "./stress_spec.js";
import type { ActorSpec, AnyStressTest, OutcomeSpec } from "./stress_spec.js";
import { Mutex, MUTEX_WORDS } from "../sync/mutex.js";
import { astore, axchg } from "../sync/atomic.js";
import { kvm_flush_remote_tlbs, VcpuState } from "../kvm/requests.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { rmapTest } from "./stress_rmap.js";
import { fastPfTest } from "./stress_fast_pf.js";

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

const RQ_WHERE_NAMES = ["nowhere", "safe point", "re-entry"];

function rqStale(w: number): OutcomeSpec {
  return {
    id: `stale, flushed at ${RQ_WHERE_NAMES[w]}`,
    kind: "FORBIDDEN",
    description: "A used its pre-flush TLB entry after B's kvm_flush_remote_tlbs had returned",
  };
}

const RQ_OUTCOMES: OutcomeSpec[] = [
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
  rqStale(0),
  rqStale(1),
  rqStale(2),
  {
    id: "A gave up",
    kind: "FORBIDDEN",
    description: `B's flush did not return within ${RQ_GIVE_UP_MS} ms while A kept acknowledging`,
  },
];

/**
 * A: vCPU 0 in guest mode polls safePoint() and uses its TLB until it sees B's flag (on 3 of 4
 * iterations with one VM exit and re-entry early on; `broken`: the re-entry of the control).
 */
function requestVcpuActor(broken: boolean): ActorSpec<RequestState> {
  return {
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
  };
}

function requestTest(name: string, broken: boolean): AnyStressTest {
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
      requestVcpuActor(broken),
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
      return `${s.res[RQ_STALE] !== 0 ? "stale" : "fresh"}, flushed at ${RQ_WHERE_NAMES[s.res[RQ_WHERE]] ?? "?"}`;
    },
    outcomes: RQ_OUTCOMES,
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

/**
 * Stress test c of `kvmmu stress` (src/verify/stress_tests.ts): the lockless rmap walk against
 * concurrent add and remove on the same head and on another head that shares the descriptor slab.
 */
import { BugName, CTL, Kvm, KvmShared } from "../kvm_host.js";
import { bugMask, define, tinyKvmShared } from "./stress_spec.js";
import type { ActorSpec, AnyStressTest, OutcomeKind, OutcomeSpec } from "./stress_spec.js";
import { pte_list_add, pte_list_remove, pte_list_walk_lockless } from "../mmu/rmap.js";

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

const RW_GARBAGE: OutcomeSpec = {
  id: "garbage",
  kind: "FORBIDDEN",
  description: "a walk visited a value that was never on either list",
};

/** Every (missed, restarted, foreign) outcome with its kind, then "garbage". */
function rmapOutcomes(): OutcomeSpec[] {
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
  return [...outcomes, RW_GARBAGE];
}

/** A: walks X until B is done; counts walks that missed, restarted, went foreign or saw garbage. */
const rmapWalker: ActorSpec<RmapState> = {
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
};

/** B: RW_OPS under mmu_lock (on odd iterations dropping it between operations), then the flag. */
const rmapWriter: ActorSpec<RmapState> = {
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
};

function rmapAttach(d: RmapData): RmapState {
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
}

/** X: d2[C4] -> d1[S2 C3 S3] -> d0[C1 S1 C2] -> nulls(X); Y: F1 (RW_OPS's comment). */
function rmapReset(s: RmapState): void {
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
}

export function rmapTest(name: string, bugs: BugName[]): AnyStressTest {
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
    actors: [rmapWalker, rmapWriter],
    alloc: () => ({ kvm: tinyKvmShared(bugMask(bugs), 8), res: new SharedArrayBuffer(RW_WORDS * 4) }),
    attach: rmapAttach,
    reset: rmapReset,
    arbiter(s) {
      const res = s.res;
      if (res[RW_BOGUS] !== 0) return RW_GARBAGE.id;
      return rmapOutcome(res[RW_MISSED] !== 0, res[RW_RESTARTS] !== 0, res[RW_FOREIGN_WALKS] !== 0);
    },
    outcomes: rmapOutcomes(),
  });
}

function rmapOutcome(missed: boolean, restarted: boolean, foreign: boolean): string {
  return `${missed ? "MISSED" : "all seen"}, ${restarted ? "restarted" : "no restart"}${foreign ? ", via Y" : ""}`;
}

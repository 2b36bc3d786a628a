/**
 * Lockless walks interleaved with pte_list writers at the granularity of single shared-memory
 * operations, deterministically on one thread, through the scheduling hook of src/sync/atomic.ts:
 *
 *  - a complete walk runs at every store a writer makes (so it sees every intermediate state:
 *    this is where "destination before source" matters);
 *  - a writer operation runs at random loads of a walk (seeded), i.e. between any two loads of
 *    the walker, possibly many times in one walk.
 *
 * A walk must visit every entry that is on the list for the whole walk: for the first kind,
 * every entry but the one being added or removed; for the second, every entry present when the
 * walk started and not removed during it (a few "stable" entries are never removed at all).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { BUG, Kvm } from "../../src/kvm_host.js";
import { Op, setSchedHook } from "../../src/sync/atomic.js";
import { pte_list_add, pte_list_remove, pte_list_walk_lockless } from "../../src/mmu/rmap.js";
import { listEntries, makeKvm, Rng, sorted, viewList } from "../helpers/kvm.js";

const HEADS = [0, 1, 2];
const STRIDE = 40;
const STABLE = 4;
const MAX_LOADS = 1_000_000;

class Lists {
  readonly kvm: Kvm;
  readonly heads: Int32Array;
  readonly models = HEADS.map(() => new Set<number>());
  constructor(
    bugs: number,
    readonly rng: Rng,
  ) {
    this.kvm = makeKvm({ bugs, maxDesc: 128 });
    this.heads = this.kvm.rmapPool;
    // Stable and churn entries interleaved, so that stable entries share descriptors with
    // entries that get removed (and so get moved around).
    for (const [k, hi] of HEADS.entries())
      for (let i = 0; i < STABLE; i++)
        for (const e of [k * STRIDE + STABLE + 1 + i, k * STRIDE + 1 + i]) {
          pte_list_add(this.kvm, this.heads, hi, hi, e);
          this.models[k].add(e);
        }
  }

  /** The entry the running writer operation adds or removes (0: none). */
  current = 0;
  /** Entries removed since the walk in progress started. */
  removed = new Set<number>();
  /** Loads of the walk in progress (0: no walk), counted by the hooks: a walk that never ends fails. */
  loads = 0;

  countLoad(kind: Op): void {
    if (kind === Op.Load && this.loads > 0 && ++this.loads > MAX_LOADS)
      throw new Error("a lockless walk does not end");
  }

  /** One random add or remove of a churn entry (as a writer holding mmu_lock). */
  writerOp(): void {
    const k = this.rng.below(HEADS.length);
    const e = k * STRIDE + STABLE + 1 + this.rng.below(STRIDE - STABLE);
    const m = this.models[k];
    this.current = e;
    if (m.has(e)) {
      this.removed.add(e);
      pte_list_remove(this.kvm, this.heads, HEADS[k], e);
      m.delete(e);
    } else {
      pte_list_add(this.kvm, this.heads, HEADS[k], HEADS[k], e);
      m.add(e);
    }
    this.current = 0;
  }

  /**
   * Walks head k locklessly; returns the entries it missed among those on the list when it
   * started (less `current`) and not removed while it ran.
   */
  walk(k: number): number[] {
    const must = new Set(this.models[k]);
    must.delete(this.current);
    this.removed = new Set();
    const seen = new Set<number>();
    this.loads = 1;
    try {
      pte_list_walk_lockless(this.kvm, this.heads, HEADS[k], HEADS[k], (s) => seen.add(s + 1));
    } finally {
      this.loads = 0;
    }
    for (let e = k * STRIDE + 1; e <= k * STRIDE + STABLE; e++) assert.ok(must.has(e), "stable entries stay");
    return sorted([...must].filter((e) => !seen.has(e) && !this.removed.has(e)));
  }

  checkQuiescent(): void {
    for (const [k, hi] of HEADS.entries()) {
      assert.deepEqual(sorted(listEntries(viewList(this.kvm, this.heads, hi))), sorted(this.models[k]));
      assert.deepEqual(this.walk(k), []);
    }
  }
}

/** A complete walk of every head at each store a writer makes. */
function walksAtWriterStores(bugs: number, seed: number, ops: number): { walks: number; misses: string[] } {
  const l = new Lists(bugs, new Rng(seed));
  let busy = false;
  let walks = 0;
  const misses: string[] = [];
  let op = 0;
  setSchedHook((kind, arr) => {
    l.countLoad(kind);
    if (busy || kind !== Op.Store || (arr !== l.kvm.desc && arr !== l.heads)) return;
    busy = true;
    try {
      for (const k of HEADS.keys()) {
        walks++;
        const m = l.walk(k);
        if (m.length > 0) misses.push(`op ${op}, head ${k}: missed ${m.join(",")}`);
      }
    } finally {
      busy = false;
    }
  });
  try {
    for (op = 0; op < ops; op++) l.writerOp();
  } finally {
    setSchedHook(null);
  }
  l.checkQuiescent();
  return { walks, misses };
}

/** Walks with a writer operation injected at random walker loads (probability 1/period). */
function writersAtWalkerLoads(bugs: number, seed: number, walks: number, period: number) {
  const l = new Lists(bugs, new Rng(seed));
  let busy = false;
  let injected = 0;
  const misses: string[] = [];
  setSchedHook((kind, arr) => {
    l.countLoad(kind);
    if (busy || kind !== Op.Load || (arr !== l.kvm.desc && arr !== l.heads)) return;
    if (l.rng.below(period) !== 0) return;
    busy = true;
    try {
      l.writerOp();
      injected++;
    } finally {
      busy = false;
    }
  });
  try {
    for (let w = 0; w < walks; w++) {
      const k = w % HEADS.length;
      const m = l.walk(k);
      if (m.length > 0) misses.push(`walk ${w}, head ${k}: missed ${m.join(",")}`);
    }
  } finally {
    setSchedHook(null);
  }
  l.checkQuiescent();
  return { injected, misses };
}

test("rmap interleave: a walk at every intermediate state of the writers sees every other entry", () => {
  for (const seed of [1, 2]) {
    const { walks, misses } = walksAtWriterStores(0, seed, 1500);
    assert.ok(walks > 10_000, `${walks} walks`);
    assert.deepEqual(misses.slice(0, 5), []);
  }
});

test("rmap interleave: writers between any two loads of a walk never hide an entry that stays", () => {
  for (const [seed, period] of [
    [1, 3],
    [2, 8],
    [3, 20],
  ] as const) {
    const { injected, misses } = writersAtWalkerLoads(0, seed, 6000, period);
    assert.ok(injected > 5000, `${injected} writer ops injected`);
    assert.deepEqual(misses.slice(0, 5), [], `seed ${seed}, period ${period}`);
  }
});

test("rmap interleave: negative controls: the bugs backward-move and no-nulls-check do miss entries", (t) => {
  for (const bug of ["backward-move", "no-nulls-check"] as const) {
    let total = 0;
    for (const [seed, period] of [
      [1, 3],
      [2, 8],
      [3, 20],
    ] as const) {
      const { misses } = writersAtWalkerLoads(BUG[bug], seed, 6000, period);
      total += misses.length;
    }
    t.diagnostic(`${bug}: ${total} walks missed an entry that stayed on the list`);
    assert.ok(total > 0, `${bug}: the interleavings that break it were generated`);
  }
});

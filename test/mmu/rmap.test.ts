import { test } from "node:test";
import assert from "node:assert/strict";
import { BUG, CTL, DESC, Kvm, PARENT_HEAD_ID_BASE, PTE_LIST_EXT } from "../../src/kvm_host.js";
import {
  is_nulls,
  make_nulls,
  nulls_owner,
  pte_list_add,
  pte_list_count,
  pte_list_remove,
  pte_list_walk,
  pte_list_walk_lockless,
  rmap_get_first,
  RmapCorrupt,
} from "../../src/mmu/rmap.js";
import { listEntries, makeKvm, positions, range, Rng, sorted, viewList } from "../helpers/kvm.js";

/**
 * Checks the list at heads[hi] holds exactly `want` (entry values) and keeps the structure of
 * the series (patches 6-7): only the first descriptor may be non-full, it is packed from index
 * 0 and non-empty, and the chain ends with the nulls of headId.
 */
function checkList(kvm: Kvm, heads: Int32Array, hi: number, headId: number, want: Iterable<number>): void {
  const w = sorted(want);
  const v = viewList(kvm, heads, hi);
  const got = listEntries(v);
  assert.deepEqual(sorted(got), w, `head ${hi}: entries`);
  assert.equal(new Set(got).size, got.length, `head ${hi}: no duplicates`);
  if (w.length === 0) {
    assert.equal(v.kind, "empty", `head ${hi}: an empty list has head 0`);
    return;
  }
  if (v.kind === "single") return;
  assert.equal(v.kind, "chain");
  const first = v.slots[0];
  const k = first.filter((e) => e !== 0).length;
  assert.ok(k >= 1, `head ${hi}: first descriptor is empty`);
  assert.deepEqual(
    first.map((e) => e !== 0),
    range(0, PTE_LIST_EXT).map((i) => i < k),
    `head ${hi}: first descriptor packed from index 0: ${first.join(",")}`,
  );
  for (let p = 1; p < v.slots.length; p++)
    assert.ok(
      v.slots[p].every((e) => e !== 0),
      `head ${hi}: descriptor #${p} of ${v.slots.length} is not full`,
    );
  assert.ok(is_nulls(v.end), `head ${hi}: chain ends with ${v.end}, not a nulls`);
  assert.equal(v.end, make_nulls(headId));
  assert.equal(nulls_owner(v.end), headId, `head ${hi}: nulls names its owner`);
}

/** Descriptors in use according to the chains, compared with the slab's counter. */
function checkSlab(kvm: Kvm, heads: Int32Array, his: number[]): void {
  let n = 0;
  for (const hi of his) n += viewList(kvm, heads, hi).descs.length;
  assert.equal(kvm.ctl[CTL.desc_used], n, "CTL.desc_used matches the descriptors on the chains");
}

function walkAll(kvm: Kvm, heads: Int32Array, hi: number): number[] {
  const out: number[] = [];
  pte_list_walk(kvm, heads, hi, (s) => out.push(s + 1));
  return out;
}

function walkLockless(kvm: Kvm, heads: Int32Array, hi: number, headId: number): number[] {
  const out: number[] = [];
  pte_list_walk_lockless(kvm, heads, hi, headId, (s) => out.push(s + 1));
  return out;
}

test("rmap: nulls encoding", () => {
  for (const id of [0, 1, 7, 1023, PARENT_HEAD_ID_BASE, PARENT_HEAD_ID_BASE + 63]) {
    const n = make_nulls(id);
    assert.equal(is_nulls(n), true);
    assert.equal(nulls_owner(n), id);
  }
  // a descriptor pointer ((d + 1) << 1) is even: never a nulls
  for (const d of [0, 1, 255]) assert.equal(is_nulls((d + 1) << 1), false);
});

test("rmap: empty -> single -> desc chains, 1..20 entries; add returns the previous count", () => {
  for (const headId of [5, PARENT_HEAD_ID_BASE + 3]) {
    const kvm = makeKvm();
    const heads = kvm.rmapPool;
    const hi = 5;
    const model: number[] = [];
    assert.equal(pte_list_count(kvm, heads, hi), 0);
    assert.equal(rmap_get_first(kvm, heads, hi), -1);
    for (let n = 1; n <= 20; n++) {
      const e = 100 + n * 7;
      const before = model.length;
      assert.equal(
        pte_list_add(kvm, heads, hi, headId, e),
        before,
        `add #${n} returns the entries already there`,
      );
      model.push(e);
      checkList(kvm, heads, hi, headId, model);
      const v = viewList(kvm, heads, hi);
      if (n === 1) {
        assert.equal(v.kind, "single");
        assert.equal(heads[hi], e << 1);
      } else {
        assert.equal(v.kind, "chain");
        assert.equal(v.descs.length, Math.ceil(n / PTE_LIST_EXT), `${n} entries`);
        // new entries go into the first descriptor (head insertion of new descriptors)
        assert.ok(v.slots[0].includes(e), "the newest entry is in the first descriptor");
      }
      assert.equal(pte_list_count(kvm, heads, hi), n);
      checkSlab(kvm, heads, [hi]);
    }
  }
});

test("rmap: walkers visit exactly the entries of a quiescent list, each once", () => {
  const kvm = makeKvm();
  const heads = kvm.rmapPool;
  const rng = new Rng(11);
  for (let n = 0; n <= 20; n++) {
    const hi = 40 + n;
    const model = rng.shuffle(range(1, 200)).slice(0, n);
    for (const e of model) pte_list_add(kvm, heads, hi, hi, e);
    assert.deepEqual(sorted(walkAll(kvm, heads, hi)), sorted(model), `pte_list_walk, ${n} entries`);
    const w0 = kvm.rmapStats.walks;
    const r0 = kvm.rmapStats.restarts;
    const got = walkLockless(kvm, heads, hi, hi);
    assert.deepEqual(sorted(got), sorted(model), `pte_list_walk_lockless, ${n} entries`);
    assert.equal(kvm.rmapStats.walks, w0 + 1);
    assert.equal(kvm.rmapStats.restarts, r0, "no restart on a quiescent list");
    const first = rmap_get_first(kvm, heads, hi);
    if (n === 0) assert.equal(first, -1);
    else assert.ok(model.includes(first + 1), "rmap_get_first returns an entry (spte index)");
  }
});

test("rmap: removal in random orders keeps the structure; entries move only out of the first descriptor", () => {
  const rng = new Rng(0xc0ffee);
  const kvm = makeKvm();
  const heads = kvm.rmapPool;
  const hi = 3;
  for (let n = 1; n <= 20; n++) {
    for (let round = 0; round < 12; round++) {
      const entries = rng.shuffle(range(1, 60)).slice(0, n);
      for (const e of entries) pte_list_add(kvm, heads, hi, hi, e);
      const model = new Set(entries);
      for (const r of rng.shuffle([...entries])) {
        const before = viewList(kvm, heads, hi);
        const posBefore = positions(before);
        pte_list_remove(kvm, heads, hi, r);
        model.delete(r);
        checkList(kvm, heads, hi, hi, model);
        checkSlab(kvm, heads, [hi]);
        if (before.kind !== "chain") continue;
        const after = viewList(kvm, heads, hi);
        const firstEmptied = before.slots[0].filter((e) => e !== 0).length === 1;
        if (model.size === 0) {
          assert.equal(heads[hi], 0);
          continue;
        }
        // The first descriptor is freed once empty; no other descriptor leaves the chain.
        assert.deepEqual(after.descs, firstEmptied ? before.descs.slice(1) : before.descs);
        const removedAt = posBefore.get(r)!;
        const posAfter = positions(after);
        const moved = [...model].filter((e) => {
          const a = posBefore.get(e)!;
          const b = posAfter.get(e)!;
          return a.desc !== b.desc || a.i !== b.i;
        });
        assert.ok(moved.length <= 1, `one entry at most fills the hole, moved: ${moved.join(",")}`);
        for (const e of moved) {
          const a = posBefore.get(e)!;
          const b = posAfter.get(e)!;
          assert.equal(a.pos, 0, `entry ${e} moved out of descriptor #${a.pos}, not the first`);
          assert.deepEqual([b.desc, b.i], [removedAt.desc, removedAt.i], "the moved entry fills the hole");
          // later in the descending walk order: a lower index of the first desc, or a later desc
          assert.ok(removedAt.pos > 0 || removedAt.i < a.i, "the hole is after the source in walk order");
        }
        assert.deepEqual(sorted(walkLockless(kvm, heads, hi, hi)), sorted(model));
      }
      assert.equal(heads[hi], 0, "all removed: head is 0");
      assert.equal(kvm.ctl[CTL.desc_used], 0, "all descriptors went back to the slab");
    }
  }
});

test("rmap: random adds/removes on heads sharing the slab keep every list exact", () => {
  for (const seed of [1, 2, 3]) {
    const kvm = makeKvm();
    const heads = kvm.rmapPool;
    const rng = new Rng(seed);
    const his = [0, 1, 2, 3, 17];
    const models = his.map(() => new Set<number>());
    for (let op = 0; op < 3000; op++) {
      const h = rng.below(his.length);
      const hi = his[h];
      const m = models[h];
      const e = 1 + h * 1000 + rng.below(30);
      if (m.has(e)) {
        pte_list_remove(kvm, heads, hi, e);
        m.delete(e);
      } else {
        assert.equal(pte_list_add(kvm, heads, hi, hi, e), m.size);
        m.add(e);
      }
      if (op % 50 === 0 || op > 2950) {
        his.forEach((x, k) => checkList(kvm, heads, x, x, models[k]));
        checkSlab(kvm, heads, his);
      }
    }
    his.forEach((x, k) => {
      assert.deepEqual(sorted(walkLockless(kvm, heads, x, x)), sorted(models[k]));
      assert.equal(pte_list_count(kvm, heads, x), models[k].size);
    });
  }
});

test("rmap: rmap_get_first drains a list (the kvm_unmap_rmapp loop)", () => {
  const kvm = makeKvm();
  const heads = kvm.rmapPool;
  const model = new Set(range(1, 15));
  for (const e of model) pte_list_add(kvm, heads, 9, 9, e);
  for (;;) {
    const s = rmap_get_first(kvm, heads, 9);
    if (s < 0) break;
    assert.ok(model.delete(s + 1), `rmap_get_first returned ${s}, not on the list`);
    pte_list_remove(kvm, heads, 9, s + 1);
  }
  assert.equal(model.size, 0);
  assert.equal(heads[9], 0);
  assert.equal(kvm.ctl[CTL.desc_used], 0);
});

test("rmap: removing an absent entry throws RmapCorrupt and leaves the list alone", () => {
  const kvm = makeKvm();
  const heads = kvm.rmapPool;
  assert.throws(() => pte_list_remove(kvm, heads, 0, 5), RmapCorrupt, "empty list");
  pte_list_add(kvm, heads, 0, 0, 5);
  assert.throws(() => pte_list_remove(kvm, heads, 0, 6), RmapCorrupt, "single, other entry");
  assert.equal(heads[0], 5 << 1);
  for (const n of [2, 3, 4, 8]) {
    const hi = 10 + n;
    for (const e of range(1, n + 1)) pte_list_add(kvm, heads, hi, hi, e);
    const before = viewList(kvm, heads, hi);
    const used = kvm.ctl[CTL.desc_used];
    assert.throws(
      () => pte_list_remove(kvm, heads, hi, 99),
      (e: unknown) => e instanceof RmapCorrupt && /98/.test(e.message),
      `chain of ${n}: the message names the spte`,
    );
    assert.deepEqual(viewList(kvm, heads, hi), before);
    assert.equal(kvm.ctl[CTL.desc_used], used);
  }
});

/**
 * Interleavings a writer can produce in the middle of a lockless walk, run deterministically: the
 * walk's k-th callback removes an entry (as a writer holding mmu_lock would between two loads of
 * the walker). Every entry that stays on the list for the whole walk must be visited.
 */
function removalDuringWalk(bugs: number): { cases: number; misses: string[] } {
  const misses: string[] = [];
  let cases = 0;
  const kvm = makeKvm({ bugs });
  const heads = kvm.rmapPool;
  for (let n = 2; n <= 10; n++) {
    for (let k = 0; k < n; k++) {
      for (let r = 1; r <= n; r++) {
        for (const e of range(1, n + 1)) pte_list_add(kvm, heads, 0, 0, e);
        const seen = new Set<number>();
        let calls = 0;
        pte_list_walk_lockless(kvm, heads, 0, 0, (s) => {
          seen.add(s + 1);
          if (calls++ === k && pte_list_count(kvm, heads, 0) === n) pte_list_remove(kvm, heads, 0, r);
        });
        cases++;
        const missed = range(1, n + 1).filter((e) => e !== r && !seen.has(e));
        if (missed.length > 0) misses.push(`n=${n} remove ${r} at call ${k}: missed ${missed.join(",")}`);
        // empty the list again for the next case (the slab is shared by all cases)
        for (const e of range(1, n + 1)) if (e !== r) pte_list_remove(kvm, heads, 0, e);
        assert.equal(heads[0], 0);
        assert.equal(kvm.ctl[CTL.desc_used], 0);
      }
    }
  }
  return { cases, misses };
}

test("rmap: forward move + descending walk: a removal at any point of a walk hides no other entry", () => {
  const { cases, misses } = removalDuringWalk(0);
  assert.ok(cases > 300);
  assert.deepEqual(misses, []);
});

test("rmap: bug backward-move: removal mid-walk does hide entries (3.11's move within a descriptor), found deterministically", () => {
  const { misses } = removalDuringWalk(BUG["backward-move"]);
  assert.ok(misses.length > 0, "the 3.11 move-last-entry-back + ascending walk misses a moved entry");
  // The changelog's case: one desc [A, B, C], the walker has visited A, A is removed, C moves to
  // index 0 and index 2 is cleared: C is never visited.
  assert.ok(misses.includes("n=3 remove 1 at call 0: missed 3"), misses.slice(0, 5).join("; "));
});

/**
 * Why nulls exist: the walker stands on head A's first descriptor when it is emptied, freed, and reused by
 * head B. Returns what the walker saw of A's other entries.
 */
function reusedDescDuringWalk(bugs: number): { seen: Set<number>; restarts: number } {
  const kvm = makeKvm({ bugs });
  const heads = kvm.rmapPool;
  const A = 1;
  const B = 2;
  for (const e of [1, 2, 3, 4]) pte_list_add(kvm, heads, A, A, e); // A -> [4,_,_] -> [1,2,3] -> nulls(A)
  const firstOfA = viewList(kvm, heads, A).descs[0];
  const seen = new Set<number>();
  let done = false;
  const r0 = kvm.rmapStats.restarts;
  pte_list_walk_lockless(kvm, heads, A, A, (s) => {
    seen.add(s + 1);
    if (done) return;
    done = true;
    pte_list_remove(kvm, heads, A, 4); // A's first desc empties and is freed
    pte_list_add(kvm, heads, B, B, 50);
    pte_list_add(kvm, heads, B, B, 51); // B's new desc is the one just freed
    assert.equal(viewList(kvm, heads, B).descs[0], firstOfA, "the slab handed the freed desc to B");
  });
  checkList(kvm, heads, A, A, [1, 2, 3]);
  checkList(kvm, heads, B, B, [50, 51]);
  return { seen, restarts: kvm.rmapStats.restarts - r0 };
}

test("rmap: a walker moved onto another head's chain by desc reuse restarts at the foreign nulls", () => {
  const { seen, restarts } = reusedDescDuringWalk(0);
  assert.equal(restarts, 1);
  for (const e of [1, 2, 3]) assert.ok(seen.has(e), `entry ${e} seen after the restart`);
});

test("rmap: bug no-nulls-check: the same walk returns at B's nulls and misses A's entries", () => {
  const { seen, restarts } = reusedDescDuringWalk(BUG["no-nulls-check"]);
  assert.equal(restarts, 0);
  // it read the desc's entries before the reuse, then followed `more` to B's nulls and stopped
  assert.deepEqual(sorted(seen), [4]);
});

test("rmap: the lockless walker restarts on a descriptor under construction (more == 0)", () => {
  const kvm = makeKvm();
  const heads = kvm.rmapPool;
  for (const e of [1, 2, 3, 4, 5]) pte_list_add(kvm, heads, 0, 0, e);
  const v = viewList(kvm, heads, 0);
  const lastMore = DESC.more(v.descs.at(-1)!);
  const saved = kvm.desc[lastMore];
  kvm.desc[lastMore] = 0;
  const r0 = kvm.rmapStats.restarts;
  const seen: number[] = [];
  pte_list_walk_lockless(kvm, heads, 0, 0, (s) => {
    seen.push(s + 1);
    if (seen.length === 6) kvm.desc[lastMore] = saved; // initialisation finishes during the second pass
  });
  assert.equal(kvm.rmapStats.restarts - r0, 1);
  assert.deepEqual(sorted(new Set(seen)), [1, 2, 3, 4, 5]);
  assert.equal(seen.length, 10, "the whole chain was walked twice");
});

test("rmap: parent_ptes heads (ids above PARENT_HEAD_ID_BASE) end with their own nulls", () => {
  const kvm = makeKvm();
  const heads = new Int32Array(new SharedArrayBuffer(64));
  const ids = [PARENT_HEAD_ID_BASE, PARENT_HEAD_ID_BASE + 1];
  for (const e of range(1, 8)) pte_list_add(kvm, heads, 0, ids[0], e);
  for (const e of range(20, 27)) pte_list_add(kvm, heads, 1, ids[1], e);
  checkList(kvm, heads, 0, ids[0], range(1, 8));
  checkList(kvm, heads, 1, ids[1], range(20, 27));
  assert.deepEqual(sorted(walkLockless(kvm, heads, 1, ids[1])), range(20, 27));
});

test("rmap: bug backward-move (3.11 removal) keeps the set exact when quiescent", () => {
  const rng = new Rng(77);
  for (let round = 0; round < 40; round++) {
    const kvm = makeKvm({ bugs: BUG["backward-move"] });
    const heads = kvm.rmapPool;
    const his = [0, 1, 2];
    const models = his.map(() => new Set<number>());
    for (let op = 0; op < 400; op++) {
      const h = rng.below(his.length);
      const e = 1 + h * 100 + rng.below(20);
      if (models[h].has(e)) {
        pte_list_remove(kvm, heads, his[h], e);
        models[h].delete(e);
      } else {
        pte_list_add(kvm, heads, his[h], his[h], e);
        models[h].add(e);
      }
    }
    for (const [k, hi] of his.entries()) {
      const v = viewList(kvm, heads, hi);
      assert.deepEqual(sorted(listEntries(v)), sorted(models[k]));
      assert.deepEqual(sorted(walkAll(kvm, heads, hi)), sorted(models[k]));
      assert.deepEqual(sorted(walkLockless(kvm, heads, hi, hi)), sorted(models[k]));
      if (v.kind === "chain") {
        // 3.11 invariants: every desc packed and non-empty; here the chain still ends in nulls
        for (const s of v.slots) {
          const k2 = s.filter((e) => e !== 0).length;
          assert.ok(k2 >= 1);
          assert.deepEqual(
            s.map((e) => e !== 0),
            range(0, 3).map((i) => i < k2),
          );
        }
        assert.equal(v.end, make_nulls(hi));
      }
    }
    checkSlab(kvm, heads, his);
  }
});

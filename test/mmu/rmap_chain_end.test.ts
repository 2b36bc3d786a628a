/**
 * The walks under mmu_lock end at their chain's nulls: with several lists side by side (so a walk
 * that went on past its end would land in another list's descriptors), for_each_rmap_spte and
 * pte_list_walk visit exactly their own entries. The callback throws on the first entry that is
 * not in its list or on a visit past the list's length, so a walk that does not stop fails at
 * once instead of looping.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { for_each_rmap_spte, pte_list_add, pte_list_walk } from "../../src/mmu/rmap.js";
import { makeKvm, range, sorted } from "../helpers/kvm.js";

/** Heads 0..5, head h holding 1 + 2h entries (spte indices 100h ...): single entries and chains. */
function lists(): { kvm: ReturnType<typeof makeKvm>; heads: Int32Array; members: number[][] } {
  const kvm = makeKvm();
  const heads = new Int32Array(new SharedArrayBuffer(64));
  const members: number[][] = [];
  for (let h = 0; h < 6; h++) members.push(range(100 * h, 100 * h + 1 + 2 * h));
  // Interleaved adds, so the lists' descriptors alternate in the slab.
  for (let k = 0; k < 11; k++)
    for (let h = 0; h < 6; h++) if (k < members[h].length) pte_list_add(kvm, heads, h, h, members[h][k] + 1);
  return { kvm, heads, members };
}

/** A callback that records its visits and throws on one no walk of `own` should make. */
function visitor(own: number[]): { seen: number[]; visit: (s: number) => void } {
  const seen: number[] = [];
  return {
    seen,
    visit(s) {
      if (!own.includes(s)) throw new Error(`visited ${s}, not in this list`);
      if (seen.length >= own.length)
        throw new Error(`visit ${seen.length + 1} of a ${own.length}-entry list`);
      seen.push(s);
    },
  };
}

test("for_each_rmap_spte stops at its chain's end, beside other chains", () => {
  const { kvm, heads, members } = lists();
  for (let h = 0; h < 6; h++) {
    const { seen, visit } = visitor(members[h]);
    for_each_rmap_spte(kvm, heads, h, (_k, s) => {
      visit(s);
      return 0;
    });
    assert.deepEqual(sorted(seen), members[h], `head ${h}`);
  }
});

test("pte_list_walk stops at its chain's end, beside other chains", () => {
  const { kvm, heads, members } = lists();
  for (let h = 0; h < 6; h++) {
    const { seen, visit } = visitor(members[h]);
    pte_list_walk(kvm, heads, h, visit);
    assert.deepEqual(sorted(seen), members[h], `head ${h}`);
  }
});

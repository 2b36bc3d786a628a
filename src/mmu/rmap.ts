/**
 * pte_list: the reverse map from a gfn (or, for parent_ptes, a shadow page) to the sptes that
 * point at it, in the form of the seed's patches 6-9.
 *
 * Head (one Int32 word; written under mmu_lock, read locklessly):
 *   0                  empty
 *   even, (e << 1)     a single entry e
 *   odd, (d << 1) | 1  a chain of pte_list_desc starting at descriptor d
 * Entries are spte indices + 1, so 0 is NULL.
 *
 * Descriptor: sptes[0..2] and `more`. `more` is 0 while the descriptor is under construction,
 * even ((d + 1) << 1) for the next descriptor, odd ((headId << 1) | 1) for the "nulls" that ends
 * the chain and names its owning head.
 *
 * Writers (mmu_lock held) keep: new entries go into the first descriptor, or into a new
 * descriptor pushed at the head; every descriptor but the first is full; a removed entry's hole
 * is filled from the first descriptor ("forward move"), destination stored before the source is
 * cleared. The lockless walker visits each descriptor from index 2 down to 0 and restarts on
 * `more == 0` or on another head's nulls; see pte_list_walk_lockless for why nothing is missed.
 */
import { BUG, DESC, Kvm, PTE_LIST_EXT } from "../kvm_host.js";
import { mmu_alloc_pte_list_desc, mmu_free_pte_list_desc } from "../alloc/slab.js";
import { aload, astore } from "../sync/atomic.js";
import { fieldAt } from "../layout.js";
import { gfn_to_memslot, gfn_to_rmap } from "../mem/memslot.js";

export function is_nulls(more: number): boolean {
  return (more & 1) === 1;
}

export function make_nulls(headId: number): number {
  return (headId << 1) | 1;
}

export function nulls_owner(more: number): number {
  return more >>> 1;
}

function descOf(more: number): number {
  return (more >>> 1) - 1;
}

function descPtr(d: number): number {
  return (d + 1) << 1;
}

/**
 * The spte index of a single-entry head value, or -1 (empty head or a chain). Lets the hot
 * harvest loops keep their inline single-entry path without decoding heads themselves.
 */
export function rmap_single_spte(v: number): number {
  return (v & 1) === 0 ? (v >>> 1) - 1 : -1;
}

/**
 * pte_list_add: mmu_lock held. Returns the number of entries that were already there
 * (it feeds RMAP_RECYCLE_THRESHOLD only).
 */
export function pte_list_add(kvm: Kvm, heads: Int32Array, hi: number, headId: number, e: number): number {
  const desc = kvm.desc;
  const v = heads[hi];
  if (v === 0) {
    astore(heads, hi, e << 1);
    return 0;
  }
  if ((v & 1) === 0) {
    const d = mmu_alloc_pte_list_desc(kvm);
    const b = DESC.sptes(d);
    astore(desc, b, v >>> 1);
    astore(desc, b + 1, e);
    astore(desc, b + 2, 0);
    astore(desc, DESC.more(d), make_nulls(headId));
    astore(heads, hi, (d << 1) | 1); // rcu_assign_pointer
    return 1;
  }
  const first = v >>> 1;
  const fb = DESC.sptes(first);
  for (let k = 0; k < PTE_LIST_EXT; k++) {
    if (desc[fb + k] === 0) {
      astore(desc, fb + k, e);
      return k + countTail(kvm, desc[DESC.more(first)]);
    }
  }
  const d = mmu_alloc_pte_list_desc(kvm);
  const b = DESC.sptes(d);
  astore(desc, b, e);
  astore(desc, b + 1, 0);
  astore(desc, b + 2, 0);
  astore(desc, DESC.more(d), descPtr(first));
  astore(heads, hi, (d << 1) | 1);
  return PTE_LIST_EXT + countTail(kvm, desc[DESC.more(first)]);
}

function countTail(kvm: Kvm, more: number): number {
  let n = 0;
  while (!is_nulls(more) && more !== 0) {
    n += PTE_LIST_EXT;
    more = kvm.desc[DESC.more(descOf(more))]!;
  }
  return n;
}

/** Thrown when an entry to remove is not on its list: the rmap is corrupt (KVM BUG()s). */
export class RmapCorrupt extends Error {}

/** pte_list_remove: mmu_lock held. */
export function pte_list_remove(kvm: Kvm, heads: Int32Array, hi: number, e: number): void {
  const desc = kvm.desc;
  const v = heads[hi];
  if (v === 0) throw new RmapCorrupt(`pte_list_remove: ${e - 1} on an empty list`);
  if ((v & 1) === 0) {
    if (v >>> 1 !== e) throw new RmapCorrupt(`pte_list_remove: ${e - 1} is not the single entry`);
    astore(heads, hi, 0);
    return;
  }
  const first = v >>> 1;
  let prev = -1;
  let d = first;
  for (;;) {
    const b = DESC.sptes(d);
    for (let i = 0; i < PTE_LIST_EXT; i++) {
      if (desc[b + i] === e) {
        if (kvm.bug(BUG["backward-move"])) desc_remove_entry_backward(kvm, heads, hi, d, i, prev);
        else desc_remove_entry_forward(kvm, heads, hi, first, d, i);
        return;
      }
    }
    const m = desc[DESC.more(d)];
    if (is_nulls(m) || m === 0) break;
    prev = d;
    d = descOf(m);
  }
  throw new RmapCorrupt(`pte_list_remove: ${e - 1} not found`);
}

/** The seed's removal: fill the hole from the first descriptor (patch 6). */
function desc_remove_entry_forward(
  kvm: Kvm,
  heads: Int32Array,
  hi: number,
  first: number,
  d: number,
  i: number,
): void {
  const desc = kvm.desc;
  const fb = DESC.sptes(first);
  let j = PTE_LIST_EXT - 1;
  while (desc[fb + j] === 0) j--;
  if (d !== first || i !== j) astore(desc, DESC.sptes(d) + i, desc[fb + j]); // destination first,
  astore(desc, fb + j, 0); // then the source
  if (j !== 0) return;
  const m = desc[DESC.more(first)];
  astore(heads, hi, is_nulls(m) ? 0 : (descOf(m) << 1) | 1);
  mmu_free_pte_list_desc(kvm, first);
}

/** Bug `backward-move` (3.11): the last entry of the same descriptor fills the hole. */
function desc_remove_entry_backward(
  kvm: Kvm,
  heads: Int32Array,
  hi: number,
  d: number,
  i: number,
  prev: number,
): void {
  const desc = kvm.desc;
  const b = DESC.sptes(d);
  let j = PTE_LIST_EXT - 1;
  while (desc[b + j] === 0) j--;
  if (i !== j) astore(desc, b + i, desc[b + j]);
  astore(desc, b + j, 0);
  if (j !== 0) return;
  const m = desc[DESC.more(d)];
  if (prev >= 0) astore(desc, DESC.more(prev), m);
  else astore(heads, hi, is_nulls(m) ? 0 : (descOf(m) << 1) | 1);
  mmu_free_pte_list_desc(kvm, d);
}

/** for_each_rmap_spte callback result: fn removed sptep from this list (restart the walk). */
export const RMAP_RESTART = 1;

/**
 * for_each_rmap_spte: calls fn(kvm, sptep) for each entry of heads[hi], mmu_lock held. fn
 * returns flags; with RMAP_RESTART set it has removed sptep (drop_spte), which may have moved
 * another entry into a slot already visited, so the walk starts again from the first entry:
 * 3.11's `sptep = rmap_get_first(...)` after a drop in __rmap_write_protect. fn must not
 * otherwise change the list. Returns the OR of fn's results.
 */
export function for_each_rmap_spte(
  kvm: Kvm,
  heads: Int32Array,
  hi: number,
  fn: (kvm: Kvm, sptep: number) => number,
): number {
  const desc = kvm.desc;
  let acc = 0;
  restart: for (;;) {
    const v = heads[hi];
    if (v === 0) return acc;
    if ((v & 1) === 0) return acc | fn(kvm, (v >>> 1) - 1);
    let d = v >>> 1;
    for (;;) {
      const b = DESC.sptes(d);
      for (let i = 0; i < PTE_LIST_EXT; i++) {
        const e = desc[b + i];
        if (e === 0) continue;
        const r = fn(kvm, e - 1);
        acc |= r;
        if ((r & RMAP_RESTART) !== 0) continue restart;
      }
      const m = desc[DESC.more(d)];
      if (is_nulls(m) || m === 0) return acc;
      d = descOf(m);
    }
  }
}

/** Calls fn(spteIndex) for each entry; mmu_lock held, fn must not change the list. */
export function pte_list_walk(
  kvm: Kvm,
  heads: Int32Array,
  hi: number,
  fn: (spte: number, kvm: Kvm) => void,
): void {
  const v = heads[hi];
  if (v === 0) return;
  if ((v & 1) === 0) {
    fn((v >>> 1) - 1, kvm);
    return;
  }
  const desc = kvm.desc;
  let d = v >>> 1;
  for (;;) {
    const b = DESC.sptes(d);
    for (let i = 0; i < PTE_LIST_EXT; i++) {
      const e = desc[b + i];
      if (e !== 0) fn(e - 1, kvm);
    }
    const m = desc[DESC.more(d)];
    if (is_nulls(m) || m === 0) return;
    d = descOf(m);
  }
}

/** The first entry (spte index) or -1; mmu_lock held. For loops that remove as they go. */
export function rmap_get_first(kvm: Kvm, heads: Int32Array, hi: number): number {
  const v = heads[hi];
  if (v === 0) return -1;
  if ((v & 1) === 0) return (v >>> 1) - 1;
  const b = DESC.sptes(v >>> 1);
  for (let i = 0; i < PTE_LIST_EXT; i++) {
    const e = kvm.desc[b + i];
    if (e !== 0) return e - 1;
  }
  return -1;
}

/**
 * pte_list_walk_lockless (patch 8): no mmu_lock; the caller is in an RCU read section (or is a
 * vCPU covered by the flush protocol). fn may see an entry twice or see entries of a chain it
 * was moved onto before the restart: callers are idempotent and check the spte value.
 *
 * Why no entry present for the whole walk is missed: entries move only out of the first
 * descriptor, into a hole later in walk order (same descriptor at a lower index, walked later
 * because the walk descends, or a later descriptor), and the destination is written before the
 * source is cleared.
 */
export function pte_list_walk_lockless(
  kvm: Kvm,
  heads: Int32Array,
  hi: number,
  headId: number,
  fn: (spte: number, kvm: Kvm) => void,
): void {
  const desc = kvm.desc;
  const ascending = kvm.bug(BUG["backward-move"]);
  const checkNulls = !kvm.bug(BUG["no-nulls-check"]);
  const stats = kvm.rmapStats;
  stats.walks++;
  restart: for (;;) {
    const v = aload(heads, hi);
    if (v === 0) return;
    if ((v & 1) === 0) {
      fn((v >>> 1) - 1, kvm);
      return;
    }
    let d = v >>> 1;
    for (;;) {
      const b = DESC.sptes(d);
      if (ascending) {
        for (let i = 0; i < PTE_LIST_EXT; i++) {
          const e = aload(desc, b + i);
          if (e !== 0) fn(e - 1, kvm);
        }
      } else {
        for (let i = PTE_LIST_EXT - 1; i >= 0; i--) {
          const e = aload(desc, b + i);
          if (e !== 0) fn(e - 1, kvm);
        }
      }
      const m = aload(desc, DESC.more(d));
      if (m === 0) {
        stats.restarts++;
        continue restart;
      }
      if (is_nulls(m)) {
        if (checkNulls && nulls_owner(m) !== headId) {
          stats.restarts++;
          continue restart;
        }
        return;
      }
      d = descOf(m);
    }
  }
}

/**
 * Audit of one list's shape (quiesced VM): calls entry(sptep) for each entry and reports, via
 * say, an empty descriptor, a non-full descriptor after the first, `more == 0` inside a linked
 * chain, a chain ending in another head's nulls, or a chain that does not end.
 */
export function pte_list_audit(
  kvm: Kvm,
  heads: Int32Array,
  hi: number,
  headId: number,
  entry: (sptep: number) => void,
  say: (m: string) => void,
): void {
  const v = heads[hi];
  if (v === 0) return;
  if ((v & 1) === 0) {
    entry((v >>> 1) - 1);
    return;
  }
  let d = v >>> 1;
  let first = true;
  for (let guard = 0; guard < 1 << 20; guard++) {
    const b = DESC.sptes(d);
    let count = 0;
    for (let i = 0; i < PTE_LIST_EXT; i++) {
      const e = kvm.desc[b + i];
      if (e !== 0) {
        count++;
        entry(e - 1);
      }
    }
    if (count === 0) say(`rmap ${hi}: empty descriptor ${d}`);
    if (!first && count !== PTE_LIST_EXT) say(`rmap ${hi}: descriptor ${d} after the first is not full`);
    first = false;
    const m = kvm.desc[DESC.more(d)];
    if (m === 0) {
      say(`rmap ${hi}: descriptor ${d} has more == NULL in a linked chain`);
      return;
    }
    if (is_nulls(m)) {
      if (nulls_owner(m) !== headId) say(`rmap ${hi}: chain ends in the nulls of head ${nulls_owner(m)}`);
      return;
    }
    d = descOf(m);
  }
  say(`rmap ${hi}: chain does not end`);
}

/** Number of entries (mmu_lock held or quiesced). */
export function pte_list_count(kvm: Kvm, heads: Int32Array, hi: number): number {
  let n = 0;
  pte_list_walk(kvm, heads, hi, () => n++);
  return n;
}

/** rmap_add: link a present leaf spte into the rmap of (gfn, level). mmu_lock held. */
export function rmap_add(kvm: Kvm, sptep: number, gfn: number, level: number): number {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) throw new RmapCorrupt(`rmap_add: gfn ${gfn} has no memslot`);
  const hi = gfn_to_rmap(kvm, slot, gfn, level);
  return pte_list_add(kvm, kvm.rmapPool, hi, hi, sptep + 1);
}

/**
 * rmap_remove: unlink sptep from the rmap of (gfn, level), which the caller read from the
 * spte's shadow page (kvm_mmu_page_get_gfn, its level). mmu_lock held.
 */
export function rmap_remove(kvm: Kvm, sptep: number, gfn: number, level: number): void {
  const slot = gfn_to_memslot(kvm, gfn);
  if (slot < 0) throw new RmapCorrupt(`rmap_remove: gfn ${gfn} has no memslot`);
  pte_list_remove(kvm, kvm.rmapPool, gfn_to_rmap(kvm, slot, gfn, level), sptep + 1);
}

/** What word `i` of kvm.desc is, for traces: "pte_list_desc 91 entry 3" (or its other field). */
export function pte_list_desc_word_name(i: number): string {
  const d = Math.floor(i / DESC.STRIDE);
  const f = fieldAt(DESC.layout, i - DESC.row(d));
  const m = /^sptes\[(\d+)\]$/.exec(f);
  return m !== null ? `pte_list_desc ${d} entry ${m[1]}` : `pte_list_desc ${d} ${f}`;
}

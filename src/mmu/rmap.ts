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
import { BUG, DESC_MORE, DESC_WORDS, Kvm, PTE_LIST_EXT } from "../kvm_host.js";
import { mmu_alloc_pte_list_desc, mmu_free_pte_list_desc } from "../alloc/slab.js";
import { aload, astore } from "../sync/atomic.js";

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

/** Walker statistics of this thread. */
export const rmapStats = { restarts: 0, walks: 0 };

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
    const b = d * DESC_WORDS;
    astore(desc, b, v >>> 1);
    astore(desc, b + 1, e);
    astore(desc, b + 2, 0);
    astore(desc, b + DESC_MORE, make_nulls(headId));
    astore(heads, hi, (d << 1) | 1); // rcu_assign_pointer
    return 1;
  }
  const first = v >>> 1;
  const fb = first * DESC_WORDS;
  for (let k = 0; k < PTE_LIST_EXT; k++) {
    if (desc[fb + k] === 0) {
      astore(desc, fb + k, e);
      return k + countTail(kvm, desc[fb + DESC_MORE]);
    }
  }
  const d = mmu_alloc_pte_list_desc(kvm);
  const b = d * DESC_WORDS;
  astore(desc, b, e);
  astore(desc, b + 1, 0);
  astore(desc, b + 2, 0);
  astore(desc, b + DESC_MORE, descPtr(first));
  astore(heads, hi, (d << 1) | 1);
  return PTE_LIST_EXT + countTail(kvm, desc[fb + DESC_MORE]);
}

function countTail(kvm: Kvm, more: number): number {
  let n = 0;
  while (!is_nulls(more) && more !== 0) {
    n += PTE_LIST_EXT;
    more = kvm.desc[descOf(more) * DESC_WORDS + DESC_MORE]!;
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
    const b = d * DESC_WORDS;
    for (let i = 0; i < PTE_LIST_EXT; i++) {
      if (desc[b + i] === e) {
        if (kvm.bug(BUG["backward-move"])) desc_remove_entry_backward(kvm, heads, hi, d, i, prev);
        else desc_remove_entry_forward(kvm, heads, hi, first, d, i);
        return;
      }
    }
    const m = desc[b + DESC_MORE];
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
  const fb = first * DESC_WORDS;
  let j = PTE_LIST_EXT - 1;
  while (desc[fb + j] === 0) j--;
  if (d !== first || i !== j) astore(desc, d * DESC_WORDS + i, desc[fb + j]); // destination first,
  astore(desc, fb + j, 0); // then the source
  if (j !== 0) return;
  const m = desc[fb + DESC_MORE];
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
  const b = d * DESC_WORDS;
  let j = PTE_LIST_EXT - 1;
  while (desc[b + j] === 0) j--;
  if (i !== j) astore(desc, b + i, desc[b + j]);
  astore(desc, b + j, 0);
  if (j !== 0) return;
  const m = desc[b + DESC_MORE];
  if (prev >= 0) astore(desc, prev * DESC_WORDS + DESC_MORE, m);
  else astore(heads, hi, is_nulls(m) ? 0 : (descOf(m) << 1) | 1);
  mmu_free_pte_list_desc(kvm, d);
}

/** Calls fn(spteIndex) for each entry; mmu_lock held, fn must not change the list. */
export function pte_list_walk(kvm: Kvm, heads: Int32Array, hi: number, fn: (spte: number) => void): void {
  const v = heads[hi];
  if (v === 0) return;
  if ((v & 1) === 0) {
    fn((v >>> 1) - 1);
    return;
  }
  const desc = kvm.desc;
  let d = v >>> 1;
  for (;;) {
    const b = d * DESC_WORDS;
    for (let i = 0; i < PTE_LIST_EXT; i++) {
      const e = desc[b + i];
      if (e !== 0) fn(e - 1);
    }
    const m = desc[b + DESC_MORE];
    if (is_nulls(m) || m === 0) return;
    d = descOf(m);
  }
}

/** The first entry (spte index) or -1; mmu_lock held. For loops that remove as they go. */
export function rmap_get_first(kvm: Kvm, heads: Int32Array, hi: number): number {
  const v = heads[hi];
  if (v === 0) return -1;
  if ((v & 1) === 0) return (v >>> 1) - 1;
  const b = (v >>> 1) * DESC_WORDS;
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
  fn: (spte: number) => void,
): void {
  const desc = kvm.desc;
  const ascending = kvm.bug(BUG["backward-move"]);
  const checkNulls = !kvm.bug(BUG["no-nulls-check"]);
  rmapStats.walks++;
  restart: for (;;) {
    const v = aload(heads, hi);
    if (v === 0) return;
    if ((v & 1) === 0) {
      fn((v >>> 1) - 1);
      return;
    }
    let d = v >>> 1;
    for (;;) {
      const b = d * DESC_WORDS;
      if (ascending) {
        for (let i = 0; i < PTE_LIST_EXT; i++) {
          const e = aload(desc, b + i);
          if (e !== 0) fn(e - 1);
        }
      } else {
        for (let i = PTE_LIST_EXT - 1; i >= 0; i--) {
          const e = aload(desc, b + i);
          if (e !== 0) fn(e - 1);
        }
      }
      const m = aload(desc, b + DESC_MORE);
      if (m === 0) {
        rmapStats.restarts++;
        continue restart;
      }
      if (is_nulls(m)) {
        if (checkNulls && nulls_owner(m) !== headId) {
          rmapStats.restarts++;
          continue restart;
        }
        return;
      }
      d = descOf(m);
    }
  }
}

/** Number of entries (mmu_lock held or quiesced). */
export function pte_list_count(kvm: Kvm, heads: Int32Array, hi: number): number {
  let n = 0;
  pte_list_walk(kvm, heads, hi, () => n++);
  return n;
}

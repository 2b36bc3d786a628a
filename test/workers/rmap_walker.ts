/**
 * Worker for test/mmu/rmap_race.test.ts: runs pte_list_walk_lockless over the given heads until
 * told to stop, and counts walks that did not visit an entry that was on the list for the whole
 * walk: a "stable" entry (never removed by the writer), or any entry the writer's tracking words
 * (see trackIndex) show present before the walk started and not removed since. Results go to
 * the `out` words (see WalkerWords), so the writer thread can stay synchronous.
 *
 * `node --test dist/test/` also runs this file by itself as a test file: outside a worker it
 * does nothing.
 */
import { isMainThread, workerData } from "node:worker_threads";
import { Kvm, KvmShared } from "../../src/kvm_host.js";
import { pte_list_walk_lockless } from "../../src/mmu/rmap.js";

export interface WalkerData {
  shared: KvmShared;
  /** Indices in kvm.rmapPool; the head id is the index, as for real rmap heads. */
  heads: number[];
  /**
   * Head k's entries (spte index + 1) are k * stride + 1 .. (k + 1) * stride; the first
   * `stable` of them stay on it for the whole run.
   */
  stride: number;
  stable: number;
  out: SharedArrayBuffer;
  /** The writer's tracking words, see trackIndex. */
  track: SharedArrayBuffer;
}

/**
 * Tracking words the writer keeps: [0] a removal sequence number; per entry e, PRESENT (set to
 * 1 after pte_list_add returned; set to 0 before a removal starts) and REMOVED_AT (the sequence
 * number of its last removal, stored before pte_list_remove is called). A walker that reads
 * SEQ = s0, then PRESENT[e] = 1, and after its walk REMOVED_AT[e] <= s0, knows e was on the
 * list for the whole walk.
 */
export function trackWords(maxEntry: number): number {
  return 1 + 2 * (maxEntry + 1);
}
export function trackPresent(e: number): number {
  return 1 + e;
}
export function trackRemovedAt(maxEntry: number, e: number): number {
  return 2 + maxEntry + e;
}

/** Words of WalkerData.out. */
export const enum WalkerWords {
  Ready = 0,
  Stop = 1,
  Done = 2,
  Walks = 3,
  Restarts = 4,
  /** Walks that missed at least one stable entry. */
  MissedWalks = 5,
  /** Stable entries missed, summed over walks. */
  MissedEntries = 6,
  /** Walks in which an entry that was never on the walked head was visited (a foreign chain). */
  ForeignWalks = 7,
  /** Walks that missed an entry present for the whole walk (stable or not). */
  MissedPresentWalks = 8,
  Count = 9,
}

function main(d: WalkerData): void {
  const kvm = new Kvm(d.shared);
  const out = new Int32Array(d.out);
  const maxEntry = d.heads.length * d.stride;
  const track = new Int32Array(d.track);
  const seen = new Int32Array(maxEntry + 1);
  const must: number[] = [];
  let missedPresentWalks = 0;
  let gen = 0;
  let missedWalks = 0;
  let missedEntries = 0;
  let foreignWalks = 0;
  let foreign = false;
  let cur = 0;
  const visit = (s: number): void => {
    const e = s + 1;
    if (e < 1 || e > maxEntry || Math.floor((e - 1) / d.stride) !== cur) foreign = true;
    else seen[e] = gen;
  };
  const publish = (): void => {
    Atomics.store(out, WalkerWords.Walks, kvm.rmapStats.walks);
    Atomics.store(out, WalkerWords.Restarts, kvm.rmapStats.restarts);
    Atomics.store(out, WalkerWords.MissedWalks, missedWalks);
    Atomics.store(out, WalkerWords.MissedEntries, missedEntries);
    Atomics.store(out, WalkerWords.ForeignWalks, foreignWalks);
    Atomics.store(out, WalkerWords.MissedPresentWalks, missedPresentWalks);
  };
  Atomics.store(out, WalkerWords.Ready, 1);
  Atomics.notify(out, WalkerWords.Ready);
  while (Atomics.load(out, WalkerWords.Stop) === 0) {
    for (let k = 0; k < d.heads.length; k++) {
      cur = k;
      gen++;
      foreign = false;
      const s0 = Atomics.load(track, 0);
      must.length = 0;
      for (let e = k * d.stride + 1; e <= (k + 1) * d.stride; e++)
        if (Atomics.load(track, trackPresent(e)) === 1) must.push(e);
      pte_list_walk_lockless(kvm, kvm.rmapPool, d.heads[k], d.heads[k], visit);
      let missed = 0;
      for (let e = k * d.stride + 1; e <= k * d.stride + d.stable; e++) if (seen[e] !== gen) missed++;
      if (missed !== 0) {
        missedWalks++;
        missedEntries += missed;
      }
      for (const e of must) {
        if (seen[e] !== gen && Atomics.load(track, trackRemovedAt(maxEntry, e)) <= s0) {
          missedPresentWalks++;
          break;
        }
      }
      if (foreign) foreignWalks++;
    }
    if ((gen & 255) === 0) publish();
  }
  publish();
  Atomics.store(out, WalkerWords.Done, 1);
  Atomics.notify(out, WalkerWords.Done);
}

if (!isMainThread) main(workerData as WalkerData);

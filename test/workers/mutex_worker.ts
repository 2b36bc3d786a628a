/**
 * Worker for test/sync/mutex.test.ts: increments a plain (non-atomic) shared counter inside the
 * lock `iters` times, with a read-modify-write spread over a few statements so that two threads
 * inside the critical section would lose updates. It also counts entries into the critical
 * section that found another thread already inside.
 *
 * `node --test dist/test/` also runs this file by itself: outside a worker it does nothing.
 */
import { isMainThread, workerData } from "node:worker_threads";
import { Mutex } from "../../src/sync/mutex.js";

export interface MutexWorkerData {
  words: SharedArrayBuffer;
  /** Index of the lock's words in `words`. */
  base: number;
  iters: number;
  /** "lock": lock() only; "try": spin on tryLock(); "mixed": alternate. */
  mode: "lock" | "try" | "mixed";
}

/** Words after the lock (relative to base + MUTEX_WORDS). */
export const enum MutexTestWords {
  Counter = 0,
  Inside = 1,
  Overlaps = 2,
  Start = 3,
  /** Set by a worker just before its first lock attempt. */
  Started = 4,
  Count = 5,
}

function main(d: MutexWorkerData): void {
  const w = new Int32Array(d.words);
  const m = new Mutex(w, d.base);
  const c = d.base + 4;
  // start together
  while (Atomics.load(w, c + MutexTestWords.Start) === 0) Atomics.wait(w, c + MutexTestWords.Start, 0, 50);
  Atomics.add(w, c + MutexTestWords.Started, 1);
  for (let i = 0; i < d.iters; i++) {
    const useTry = d.mode === "try" || (d.mode === "mixed" && (i & 1) === 1);
    if (useTry) while (!m.tryLock());
    else m.lock();
    if (Atomics.add(w, c + MutexTestWords.Inside, 1) !== 0) Atomics.add(w, c + MutexTestWords.Overlaps, 1);
    const v = w[c + MutexTestWords.Counter];
    let x = v;
    for (let k = 0; k < 20; k++) x = (x * 31 + k) | 0; // widen the window between load and store
    w[c + MutexTestWords.Counter] = v + 1 + (x & 0);
    Atomics.sub(w, c + MutexTestWords.Inside, 1);
    m.unlock();
  }
}

if (!isMainThread) main(workerData as MutexWorkerData);

/**
 * A thread for test/sync/rwlock.test.ts. `node --test dist/test/` also runs this file by itself:
 * outside a worker it does nothing.
 *
 * once: takes the lock for write, says so (out[0] = 1), holds it until out[1] is set, releases
 *       it (out[0] = 2).
 * mix:  `iters` rounds, one in four a writer that bumps two plain words together, the others
 *       readers that check the two are equal; counts torn reads in out[2] and its writes in out[3].
 */
import { isMainThread, workerData } from "node:worker_threads";
import { RwLock } from "../../src/sync/rwlock.js";

export interface RwLockWorkerData {
  words: SharedArrayBuffer;
  data: SharedArrayBuffer;
  out: SharedArrayBuffer;
  role: "once" | "mix";
  iters: number;
}

if (!isMainThread) {
  const d = workerData as RwLockWorkerData;
  const lock = new RwLock(new Int32Array(d.words), 0);
  const data = new Int32Array(d.data);
  const out = new Int32Array(d.out);
  if (d.role === "once") {
    lock.write_lock();
    Atomics.store(out, 0, 1);
    Atomics.notify(out, 0);
    while (Atomics.load(out, 1) === 0) Atomics.wait(out, 1, 0, 50);
    lock.write_unlock();
    Atomics.store(out, 0, 2);
    Atomics.notify(out, 0);
  } else {
    let torn = 0;
    let writes = 0;
    for (let i = 0; i < d.iters; i++) {
      if ((i & 3) === 0) {
        lock.write_lock();
        const a = data[0];
        data[0] = a + 1;
        data[1] = a + 1;
        lock.write_unlock();
        writes++;
      } else {
        lock.read_lock();
        if (data[0] !== data[1]) torn++;
        lock.read_unlock();
      }
    }
    Atomics.add(out, 2, torn);
    Atomics.add(out, 3, writes);
  }
}

/**
 * The queued rwlock behind mmu_lock: modes and ownership in one thread, a queued writer holding
 * back new readers (writers are not starved), mutual exclusion across threads in both waiter
 * kinds, and needbreak / cond_resched for long holders.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Worker } from "node:worker_threads";
import { RwHeld, RwLock, RWLOCK_WORDS } from "../../src/sync/rwlock.js";
import type { RwLockWorkerData } from "../workers/rwlock_worker.js";

function newLock(): { lock: RwLock; words: SharedArrayBuffer } {
  const words = new SharedArrayBuffer(RWLOCK_WORDS * 4);
  return { lock: new RwLock(new Int32Array(words), 0), words };
}

function start(d: RwLockWorkerData): Promise<void> {
  const w = new Worker(new URL("../workers/rwlock_worker.js", import.meta.url), { workerData: d });
  return new Promise((resolve, reject) => {
    w.on("error", reject);
    w.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`worker exit ${code}`))));
  });
}

/** Waits (bounded by a count, not a clock) until cond holds. */
async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 20000; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 1));
  }
  assert.fail(`never: ${what}`);
}

test("rwlock: readers share, a writer excludes; this thread's holds are tracked", () => {
  const { lock, words } = newLock();
  const other = new RwLock(new Int32Array(words), 0); // another thread's view of the same lock
  assert.equal(lock.held(), RwHeld.None);
  lock.read_lock();
  lock.read_lock();
  assert.equal(lock.held(), RwHeld.Read);
  assert.equal(other.held(), RwHeld.None, "ownership is per view (per thread)");
  assert.ok(other.read_trylock(), "readers share");
  assert.ok(!other.tryLock(), "no writer while readers hold it");
  other.read_unlock();
  lock.read_unlock();
  assert.equal(lock.held(), RwHeld.Read);
  lock.read_unlock();
  assert.equal(lock.held(), RwHeld.None);
  assert.ok(!lock.isLocked());
  lock.write_lock();
  assert.equal(lock.held(), RwHeld.Write);
  assert.ok(lock.isLocked());
  assert.ok(!other.read_trylock() && !other.tryLock(), "a writer excludes readers and writers");
  lock.write_unlock();
  assert.ok(other.tryLock());
  other.unlock();
  assert.equal(lock.stats.acquisitions, 1);
  assert.equal(lock.readAcquisitions, 2);
  assert.equal(other.stats.acquisitions, 1, "tryLock counts as a write acquisition");
});

test("rwlock: a queued writer holds back new readers (qrwlock: writers are not starved)", async () => {
  const { lock, words } = newLock();
  const out = new Int32Array(new SharedArrayBuffer(16));
  lock.read_lock();
  const done = start({
    words,
    data: new SharedArrayBuffer(8),
    out: out.buffer,
    role: "once",
    iters: 0,
  });
  await until(() => lock.isContended(), "the writer queued");
  assert.equal(Atomics.load(out, 0), 0, "the writer waits for the reader");
  assert.ok(lock.needbreak(), "the reader is told to break");
  const reader = new RwLock(new Int32Array(words), 0);
  assert.ok(!reader.read_trylock(), "a new reader does not overtake the waiting writer");
  lock.read_unlock();
  await until(() => Atomics.load(out, 0) === 1, "the writer got the lock");
  assert.ok(!reader.read_trylock(), "the writer holds it");
  Atomics.store(out, 1, 1);
  Atomics.notify(out, 1);
  await done;
  assert.equal(Atomics.load(out, 0), 2);
  assert.ok(reader.read_trylock(), "free again");
  reader.read_unlock();
  assert.ok(!lock.isLocked() && !lock.isContended());
});

for (const mode of ["sleep", "spin"] as const)
  test(`rwlock: mutual exclusion across threads (${mode} waiters)`, async () => {
    const { lock, words } = newLock();
    lock.setMode(mode);
    assert.equal(lock.mode(), mode);
    const data = new SharedArrayBuffer(8);
    const out = new Int32Array(new SharedArrayBuffer(16));
    const iters = 20000;
    const d = { words, data, out: out.buffer, role: "mix" as const, iters };
    await Promise.all([start(d), start(d), start(d)]);
    assert.equal(Atomics.load(out, 2), 0, "no reader saw a half-done write");
    assert.equal(Atomics.load(out, 3), 3 * (iters / 4));
    assert.equal(new Int32Array(data)[0], 3 * (iters / 4), "no write was lost");
    assert.ok(!lock.isLocked());
  });

test("rwlock: cond_resched_write drops the lock only when someone waits", async () => {
  const { lock, words } = newLock();
  lock.write_lock();
  assert.equal(lock.cond_resched_write(), false, "nobody waits: kept");
  const out = new Int32Array(new SharedArrayBuffer(16));
  const done = start({
    words,
    data: new SharedArrayBuffer(8),
    out: out.buffer,
    role: "once",
    iters: 0,
  });
  await until(() => lock.needbreak(), "the writer queued");
  // The waiter gets the lock in between; release it from here so we can take it back.
  Atomics.store(out, 1, 1);
  assert.equal(lock.cond_resched_write(), true);
  assert.equal(lock.held(), RwHeld.Write);
  await until(() => Atomics.load(out, 0) === 2, "the other writer came and went");
  lock.write_unlock();
  await done;
  assert.equal(lock.stats.acquisitions, 2);
});

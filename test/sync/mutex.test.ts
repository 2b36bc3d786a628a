import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { Worker } from "node:worker_threads";
import { Mutex, MUTEX_WORDS } from "../../src/sync/mutex.js";
import { MutexTestWords, MutexWorkerData } from "../workers/mutex_worker.js";

const BASE = 3; // not at index 0, to catch base-offset mistakes
const C = BASE + MUTEX_WORDS;

function words(): Int32Array {
  return new Int32Array(new SharedArrayBuffer((BASE + MUTEX_WORDS + MutexTestWords.Count + 2) * 4));
}

function spawn(
  w: Int32Array,
  iters: number,
  mode: MutexWorkerData["mode"],
): { worker: Worker; exit: Promise<unknown[]> } {
  const data: MutexWorkerData = { words: w.buffer as SharedArrayBuffer, base: BASE, iters, mode };
  const worker = new Worker(new URL("../workers/mutex_worker.js", import.meta.url), { workerData: data });
  live.add(worker);
  return { worker, exit: once(worker, "exit") };
}

// A test that fails while a worker waits for a lock it holds must not leave the worker (and so
// the test process) running forever: every test's workers are terminated after it.
const live = new Set<Worker>();
afterEach(async () => {
  for (const w of live) await w.terminate();
  live.clear();
});

function start(w: Int32Array): void {
  Atomics.store(w, C + MutexTestWords.Start, 1);
  Atomics.notify(w, C + MutexTestWords.Start);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function hammer(
  nWorkers: number,
  iters: number,
  mode: (i: number) => MutexWorkerData["mode"],
  lockMode: "sleep" | "spin" = "sleep",
): Promise<void> {
  const w = words();
  new Mutex(w, BASE).setMode(lockMode);
  const ws = Array.from({ length: nWorkers }, (_, i) => spawn(w, iters, mode(i)));
  start(w);
  // A broken lock can also deadlock (e.g. OWNER run past a waiter's ticket): bound the wait.
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), 30_000)));
  const codes = await Promise.race([Promise.all(ws.map((x) => x.exit)), deadline]);
  clearTimeout(timer);
  if (codes === "timeout") {
    await Promise.all(ws.map((x) => x.worker.terminate()));
    assert.fail(
      `workers still running after 30 s; counter ${w[C + MutexTestWords.Counter]} of ${nWorkers * iters}`,
    );
  }
  assert.deepEqual(
    codes.map((c) => c[0]),
    ws.map(() => 0),
    "workers exited cleanly",
  );
  assert.equal(
    w[C + MutexTestWords.Overlaps],
    0,
    "no thread entered the critical section while another was inside",
  );
  assert.equal(w[C + MutexTestWords.Counter], nWorkers * iters, "no increment was lost");
  assert.equal(new Mutex(w, BASE).isLocked(), false, "the lock is free at the end");
  assert.equal(w[BASE + 2], 0, "no waiter left registered");
}

test("mutex: single thread: lock, unlock, tryLock, isLocked, isContended, stats", () => {
  const w = words();
  const m = new Mutex(w, BASE);
  assert.equal(m.isLocked(), false);
  m.lock();
  assert.equal(m.isLocked(), true);
  assert.equal(m.isContended(), false);
  assert.equal(m.tryLock(), false, "tryLock fails while held");
  assert.equal(m.isLocked(), true);
  m.unlock();
  assert.equal(m.isLocked(), false);
  assert.equal(m.tryLock(), true, "tryLock succeeds when free");
  assert.equal(m.isLocked(), true);
  assert.equal(m.tryLock(), false);
  m.unlock();
  assert.equal(m.isLocked(), false);
  assert.equal(m.stats.acquisitions, 2, "failed tryLocks are not acquisitions");
  assert.equal(m.stats.contended, 0);
  // a second Mutex over the same words is the same lock (as each thread builds its own)
  const m2 = new Mutex(w, BASE);
  m.lock();
  assert.equal(m2.isLocked(), true);
  assert.equal(m2.tryLock(), false);
  m.unlock();
  assert.equal(m2.tryLock(), true);
  m2.unlock();
  // the words outside [BASE, BASE + MUTEX_WORDS) are untouched
  assert.deepEqual([w[0], w[1], w[2]], [0, 0, 0]);
  assert.equal(w[C], 0);
});

test("mutex: 4 workers x lock(): mutual exclusion, exact count", async () => {
  await hammer(4, 20_000, () => "lock");
});

test("mutex: 3 workers mixing lock() and tryLock() spins: mutual exclusion, exact count", async () => {
  await hammer(3, 10_000, (i) => (i === 0 ? "try" : "mixed"));
});

test("mutex: a holder on this thread blocks lock() and tryLock() on workers until unlock", async () => {
  for (const mode of ["lock", "try"] as const) {
    const w = words();
    const m = new Mutex(w, BASE);
    m.lock();
    const { exit } = spawn(w, 1, mode);
    start(w);
    for (
      let polls = 0;
      Atomics.load(w, C + MutexTestWords.Started) === 0 || (mode === "lock" && !m.isContended());
      polls++
    ) {
      assert.ok(polls < 4000, `${mode}: the worker never tried the lock`);
      await sleep(5);
    }
    // lock(): the worker holds a ticket, it is queued behind this thread
    await sleep(100);
    assert.equal(w[C + MutexTestWords.Counter], 0, `${mode}: the worker got in while the lock was held`);
    m.unlock();
    const [code] = await exit;
    assert.equal(code, 0);
    assert.equal(w[C + MutexTestWords.Counter], 1, `${mode}: the worker got in after unlock`);
    assert.equal(m.isLocked(), false);
  }
});

// Two workers only: with more spinners than free cores a ticket spinlock hands over only when the
// next ticket's thread gets a core back (the pathology 3.11 avoided by disabling preemption).
test("mutex --lock spin: 2 workers x lock(): mutual exclusion, exact count", async () => {
  await hammer(2, 2_000, () => "lock", "spin");
});

test("mutex: a sleep-mode waiter registers as a sleeper, a spin-mode waiter never does", async () => {
  for (const lockMode of ["sleep", "spin"] as const) {
    const w = words();
    const m = new Mutex(w, BASE);
    m.setMode(lockMode);
    assert.equal(new Mutex(w, BASE).mode(), lockMode, "the mode is shared through the words");
    m.lock();
    const { exit } = spawn(w, 1, "lock");
    start(w);
    for (let polls = 0; !m.isContended(); polls++) {
      assert.ok(polls < 4000, `${lockMode}: the worker never queued`);
      await sleep(5);
    }
    // WAITERS counts a waiter only while it is inside Atomics.wait (it leaves and re-enters every
    // 50 ms), so one sample can miss it: sleep mode must show it within 10000 samples (1 ms
    // apart at least); spin mode never, in 200.
    let seen = 0;
    for (let n = 0; n < (lockMode === "sleep" ? 10_000 : 200); n++) {
      seen = Math.max(seen, Atomics.load(w, BASE + 2));
      if (lockMode === "sleep" && seen > 0) break;
      await sleep(1);
    }
    assert.equal(seen, lockMode === "sleep" ? 1 : 0, `${lockMode}: sleepers registered`);
    m.unlock();
    const [code] = await exit;
    assert.equal(code, 0);
    assert.equal(w[C + MutexTestWords.Counter], 1);
  }
});

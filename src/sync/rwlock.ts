import { aadd, acas, aload, schedHookInstalled, spinPoint } from "./atomic.js";
import { LockMode, LockStats, Mutex, MUTEX_WORDS } from "./mutex.js";
import { TracePhase, type Tracer } from "./trace_ring.js";
import { TP } from "./tracepoints.js";

/**
 * A reader-writer lock in shared memory with the semantics of the kernel's queued rwlock
 * (qrwlock), as mmu_lock became an rwlock in Linux 5.12 for the TDP MMU.
 *
 * Words (Int32, relative to `base`): CNTS (readers << 9 | WAITING | LOCKED, qrwlock's cnts),
 * SLEEPERS (threads in Atomics.wait on CNTS), then the wait queue: a fair ticket Mutex
 * (qrwlock's wait_lock) that every slow-path reader and writer passes through in arrival order.
 * A writer that reaches the head of the queue sets WAITING, which sends every new reader to the
 * queue behind it: a stream of readers cannot starve a writer. The uncontended write lock is one
 * cmpxchg and the unlock one atomic add (plus a load of SLEEPERS), as the Mutex's two adds.
 *
 * Waiters spin, then sleep, unless the mode (the wait queue's MODE word) is "spin". Under the
 * explorer's controlled scheduling every turn of a wait is a scheduling point.
 *
 * Ownership (for lockdep_assert_held_*) is tracked per RwLock object, i.e. per thread: each
 * thread builds its own Kvm, hence its own RwLock, over the shared words. A thread that names
 * itself (track) also publishes it, for a soft-lockup check in another thread: its id and the
 * time in OWNER and SINCE while it holds the write side, the time of its read hold in a word of
 * its own. A waiter's `onWait` (after the spin, at each sleep) may throw to give up the wait.
 */
export const RWLOCK_WORDS = 4 + MUTEX_WORDS;
const CNTS = 0;
const SLEEPERS = 1;
/** The write holder's id (0: none or anonymous) and since when (ms, shared clock): its own stores. */
const OWNER = 2;
const SINCE = 3;
const WAIT_LOCK = 4;

/** cnts: the writer byte (LOCKED), a writer waiting at the queue's head, the reader count's unit. */
const QW_LOCKED = 0xff;
const QW_WAITING = 0x100;
const QW_WMASK = 0x1ff;
const QR_BIAS = 0x200;

const SPIN = 2000;

/** Who holds the lock in this thread: nothing, a read hold (depth > 0) or the write hold. */
export const enum RwHeld {
  None = 0,
  Read = 1,
  Write = 2,
}

export class RwLock {
  readonly words: Int32Array;
  readonly base: number;
  /** Statistics of the write side (as the Mutex's): per thread. */
  readonly stats = new LockStats();
  /** Read acquisitions (per thread). */
  readAcquisitions = 0;
  /** The queue (qrwlock's wait_lock); its MODE word is the lock's waiter kind. */
  private readonly waitLock: Mutex;
  private heldSince = 0;
  private readonly timed: boolean;
  /** This thread's holds: the write hold, and the depth of its read holds. */
  private writeHeld = false;
  private readDepth = 0;
  /** track(): this thread's published id (0: none), clock origin and read-hold word. */
  private holderId = 0;
  private clockOrigin = 0;
  private readSince: { words: Int32Array; index: number } | null = null;
  /** Called by a waiter after its spin and before each sleep; may throw to abandon the wait. */
  onWait: (() => void) | null = null;
  /**
   * This thread's trace recorder when the VM is traced (null: off, one test per lock call). On a
   * thread whose holds are per-access (Tracer.perAccessLocks) one hold in the sample is traced,
   * the wait before it with it; a read hold is decided by its outermost read_lock.
   */
  tracer: Tracer | null = null;
  private traceWrite = false;
  private traceRead = false;
  /** Read acquisitions that took the slow path (tells a traced read_lock that it waited). */
  private readSlow = 0;

  constructor(words: Int32Array, base: number, timed = true) {
    this.words = words;
    this.base = base;
    this.timed = timed;
    this.waitLock = new Mutex(words, base + WAIT_LOCK, false);
    this.waitLock.onWait = () => this.onWait?.();
  }

  /**
   * Publishes this thread's holds as `id` (non-zero): ms on the clock `performance.now() +
   * clockOrigin`, the read hold's in readSince (null: not published).
   */
  track(id: number, clockOrigin: number, readSince: { words: Int32Array; index: number } | null): void {
    this.holderId = id;
    this.clockOrigin = clockOrigin;
    this.readSince = readSince;
  }

  /** The shared clock of track(), in whole ms (never 0: 0 means "not held"). */
  private now(): number {
    return (performance.now() + this.clockOrigin) | 0 || 1;
  }

  private publishWrite(): void {
    // Plain Atomics, not the scheduling wrappers: bookkeeping, not part of the protocol.
    Atomics.store(this.words, this.base + SINCE, this.now());
    Atomics.store(this.words, this.base + OWNER, this.holderId);
  }

  // ---- write side (write_lock / write_unlock); lock/unlock keep the Mutex's surface ----

  lock(): void {
    this.write_lock();
  }

  unlock(): void {
    this.write_unlock();
  }

  write_lock(): void {
    const t = this.tracer;
    if (t === null || (t.perAccessLocks && !t.sampled())) return this.write_lock_raw();
    const c0 = this.stats.contended;
    const t0 = t.now();
    this.write_lock_raw();
    const t1 = t.now();
    if (this.stats.contended !== c0) {
      t.emitAt(t0, TP.mmu_lock_write_wait, TracePhase.Begin);
      t.emitAt(t1, TP.mmu_lock_write_wait, TracePhase.End);
    }
    t.emitAt(t1, TP.mmu_lock_write, TracePhase.Begin);
    this.traceWrite = true;
  }

  private write_lock_raw(): void {
    const w = this.words;
    const b = this.base + CNTS;
    this.stats.acquisitions++;
    if (acas(w, b, 0, QW_LOCKED) === 0) {
      this.writeHeld = true;
      if (this.holderId !== 0) this.publishWrite();
      if (this.timed) this.heldSince = performance.now();
      return;
    }
    const t0 = this.timed ? performance.now() : 0;
    this.stats.contended++;
    this.write_lock_slowpath();
    this.writeHeld = true;
    if (this.holderId !== 0) this.publishWrite();
    if (this.timed) {
      const now = performance.now();
      this.stats.waitNs += (now - t0) * 1e6;
      this.heldSince = now;
    }
  }

  /** queued_write_lock_slowpath: queue, announce WAITING, wait for the readers and the writer to go. */
  private write_lock_slowpath(): void {
    const w = this.words;
    const b = this.base + CNTS;
    this.waitLock.lock();
    // Set WAITING (or take the lock outright if it came free meanwhile).
    for (;;) {
      const c = aload(w, b);
      if (c === 0) {
        if (acas(w, b, 0, QW_LOCKED) === 0) return this.waitLock.unlock();
        continue;
      }
      if ((c & QW_WAITING) !== 0 || acas(w, b, c, c | QW_WAITING) === c) break;
    }
    // Readers drain; a fast-path writer cannot get in (cnts is not 0).
    try {
      this.waitFor(QW_WAITING, -1);
    } catch (e) {
      // onWait gave up: take WAITING back (only the queue's head sets it) and leave the queue.
      Atomics.and(w, b, ~QW_WAITING);
      this.waitLock.unlock();
      throw e;
    }
    this.waitLock.unlock();
  }

  /** Waits until cnts, masked, equals `want`, then (write side) swaps WAITING for LOCKED. */
  private waitFor(want: number, mask: number): void {
    const w = this.words;
    const b = this.base + CNTS;
    const writer = mask === -1;
    const hooked = schedHookInstalled();
    const spinOnly = this.waitLock.mode() === "spin";
    for (let i = 0; ; i++) {
      const c = aload(w, b);
      if ((c & mask) === want) {
        if (!writer || acas(w, b, QW_WAITING, QW_LOCKED) === QW_WAITING) return;
        continue;
      }
      if (hooked || spinOnly || i < SPIN) {
        spinPoint(w, b);
        // A spin-only waiter never sleeps: it asks onWait now and then instead.
        if (spinOnly && !hooked && (i & 0xffff) === 0xffff) this.onWait?.();
        continue;
      }
      this.onWait?.();
      aadd(w, this.base + SLEEPERS, 1);
      if (aload(w, b) === c) Atomics.wait(w, b, c, 50);
      aadd(w, this.base + SLEEPERS, -1);
    }
  }

  write_unlock(): void {
    if (this.traceWrite) {
      this.traceWrite = false;
      this.tracer?.emit(TP.mmu_lock_write, TracePhase.End);
    }
    if (this.timed) this.stats.holdNs += (performance.now() - this.heldSince) * 1e6;
    this.writeHeld = false;
    const w = this.words;
    if (this.holderId !== 0) Atomics.store(w, this.base + OWNER, 0);
    aadd(w, this.base + CNTS, -QW_LOCKED);
    if (aload(w, this.base + SLEEPERS) !== 0) Atomics.notify(w, this.base + CNTS);
  }

  /** write_trylock. */
  tryLock(): boolean {
    if (acas(this.words, this.base + CNTS, 0, QW_LOCKED) !== 0) return false;
    if (this.tracer !== null) {
      this.tracer.emit(TP.mmu_lock_write, TracePhase.Begin);
      this.traceWrite = true;
    }
    this.stats.acquisitions++;
    this.writeHeld = true;
    if (this.holderId !== 0) this.publishWrite();
    if (this.timed) this.heldSince = performance.now();
    return true;
  }

  // ---- read side ----

  read_lock(): void {
    const t = this.tracer;
    if (t === null || this.readDepth !== 0 || (t.perAccessLocks && !t.sampled())) return this.read_lock_raw();
    const s0 = this.readSlow;
    const t0 = t.now();
    this.read_lock_raw();
    const t1 = t.now();
    if (this.readSlow !== s0) {
      t.emitAt(t0, TP.mmu_lock_read_wait, TracePhase.Begin);
      t.emitAt(t1, TP.mmu_lock_read_wait, TracePhase.End);
    }
    t.emitAt(t1, TP.mmu_lock_read, TracePhase.Begin);
    this.traceRead = true;
  }

  private read_lock_raw(): void {
    const w = this.words;
    const b = this.base + CNTS;
    this.readAcquisitions++;
    if (this.readDepth++ === 0 && this.readSince !== null) this.publishRead(this.now());
    if ((aadd(w, b, QR_BIAS) & QW_WMASK) === 0) return;
    // queued_read_lock_slowpath: back out, queue behind any waiting writer, wait for the writer.
    this.readSlow++;
    aadd(w, b, -QR_BIAS);
    try {
      this.waitLock.lock();
    } catch (e) {
      this.readAborted();
      throw e;
    }
    aadd(w, b, QR_BIAS);
    try {
      this.waitFor(0, QW_LOCKED);
    } catch (e) {
      aadd(w, b, -QR_BIAS);
      this.waitLock.unlock();
      this.readAborted();
      throw e;
    }
    this.waitLock.unlock();
  }

  private publishRead(since: number): void {
    const r = this.readSince!;
    Atomics.store(r.words, r.index, since);
  }

  /** onWait gave up a read_lock: no hold was taken. */
  private readAborted(): void {
    this.readAcquisitions--;
    if (--this.readDepth === 0 && this.readSince !== null) this.publishRead(0);
  }

  read_unlock(): void {
    if (this.traceRead && this.readDepth === 1) {
      this.traceRead = false;
      this.tracer?.emit(TP.mmu_lock_read, TracePhase.End);
    }
    if (--this.readDepth === 0 && this.readSince !== null) this.publishRead(0);
    const w = this.words;
    aadd(w, this.base + CNTS, -QR_BIAS);
    if (aload(w, this.base + SLEEPERS) !== 0) Atomics.notify(w, this.base + CNTS);
  }

  read_trylock(): boolean {
    const w = this.words;
    const b = this.base + CNTS;
    const c = aload(w, b);
    if ((c & QW_WMASK) !== 0 || acas(w, b, c, c + QR_BIAS) !== c) return false;
    this.readAcquisitions++;
    if (this.readDepth++ === 0 && this.readSince !== null) this.publishRead(this.now());
    return true;
  }

  // ---- state ----

  /** How waiters wait: "sleep" (spin briefly, then Atomics.wait) or "spin" (never sleep). Shared. */
  setMode(mode: LockMode): void {
    this.waitLock.setMode(mode);
  }

  mode(): LockMode {
    return this.waitLock.mode();
  }

  /** True when some thread holds the lock in either mode. */
  isLocked(): boolean {
    return aload(this.words, this.base + CNTS) !== 0;
  }

  /** True when someone waits for the lock (rwlock_needbreak / queued_rwlock_is_contended). */
  isContended(): boolean {
    return this.waitLock.isLocked() || (aload(this.words, this.base + CNTS) & QW_WAITING) !== 0;
  }

  /** rwlock_needbreak: a long holder should drop the lock and let the waiters in. */
  needbreak(): boolean {
    return this.isContended();
  }

  /** What this thread holds. */
  held(): RwHeld {
    return this.writeHeld ? RwHeld.Write : this.readDepth > 0 ? RwHeld.Read : RwHeld.None;
  }

  /**
   * cond_resched_rwlock_write: if someone waits, drops the write hold and takes it again.
   * Returns true when it dropped the lock (the caller's view of the tables is stale).
   */
  cond_resched_write(): boolean {
    if (!this.needbreak()) return false;
    this.write_unlock();
    spinPoint(this.words, this.base + CNTS);
    this.write_lock();
    return true;
  }

  /** cond_resched_rwlock_read: as cond_resched_write, for a read hold. */
  cond_resched_read(): boolean {
    if (!this.needbreak()) return false;
    this.read_unlock();
    spinPoint(this.words, this.base + CNTS);
    this.read_lock();
    return true;
  }
}

/** Who holds the rwlock at `base` for write, as track() published it (null: not write-held). */
export function rwlock_writer(words: Int32Array, base: number): { id: number; since: number } | null {
  if ((Atomics.load(words, base + CNTS) & QW_LOCKED) === 0) return null;
  return { id: Atomics.load(words, base + OWNER), since: Atomics.load(words, base + SINCE) };
}

/** Readers holding the rwlock at `base` now. */
export function rwlock_readers(words: Int32Array, base: number): number {
  return Atomics.load(words, base + CNTS) >>> 9;
}

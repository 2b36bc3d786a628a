import { aadd, aload, schedHookInstalled, spinPoint } from "./atomic.js";

/**
 * A fair ticket lock in shared memory, as mmu_lock was a ticket spinlock in Linux 3.11.
 * Words (Int32, relative to `base`): NEXT ticket, OWNER (now serving), WAITERS sleeping in
 * Atomics.wait, MODE. A waiter spins briefly, then sleeps on OWNER; unlock wakes sleepers only
 * when WAITERS says there are some, so the uncontended path is two atomic adds.
 * MODE "spin" (3.11's arch_spin_lock): waiters spin until served and never sleep. MODE is shared,
 * so every thread's view of the lock behaves alike; set it before other threads use the lock.
 * A waiter's `onWait` (before each sleep) may throw to give up: its ticket is then never served,
 * so the lock is left unusable. Only for a dead VM, whose locks nothing takes again.
 */
export const MUTEX_WORDS = 4;
const NEXT = 0;
const OWNER = 1;
const WAITERS = 2;
const MODE = 3;
const MODE_SPIN = 1;

export type LockMode = "sleep" | "spin";

const SPIN = 2000;

/** Per-thread lock statistics (not shared: each thread reports its own). */
export class LockStats {
  acquisitions = 0;
  contended = 0;
  waitNs = 0;
  holdNs = 0;
}

export class Mutex {
  readonly words: Int32Array;
  readonly base: number;
  readonly stats = new LockStats();
  private heldSince = 0;
  private readonly timed: boolean;
  /** Called by a waiter before each sleep (and now and then by a spin-only waiter); may throw. */
  onWait: (() => void) | null = null;

  constructor(words: Int32Array, base: number, timed = true) {
    this.words = words;
    this.base = base;
    this.timed = timed;
  }

  lock(): void {
    const w = this.words;
    const b = this.base;
    const ticket = aadd(w, b + NEXT, 1);
    this.stats.acquisitions++;
    if (aload(w, b + OWNER) === ticket) {
      if (this.timed) this.heldSince = performance.now();
      return;
    }
    const t0 = this.timed ? performance.now() : 0;
    this.stats.contended++;
    if (schedHookInstalled()) {
      // Controlled scheduling: every turn of the wait is a scheduling point; never sleep.
      for (;;) {
        spinPoint(w, b + OWNER);
        if (aload(w, b + OWNER) === ticket) return this.acquired(t0);
      }
    }
    if (Atomics.load(w, b + MODE) === MODE_SPIN) {
      for (let i = 1; ; i++) {
        if (aload(w, b + OWNER) === ticket) return this.acquired(t0);
        if ((i & 0xffff) === 0) this.onWait?.();
      }
    }
    for (let i = 0; i < SPIN; i++) {
      spinPoint(w, b + OWNER);
      if (aload(w, b + OWNER) === ticket) return this.acquired(t0);
    }
    for (;;) {
      const owner = aload(w, b + OWNER);
      if (owner === ticket) return this.acquired(t0);
      this.onWait?.();
      aadd(w, b + WAITERS, 1);
      // Sleep until OWNER moves; a stale value returns at once ("not-equal").
      if (aload(w, b + OWNER) !== ticket) Atomics.wait(w, b + OWNER, owner, 50);
      aadd(w, b + WAITERS, -1);
      spinPoint(w, b + OWNER);
    }
  }

  /** How waiters wait: "sleep" (default: spin briefly, then Atomics.wait) or "spin" (never sleep). */
  setMode(mode: LockMode): void {
    Atomics.store(this.words, this.base + MODE, mode === "spin" ? MODE_SPIN : 0);
  }

  mode(): LockMode {
    return Atomics.load(this.words, this.base + MODE) === MODE_SPIN ? "spin" : "sleep";
  }

  private acquired(t0: number): void {
    if (this.timed) {
      const now = performance.now();
      this.stats.waitNs += (now - t0) * 1e6;
      this.heldSince = now;
    }
  }

  tryLock(): boolean {
    const w = this.words;
    const b = this.base;
    const owner = aload(w, b + OWNER);
    if (Atomics.compareExchange(w, b + NEXT, owner, owner + 1) !== owner) return false;
    this.stats.acquisitions++;
    if (this.timed) this.heldSince = performance.now();
    return true;
  }

  unlock(): void {
    if (this.timed) this.stats.holdNs += (performance.now() - this.heldSince) * 1e6;
    const w = this.words;
    const b = this.base;
    aadd(w, b + OWNER, 1);
    if (aload(w, b + WAITERS) !== 0) Atomics.notify(w, b + OWNER);
  }

  /** True when some thread holds the lock (for assertions and the audit). */
  isLocked(): boolean {
    return aload(this.words, this.base + NEXT) !== aload(this.words, this.base + OWNER);
  }

  /** True when other threads are queued behind the holder (cond_resched_lock's "contended"). */
  isContended(): boolean {
    return aload(this.words, this.base + NEXT) - aload(this.words, this.base + OWNER) > 1;
  }
}

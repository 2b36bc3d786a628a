/**
 * Every shared-memory operation of the MMU goes through these wrappers so that a controlled
 * scheduler (src/sync/sched.ts) can decide, at each one, which thread runs next. With no hook
 * installed (real-thread mode) each wrapper is the bare Atomics call.
 */

/** What a scheduling point is, for traces. */
export const enum Op {
  Load = 0,
  Store = 1,
  Xchg = 2,
  Cas = 3,
  Or = 4,
  And = 5,
  Add = 6,
  GuestRead = 7,
  GuestWrite = 8,
  Spin = 9,
}

export type SchedHook = (op: Op, arr: Int32Array, index: number) => void;

let hook: SchedHook | null = null;

/*
 * The wrappers are exported bindings that setSchedHook replaces: with no hook (real threads)
 * each is the bare Atomics call, which V8 inlines at every call site; only a thread that
 * installs a hook (controlled mode, its own isolate) pays for it.
 */
export let aload = (a: Int32Array, i: number): number => Atomics.load(a, i);
/**
 * READ_ONCE: a plain load of a shared word, for hot paths whose ordering comes from an atomic
 * around it (an acquire such as the dirty-bitmap xchg before it, or the cmpxchg/xchg after it
 * that validates or replaces the value). Node 20's V8 compiles every Atomics.* call to a builtin
 * call (~7 ns), a plain load to one instruction. Under the controlled scheduler it is a
 * scheduling point and a seq-cst load like aload, so exploration sees the same interleavings.
 */
export let aread = (a: Int32Array, i: number): number => a[i];
export let astore = (a: Int32Array, i: number, v: number): void => void Atomics.store(a, i, v);
/**
 * WRITE_ONCE: a plain store of a shared word that no thread changes without the lock the writer
 * holds, published by that lock's release (or a flush's atomics) before anyone acts on it.
 * Atomics.store is a builtin call and a locked exchange; this is one instruction. Under the
 * controlled scheduler it is a scheduling point and a seq-cst store like astore.
 */
export let awrite = (a: Int32Array, i: number, v: number): void => void (a[i] = v);
export let axchg = (a: Int32Array, i: number, v: number): number => Atomics.exchange(a, i, v);
/** cmpxchg: returns the old value; the exchange happened iff it equals `expect`. */
export let acas = (a: Int32Array, i: number, expect: number, v: number): number =>
  Atomics.compareExchange(a, i, expect, v);
export let aor = (a: Int32Array, i: number, v: number): number => Atomics.or(a, i, v);
export let aand = (a: Int32Array, i: number, v: number): number => Atomics.and(a, i, v);
export let aadd = (a: Int32Array, i: number, v: number): number => Atomics.add(a, i, v);
/** A spin-loop iteration: under the controlled scheduler another thread must get to run. */
export let spinPoint = (_a: Int32Array, _i: number): void => {};
/** Guest data accesses are scheduling points too. */
export let guestPoint = (_write: boolean, _a: Int32Array, _i: number): void => {};

const bare = { aload, aread, astore, awrite, axchg, acas, aor, aand, aadd, spinPoint, guestPoint };

/** Installs (or with null removes) the scheduling hook for this thread. */
export function setSchedHook(h: SchedHook | null): void {
  hook = h;
  if (h === null) {
    ({ aload, aread, astore, awrite, axchg, acas, aor, aand, aadd, spinPoint, guestPoint } = bare);
    return;
  }
  aload = (a, i) => (h(Op.Load, a, i), Atomics.load(a, i));
  aread = (a, i) => (h(Op.Load, a, i), Atomics.load(a, i));
  astore = (a, i, v) => (h(Op.Store, a, i), void Atomics.store(a, i, v));
  awrite = (a, i, v) => (h(Op.Store, a, i), void Atomics.store(a, i, v));
  axchg = (a, i, v) => (h(Op.Xchg, a, i), Atomics.exchange(a, i, v));
  acas = (a, i, e, v) => (h(Op.Cas, a, i), Atomics.compareExchange(a, i, e, v));
  aor = (a, i, v) => (h(Op.Or, a, i), Atomics.or(a, i, v));
  aand = (a, i, v) => (h(Op.And, a, i), Atomics.and(a, i, v));
  aadd = (a, i, v) => (h(Op.Add, a, i), Atomics.add(a, i, v));
  spinPoint = (a, i) => h(Op.Spin, a, i);
  guestPoint = (w, a, i) => h(w ? Op.GuestWrite : Op.GuestRead, a, i);
}

export function schedHookInstalled(): boolean {
  return hook !== null;
}

/**
 * Atomics.waitAsync for the owner thread, resolved on a notify, on a changed value (after one
 * macrotask, so callers polling in a loop yield) or after `ms`. A bare waitAsync's timeout does
 * not keep Node's event loop alive: when nothing else is pending (every worker already exited)
 * its promise would never settle. A timer of the same length keeps the loop alive.
 */
export async function waitAsyncAlive(a: Int32Array, i: number, v: number, ms: number): Promise<void> {
  const r = Atomics.waitAsync(a, i, v, ms);
  if (!r.async) {
    await new Promise((res) => setImmediate(res));
    return;
  }
  let t: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([r.value, new Promise((res) => (t = setTimeout(res, Math.min(ms, 2 ** 31 - 1))))]);
  clearTimeout(t);
}

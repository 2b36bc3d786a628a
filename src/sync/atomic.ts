/**
 * Every shared-memory operation of the MMU goes through these wrappers so that a controlled
 * scheduler (src/sync/sched.ts) can decide, at each one, which thread runs next. With no hook
 * installed (real-thread mode) each wrapper is one null check around the Atomics call and V8
 * inlines it.
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

/** Installs (or with null removes) the scheduling hook for this thread. */
export function setSchedHook(h: SchedHook | null): void {
  hook = h;
}

export function schedHookInstalled(): boolean {
  return hook !== null;
}

export function aload(a: Int32Array, i: number): number {
  if (hook !== null) hook(Op.Load, a, i);
  return Atomics.load(a, i);
}

export function astore(a: Int32Array, i: number, v: number): void {
  if (hook !== null) hook(Op.Store, a, i);
  Atomics.store(a, i, v);
}

export function axchg(a: Int32Array, i: number, v: number): number {
  if (hook !== null) hook(Op.Xchg, a, i);
  return Atomics.exchange(a, i, v);
}

/** cmpxchg: returns the old value; the exchange happened iff it equals `expect`. */
export function acas(a: Int32Array, i: number, expect: number, v: number): number {
  if (hook !== null) hook(Op.Cas, a, i);
  return Atomics.compareExchange(a, i, expect, v);
}

export function aor(a: Int32Array, i: number, v: number): number {
  if (hook !== null) hook(Op.Or, a, i);
  return Atomics.or(a, i, v);
}

export function aand(a: Int32Array, i: number, v: number): number {
  if (hook !== null) hook(Op.And, a, i);
  return Atomics.and(a, i, v);
}

export function aadd(a: Int32Array, i: number, v: number): number {
  if (hook !== null) hook(Op.Add, a, i);
  return Atomics.add(a, i, v);
}

/** A spin-loop iteration: under the controlled scheduler another thread must get to run. */
export function spinPoint(a: Int32Array, i: number): void {
  if (hook !== null) hook(Op.Spin, a, i);
}

/** Guest data accesses are scheduling points too (only the check costs in real mode). */
export function guestPoint(write: boolean, a: Int32Array, i: number): void {
  if (hook !== null) hook(write ? Op.GuestWrite : Op.GuestRead, a, i);
}

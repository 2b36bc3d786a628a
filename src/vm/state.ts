/**
 * What a Vm holds (the kernel's struct kvm as its owner sees it, plus the threads it started):
 * the per-surface files of src/vm/ take it as their first argument. Every field lives on the
 * owner's thread only (the thread that created the Vm); the shared memory is in `kvm`.
 */
import type { Worker } from "node:worker_threads";
import { CTL, Kvm, KvmShared, SLOT, KVM_USER_MEM_SLOTS, VCPU } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { kvm_vcpu_kick } from "../kvm/requests.js";
import {
  HOLDER_OWNER,
  kvm_lock_bound_ms,
  kvm_vm_dead,
  kvm_watch_locks,
  VmDeadError,
} from "../kvm/vm_dead.js";
import { addDirtyLogTimes, newDirtyLogTimes, DirtyLogTimes } from "../mmu/write_protect.js";
import { RunCtl } from "../vcpu/vcpu.js";
import { TracePhase } from "../sync/trace_ring.js";
import { TP } from "../sync/tracepoints.js";

/** The tracepoint of each dirty-log ioctl (a slice: fields at the start, dirty pages at the end). */
const DIRTY_LOG_TP = {
  get: TP.kvm_vm_ioctl_get_dirty_log,
  clear: TP.kvm_vm_ioctl_clear_dirty_log,
  reset: TP.kvm_vm_ioctl_reset_dirty_pages,
} as const;

/**
 * How long the owner waits for a vCPU to answer (park, audit, stop, flush acknowledgement)
 * before the VM fails with ETIMEDOUT naming that vCPU. Starting and parking wait this long
 * without progress (ProgressDeadline), at most VCPU_WAIT_MAX_MS in all.
 */
export const VCPU_WAIT_MS = 10_000;

/** The longest a vCPU that keeps making progress may take to start or to park. */
export const VCPU_WAIT_MAX_MS = 120_000;

/**
 * A wait that fails when what it waits for stops making progress, not at a fixed time: under
 * CPU load a vCPU thread that gets little CPU is slow, not stuck. `progress` is a number that
 * grows while the thread works (its guest entries, its event loop's busy time); the grace
 * counts from its last change, and `maxMs` bounds the whole wait (a thread busy forever).
 * The clock is the caller's (ms).
 */
export class ProgressDeadline {
  private last: number;
  private since: number;
  private readonly end: number;

  constructor(
    private readonly graceMs: number,
    private readonly maxMs: number,
    progress: number,
    now: number,
  ) {
    this.last = progress;
    this.since = now;
    this.end = now + maxMs;
  }

  /** True once progress has stood still for the grace, or the whole wait took maxMs. */
  expired(progress: number, now: number): boolean {
    if (progress !== this.last) {
      this.last = progress;
      this.since = now;
    }
    return now - this.since > this.graceMs || now > this.end;
  }

  /** How it expired, for the error. */
  why(now: number): string {
    return now > this.end ? `in ${this.maxMs} ms` : `in ${this.graceMs} ms (no progress)`;
  }
}

/**
 * stop()'s default `ackTimeoutMs`: how long a vCPU kicked in guest mode may go without entering
 * the guest again (its VCPU.entries count standing still) before stop() takes it for a guest
 * spinning in JavaScript, which no kick reaches, and terminates its worker.
 */
export const VCPU_ACK_MS = 500;

/** What stop() did beyond stopping the vCPUs at their safe points. */
export interface StopResult {
  /**
   * The vCPUs whose guest never acknowledged the stop within `ackTimeoutMs` while in guest mode
   * (it ran JavaScript that made no guest access): their workers were terminated, their PML
   * buffers flushed on their behalf; the VM is not failed by it and may run again.
   */
  terminated: number[];
}

export interface VmState {
  readonly kvm: Kvm;
  readonly shared: KvmShared;
  /** vCPU id -> its worker, while it runs. */
  readonly workers: Map<number, Worker>;
  readonly created: Set<number>;
  hostWorker: Worker | null;
  hostCtl: Int32Array | null;
  /** Set by run(), cleared by stop(): memslots are created and deleted only while it is false. */
  running: boolean;
  /** stop() in progress: a worker exiting now is expected, not a failure. */
  stopping: boolean;
  /** The first error a worker reported; the VM is stopped when one arrives, and dead for good. */
  error: KvmError | Error | null;
  /** The soft-lockup watchdog while the vCPUs run (a timer of the owner's event loop). */
  watchdog: NodeJS.Timeout | null;
  /** getDirtyLog times: the sum over calls, and the last call's. */
  readonly times: DirtyLogTimes;
  lastTimes: DirtyLogTimes;
  /** clearDirtyLog and resetDirtyRings times, the same way. */
  readonly clearTimes: DirtyLogTimes;
  lastClear: DirtyLogTimes;
  readonly resetTimes: DirtyLogTimes;
  lastReset: DirtyLogTimes;
}

export function newVmState(shared: KvmShared): VmState {
  const kvm = new Kvm(shared);
  kvm_watch_locks(kvm, HOLDER_OWNER);
  return {
    kvm,
    shared,
    workers: new Map(),
    created: new Set(),
    hostWorker: null,
    hostCtl: null,
    running: false,
    stopping: false,
    error: null,
    watchdog: null,
    times: newDirtyLogTimes(),
    lastTimes: newDirtyLogTimes(),
    clearTimes: newDirtyLogTimes(),
    lastClear: newDirtyLogTimes(),
    resetTimes: newDirtyLogTimes(),
    lastReset: newDirtyLogTimes(),
  };
}

/** Each Vm's state, for the internal entry point (src/vm/internal.ts); weak, as the Vm is. */
export const VM_STATES = new WeakMap<object, VmState>();

/** The VM fails: the first error is kept, every vCPU is told to stop and kicked. */
export function vm_fail(st: VmState, e: Error): void {
  st.error ??= e;
  Atomics.store(st.kvm.ctl, CTL.vm_state, 2);
  for (const id of st.created) {
    Atomics.store(st.kvm.vcpu, VCPU.run(id), RunCtl.Stop);
    kvm_vcpu_kick(st.kvm, id);
  }
}

export function vm_throw_if_failed(st: VmState): void {
  if (st.error) throw st.error;
}

/** True once the VM failed (vm.error, or a thread marked it dead and its report is on the way). */
export function vm_is_dead(st: VmState): boolean {
  return st.error !== null || kvm_vm_dead(st.kvm);
}

/** What a call on a dead VM throws: EIO naming the call, the VM's error as its cause. */
export function vm_dead_error(st: VmState, what: string): KvmError {
  const cause = st.error ?? new Error("a thread of the VM failed (vm.error will name it)");
  return new KvmError("EIO", `${what}: the VM is dead: ${cause.message}`, { cause });
}

/** kvm_vm_dead() as the ioctl layer checks it: EIO at once, before any lock is taken. */
export function vm_check_dead(st: VmState, what: string): void {
  if (vm_is_dead(st)) throw vm_dead_error(st, what);
}

/**
 * An ioctl on `st`: refused at once on a dead VM; a wait it gave up because the VM died is EIO
 * with the VM's error, and an ETIMEDOUT that killed the VM (a flush never acknowledged, a soft
 * lockup of mmu_lock's holder) becomes the VM's error.
 */
export function vm_ioctl<T>(st: VmState, what: string, fn: () => T): T {
  vm_check_dead(st, what);
  try {
    return fn();
  } catch (e) {
    if (e instanceof KvmError && e.code === "ETIMEDOUT" && kvm_vm_dead(st.kvm)) vm_fail(st, e);
    if (e instanceof VmDeadError) throw vm_dead_error(st, what);
    throw e;
  }
}

/** How long stop() waits for a vCPU: on a dead VM a stuck thread is not waited for past the bound. */
export function vm_grace_ms(st: VmState): number {
  return vm_is_dead(st) ? Math.min(VCPU_WAIT_MS, Math.max(50, kvm_lock_bound_ms(st.kvm) / 2)) : VCPU_WAIT_MS;
}

export function isInt(x: unknown): x is number {
  return typeof x === "number" && Number.isSafeInteger(x);
}

export function describe(x: unknown): string {
  if (x === null || typeof x !== "object") return String(x);
  return (x.constructor as { name?: string } | undefined)?.name ?? "an object";
}

/** Refuses a slot id out of range (EINVAL), whether or not the slot exists. */
export function check_slot_id(slot: number): void {
  if (!isInt(slot) || slot < 0 || slot >= KVM_USER_MEM_SLOTS)
    throw einval("slot", `must be 0..${KVM_USER_MEM_SLOTS - 1}, got ${String(slot)}`);
}

/** Refuses a slot id that is out of range or not created. */
export function check_slot(kvm: Kvm, slot: number): void {
  check_slot_id(slot);
  if (kvm.slots[SLOT.active(slot)] === 0) throw new KvmError("ENOENT", `slot: slot ${slot} does not exist`);
}

/** Refuses an id that is not a created vCPU. */
export function vm_check_vcpu(st: VmState, id: number): void {
  if (!isInt(id) || !st.created.has(id)) throw einval("id", `no vCPU ${String(id)}`);
}

/** EBUSY naming `arg` while the vCPUs run: memslots change only while they are stopped. */
export function check_idle(st: VmState, arg: string): void {
  if (st.running)
    throw new KvmError(
      "EBUSY",
      `${arg}: memslots can be created or deleted only while the vCPUs are stopped`,
    );
}

/** Which of the VM's time sums a dirty-log call adds to: GET, CLEAR or the rings' reset. */
export type DirtyLogCall = "get" | "clear" | "reset";

/**
 * Runs the MMU side of one dirty-log ioctl (slots_lock held) with fresh times, adds them to the
 * VM's sum for `kind` and keeps them as its last call. A flush no vCPU acknowledged
 * (ETIMEDOUT) fails the VM before the error goes on to the caller.
 */
export function vm_timed_dirty_log_call<T>(
  st: VmState,
  kind: DirtyLogCall,
  fn: (call: DirtyLogTimes) => T,
  traceFields: readonly number[] = [],
): T {
  const call = newDirtyLogTimes();
  const t = st.kvm.trace;
  const tp = DIRTY_LOG_TP[kind];
  if (t.on) t.emit(tp, TracePhase.Begin, traceFields[0], traceFields[1], traceFields[2]);
  let r: T;
  try {
    r = fn(call);
  } catch (e) {
    if (t.on) t.emit(tp, TracePhase.End);
    if (e instanceof KvmError && e.code === "ETIMEDOUT") vm_fail(st, e);
    throw e;
  }
  if (t.on) t.emit(tp, TracePhase.End, call.dirtyPages);
  switch (kind) {
    case "get":
      addDirtyLogTimes(st.times, call);
      st.lastTimes = call;
      break;
    case "clear":
      addDirtyLogTimes(st.clearTimes, call);
      st.lastClear = call;
      break;
    case "reset":
      addDirtyLogTimes(st.resetTimes, call);
      st.lastReset = call;
      break;
  }
  return r;
}

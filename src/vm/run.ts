/**
 * The vCPU threads' lifecycle (KVM_RUN as the VMM drives it): one worker_thread per vCPU,
 * started, parked, audited, resumed and stopped through each vCPU's run control word.
 */
import { Worker } from "node:worker_threads";
import { CTL, OUTSIDE_GUEST_MODE, ST, VCPU } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { kvm_vcpu_kick, VCPU_KICK, VcpuState } from "../kvm/requests.js";
import { RunCtl } from "../vcpu/vcpu.js";
import { mmu_free_memory_caches } from "../mmu/mmu_cache.js";
import type { GuestArgs } from "../workload/guest.js";
import { validateGuestSpecs } from "../guest/spec.js";
import { waitAsyncAlive } from "../sync/atomic.js";
import {
  isInt,
  vm_check_dead,
  vm_fail,
  vm_grace_ms,
  vm_throw_if_failed,
  StopResult,
  ProgressDeadline,
  VCPU_ACK_MS,
  VCPU_WAIT_MAX_MS,
  VCPU_WAIT_MS,
  VmState,
} from "./state.js";
import { vmx_flush_pml_buffer } from "../kvm/pml.js";
import { kvm_get_running_vcpu, kvm_set_running_vcpu } from "../mem/dirty_ring.js";
import { kvm_find_lockup, kvm_lock_bound_ms } from "../kvm/vm_dead.js";
import { vm_watch } from "./workers.js";
import { workerFlags } from "../sync/worker_flags.js";
import { vm_stop_host_thread } from "./host_thread.js";

export function vm_vcpu_ids(st: VmState): number[] {
  return [...st.created].sort((a, b) => a - b);
}

/** Every spec is built and checked (EINVAL naming the field) before any worker starts. */
function checked_specs(st: VmState, guest: (id: number) => GuestArgs): Map<number, GuestArgs> {
  const specs = validateGuestSpecs(guest, vm_vcpu_ids(st));
  for (const [id, spec] of specs) {
    try {
      structuredClone(spec);
    } catch (e) {
      throw einval("guest", `vcpu ${id}: the spec cannot be sent to a worker (${(e as Error).message})`);
    }
  }
  return specs;
}

/** Vm.run: see there. */
export async function vm_run(
  st: VmState,
  guest: (id: number) => GuestArgs,
  opts: { tlbBits?: number },
): Promise<void> {
  vm_check_dead(st, "run");
  if (st.running) throw new KvmError("EBUSY", "run: the vCPUs are already running");
  if (st.created.size === 0) throw einval("run", "no vCPU was created");
  const tlbBits = (opts ?? {}).tlbBits ?? 12;
  if (!isInt(tlbBits) || tlbBits < 1 || tlbBits > 20) throw einval("tlbBits", "must be 1..20");
  const specs = checked_specs(st, guest);
  const kvm = st.kvm;
  st.running = true;
  Atomics.store(kvm.ctl, CTL.vm_state, 0);
  vm_start_watchdog(st);
  try {
    for (const [id, spec] of specs) {
      Atomics.store(kvm.vcpu, VCPU.run(id), RunCtl.Run);
      Atomics.store(kvm.vcpu, VCPU.state(id), VcpuState.Created);
      const w = new Worker(new URL("../workload/vcpu_worker.js", import.meta.url), {
        ...workerFlags(),
        workerData: { shared: st.shared, vcpuId: id, guest: spec, tlbBits },
      });
      vm_watch(st, w, `vcpu ${id}`, id);
      st.workers.set(id, w);
    }
    for (const id of specs.keys()) await wait_state(st, id, (s) => s !== (VcpuState.Created as number));
  } catch (e) {
    vm_fail(st, e instanceof KvmError ? e : new KvmError("EIO", `run: ${(e as Error).message}`));
  }
  // A worker's message may have set it while we awaited.
  const err = st.error;
  if (err) {
    await vm_stop(st);
    throw err;
  }
}

/**
 * The soft-lockup watchdog: while the vCPUs run, the owner looks at mmu_lock's holder every
 * quarter of the bound, so a stuck vCPU fails the VM even when no thread waits for the lock.
 * unref'd: it never keeps the process alive.
 */
function vm_start_watchdog(st: VmState): void {
  const period = Math.max(10, kvm_lock_bound_ms(st.kvm) / 4);
  st.watchdog = setInterval(() => {
    if (st.error) return;
    const e = kvm_find_lockup(st.kvm);
    if (e) vm_fail(st, e);
  }, period);
  st.watchdog.unref();
}

/**
 * How far vCPU `id`'s thread has got: its guest entries once it runs; before that (a worker
 * loading its modules, slow under CPU load) its event loop's busy time, which stands still
 * when the load waits on something that never comes.
 */
function vcpu_progress(st: VmState, id: number): number {
  const v = st.kvm.vcpu;
  if (Atomics.load(v, VCPU.state(id)) === (VcpuState.Created as number))
    return st.workers.get(id)?.performance.eventLoopUtilization().active ?? 0;
  return Atomics.load(v, VCPU.entries(id));
}

/**
 * Waits until vCPU `id` reaches a state `ok` accepts (or dies). The VM fails (ETIMEDOUT) once the
 * vCPU has made no progress for VCPU_WAIT_MS, or after VCPU_WAIT_MAX_MS in all.
 */
async function wait_state(
  st: VmState,
  id: number,
  ok: (s: number) => boolean,
  what = "answer",
): Promise<void> {
  const v = st.kvm.vcpu;
  const i = VCPU.state(id);
  const deadline = new ProgressDeadline(VCPU_WAIT_MS, VCPU_WAIT_MAX_MS, vcpu_progress(st, id), Date.now());
  for (;;) {
    const s = Atomics.load(v, i);
    if (ok(s) || s === (VcpuState.Dead as number) || s === (VcpuState.Stopped as number)) return;
    // A worker that died before reporting any state must not leave us waiting.
    if (st.error) return;
    const now = Date.now();
    if (deadline.expired(vcpu_progress(st, id), now)) {
      vm_fail(st, new KvmError("ETIMEDOUT", `vcpu ${id}: did not ${what} ${deadline.why(now)}`));
      return;
    }
    await waitAsyncAlive(v, i, s, 50);
  }
}

/** Vm.pause: see there. */
export async function vm_pause(st: VmState): Promise<void> {
  vm_check_dead(st, "pause");
  if (!st.running || st.workers.size === 0) throw einval("pause", "the vCPUs are not running");
  vm_throw_if_failed(st);
  for (const id of st.workers.keys()) {
    Atomics.store(st.kvm.vcpu, VCPU.run(id), RunCtl.Pause);
    // A vCPU asleep on its run word (dirty-limit's sleep in a ring-full exit) parks at once.
    Atomics.notify(st.kvm.vcpu, VCPU.run(id));
    kvm_vcpu_kick(st.kvm, id);
    st.workers.get(id)?.postMessage(VCPU_KICK);
  }
  for (const id of st.workers.keys())
    await wait_state(st, id, (s) => s === (VcpuState.Paused as number), "park");
  vm_throw_if_failed(st);
}

/** Vm.auditTlbs: see there. */
export async function vm_audit_tlbs(st: VmState): Promise<Map<number, number>> {
  vm_check_dead(st, "auditTlbs");
  const v = st.kvm.vcpu;
  for (const id of st.workers.keys())
    if (Atomics.load(v, VCPU.state(id)) !== (VcpuState.Paused as number))
      throw new KvmError("EBUSY", "auditTlbs: the vCPUs must be paused");
  const out = new Map<number, number>();
  for (const id of st.workers.keys()) {
    const run = VCPU.run(id);
    Atomics.store(v, run, RunCtl.Audit);
    Atomics.notify(v, run);
    await wait_state(st, id, (s) => s === (VcpuState.Audited as number), "audit its TLB");
    out.set(id, st.kvm.vcpuStats[ST.tlb_audit(id)]);
    Atomics.store(v, run, RunCtl.Pause);
    Atomics.notify(v, run);
    await wait_state(st, id, (s) => s === (VcpuState.Paused as number));
  }
  vm_throw_if_failed(st);
  return out;
}

export function vm_resume(st: VmState): void {
  vm_check_dead(st, "resume");
  for (const id of st.workers.keys()) {
    const i = VCPU.run(id);
    Atomics.store(st.kvm.vcpu, i, RunCtl.Run);
    Atomics.notify(st.kvm.vcpu, i);
  }
}

/** Vm.stop: see there. */
export async function vm_stop(st: VmState, opts: { ackTimeoutMs?: number } = {}): Promise<StopResult> {
  const ackMs = (opts ?? {}).ackTimeoutMs ?? VCPU_ACK_MS;
  if (!isInt(ackMs) || ackMs < 1 || ackMs > VCPU_WAIT_MS)
    throw einval("ackTimeoutMs", `must be an integer 1..${VCPU_WAIT_MS}, got ${String(ackMs)}`);
  const kvm = st.kvm;
  st.stopping = true;
  try {
    for (const id of st.created) {
      const i = VCPU.run(id);
      Atomics.store(kvm.vcpu, i, RunCtl.Stop);
      kvm_vcpu_kick(kvm, id);
      Atomics.notify(kvm.vcpu, i);
      st.workers.get(id)?.postMessage(VCPU_KICK);
    }
    await vm_stop_host_thread(st);
    const terminated = await vm_wait_stopped(st, ackMs);
    await Promise.all(
      [...st.workers.values()].map((w) =>
        w.terminate().then(
          () => undefined,
          () => undefined,
        ),
      ),
    );
    st.workers.clear();
    for (const id of terminated) vm_flush_pml_of(kvm, id);
    // mmu_free_memory_caches: no worker is left to use them. A lock still held belongs to a
    // worker that was terminated inside it; the caches then stay where they are.
    if (!kvm.mmu_lock.isLocked()) for (const id of st.created) mmu_free_memory_caches(kvm, id);
    st.running = false;
    return { terminated };
  } finally {
    if (st.watchdog) clearInterval(st.watchdog);
    st.watchdog = null;
    st.stopping = false;
  }
}

/**
 * Waits for each worker's vCPU to stop. One that stays in guest mode with its entry count
 * standing still for `ackMs` never took the kick: its guest runs JavaScript that makes no guest
 * access, holds no lock and is in no MMU operation, so it is not waited for (returned, to be
 * terminated). One out of guest mode (in a fault, waiting on a lock) gets the whole grace; past
 * it the VM fails with ETIMEDOUT, as before.
 */
async function vm_wait_stopped(st: VmState, ackMs: number): Promise<number[]> {
  const v = st.kvm.vcpu;
  const stopped = (id: number): boolean => {
    const s = Atomics.load(v, VCPU.state(id));
    return s === (VcpuState.Stopped as number) || s === (VcpuState.Dead as number);
  };
  // A dead VM's stuck vCPU (spinning on a lock, or holding one) is not waited for long.
  const grace = vm_grace_ms(st);
  const deadline = Date.now() + grace;
  const spinning: number[] = [];
  // Per vCPU: its entry count when last seen, and since when it has stood still in guest mode.
  const seen = new Map<number, { entries: number; since: number }>();
  const stuck = (id: number, now: number): boolean => {
    const entries = Atomics.load(v, VCPU.entries(id));
    const last = seen.get(id);
    if (!last || last.entries !== entries || Atomics.load(v, VCPU.mode(id)) === OUTSIDE_GUEST_MODE) {
      seen.set(id, { entries, since: now });
      return false;
    }
    return now - last.since >= ackMs;
  };
  for (const id of st.workers.keys()) stuck(id, Date.now());
  for (const id of st.workers.keys()) {
    const i = VCPU.state(id);
    while (!stopped(id) && Date.now() < deadline) {
      if (stuck(id, Date.now())) {
        spinning.push(id);
        break;
      }
      await waitAsyncAlive(v, i, Atomics.load(v, i), Math.min(50, grace, ackMs));
    }
    if (!stopped(id) && !spinning.includes(id))
      vm_fail(st, new KvmError("ETIMEDOUT", `vcpu ${id}: did not stop in ${grace} ms`));
  }
  return spinning;
}

/**
 * The PML buffer of a vCPU whose worker was terminated in guest mode, flushed into the log on its
 * behalf (its exit would have done it): the pages it dirtied since its last exit stay logged.
 * Its thread is gone, so this thread is the buffer's and the ring's only writer.
 */
function vm_flush_pml_of(kvm: VmState["kvm"], id: number): void {
  if (kvm.pml.length === 0) return; // no PML on this VM
  const me = kvm_get_running_vcpu(kvm);
  kvm_set_running_vcpu(kvm, id);
  try {
    vmx_flush_pml_buffer(kvm, id, null);
  } finally {
    kvm_set_running_vcpu(kvm, me);
  }
}

/** Vm.waitPasses: see there. */
export async function vm_wait_passes(
  st: VmState,
  passes: number | readonly number[],
  opts: { timeoutMs?: number; service?: () => void },
): Promise<void> {
  const ids = vm_vcpu_ids(st);
  const targets = typeof passes === "number" ? ids.map(() => passes) : passes;
  if (!Array.isArray(targets) || targets.length !== ids.length)
    throw einval(
      "passes",
      `must be an integer >= 0 or an array of ${ids.length} of them, got ${String(passes)}`,
    );
  for (const t of targets)
    if (!isInt(t) || t < 0) throw einval("passes", `must be an integer >= 0, got ${String(t)}`);
  const timeoutMs = opts.timeoutMs ?? 60_000;
  if (typeof timeoutMs !== "number" || !(timeoutMs > 0))
    throw einval("timeoutMs", `must be a positive number, got ${String(timeoutMs)}`);
  const service = opts.service;
  if (service !== undefined && typeof service !== "function")
    throw einval("service", `must be a function, got ${String(service)}`);
  const v = st.kvm.vcpu;
  const deadline = performance.now() + timeoutMs;
  for (let k = 0; k < ids.length; k++) {
    const i = VCPU.passes(ids[k]);
    for (;;) {
      vm_throw_if_failed(st);
      service?.();
      const done = Atomics.load(v, i);
      if (done >= targets[k]) break;
      if (!st.running) throw einval("waitPasses", "the vCPUs are not running");
      const left = deadline - performance.now();
      if (left <= 0)
        throw new KvmError(
          "ETIMEDOUT",
          `waitPasses: vcpu ${ids[k]} completed ${done} of ${targets[k]} passes in ${timeoutMs} ms`,
        );
      // passDone does not notify: poll, a few ms at a time. (Not Atomics.waitAsync: its timeout
      // does not keep Node's event loop alive, so a wait with nothing else pending never ends.)
      await new Promise((r) => setTimeout(r, Math.min(5, left)));
    }
  }
  vm_throw_if_failed(st);
}

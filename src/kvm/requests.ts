/**
 * vCPU requests, modes and the remote TLB flush (make_all_cpus_request / kvm_flush_remote_tlbs).
 *
 * A flusher sets KVM_REQ_TLB_FLUSH in every vCPU's request word, then cmpxchg's each mode
 * IN_GUEST_MODE -> EXITING_GUEST_MODE (the IPI), and waits while a vCPU's mode is EXITING or
 * READING_SHADOW_PAGE_TABLES. A vCPU leaves those modes only at a safe point: between guest
 * accesses, or at the end of a lockless walk (fast_page_fault). Before it next uses its TLB it
 * sets mode IN and then reads its requests (both seq-cst), so when kvm_flush_remote_tlbs
 * returns no vCPU can use a translation older than the call. This is also the grace period
 * that protects vCPU lockless walkers from freed shadow pages.
 */
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
import {
  CTL,
  EXITING_GUEST_MODE,
  IN_GUEST_MODE,
  Kvm,
  KVM_REQ_TLB_FLUSH,
  OUTSIDE_GUEST_MODE,
  VCPU,
} from "../kvm_host.js";
import { aadd, acas, aload, aor, schedHookInstalled, spinPoint } from "../sync/atomic.js";
import { KvmError } from "../errors.js";
import { kvm_lock_bound_ms, kvm_mark_vm_dead, kvm_vm_dead, VmDeadError } from "./vm_dead.js";
import { kvm_get_running_vcpu } from "../mem/dirty_ring.js";
import { TracePhase, type Tracer } from "../sync/trace_ring.js";
import { TP } from "../sync/tracepoints.js";

/** What a vCPU worker is doing (VCPU.state). */
export const enum VcpuState {
  Created = 0,
  Running = 1,
  Paused = 2,
  Stopped = 3,
  Dead = 4,
  /** Parked, and the TLB audit asked for by RunCtl.Audit is published (ST.tlb_audit). */
  Audited = 5,
}

export function kvm_make_request(kvm: Kvm, vcpuId: number, req: number): void {
  aor(kvm.vcpu, VCPU.requests(vcpuId), req);
}

/**
 * The owner's message to a vCPU worker after a kick (stop, pause): a guest module waiting at an
 * `await` makes no guest access, so it takes the safe point when the message arrives.
 */
export const VCPU_KICK = "kvm_vcpu_kick";

/**
 * kvm_vcpu_kick without the wait: IN -> EXITING, so that a vCPU in guest mode takes a safe
 * point at its next guest access (the TLB hit compares against its mode). The owner kicks after
 * it stores run control (pause, stop); a vCPU outside guest mode reads run control as it
 * re-enters (Vcpu.enterGuest).
 */
export function kvm_vcpu_kick(kvm: Kvm, vcpuId: number): void {
  acas(kvm.vcpu, VCPU.mode(vcpuId), IN_GUEST_MODE, EXITING_GUEST_MODE);
}

/**
 * make_all_cpus_request: returns true if some vCPU had to be kicked and waited for. The vCPU this
 * thread runs (kvm_get_running_vcpu) gets the request but is not waited for: it cannot
 * acknowledge while this thread is here (KVM sends no IPI to the current CPU either). If it is
 * in guest mode with a request, it is kicked, so its next guest access takes the safe point
 * that serves the request before using its TLB. `trace`: the flusher's recorder, which starts a
 * flow (tlb_flush_request) to each vCPU it waits for; the vCPU ends it when it serves the request.
 */
export function make_all_cpus_request(kvm: Kvm, req: number, trace: Tracer | null = null): boolean {
  const v = kvm.vcpu;
  const n = aload(kvm.ctl, CTL.nr_vcpus);
  const me = kvm_get_running_vcpu(kvm);
  // Kick everyone first (the IPIs go out together), then wait for each acknowledgement.
  let kicked = 0;
  let waited = false;
  for (let i = 0; i < n; i++) {
    aor(v, VCPU.requests(i), req);
    if (i === me) {
      if (req !== 0) acas(v, VCPU.mode(i), IN_GUEST_MODE, EXITING_GUEST_MODE);
      continue;
    }
    // kvm_vcpu_exiting_guest_mode: IN -> EXITING; any mode but OUTSIDE must acknowledge.
    const old = acas(v, VCPU.mode(i), IN_GUEST_MODE, EXITING_GUEST_MODE);
    if (old === OUTSIDE_GUEST_MODE) continue;
    waited = true;
    if (trace !== null) trace_flush_request(trace, i);
    if (i < 31) kicked |= 1 << i;
    else waitForAck(kvm, i);
  }
  for (let i = 0; kicked !== 0; i++, kicked >>>= 1) if ((kicked & 1) !== 0) waitForAck(kvm, i);
  return waited;
}

/**
 * Waits for vCPU i to leave EXITING / READING_SHADOW_PAGE_TABLES. Past the soft-lockup bound
 * (KvmConfig.lockHoldTimeoutMs) the VM is dead and this throws ETIMEDOUT naming the vCPU; on a
 * dead VM it throws VmDeadError at once, so a stuck vCPU costs one bound, not one per flush.
 */
function waitForAck(kvm: Kvm, i: number): void {
  const v = kvm.vcpu;
  let spins = 0;
  let t0 = 0;
  for (;;) {
    const m = aload(v, VCPU.mode(i));
    if (m === OUTSIDE_GUEST_MODE || m === IN_GUEST_MODE) return;
    if (aload(v, VCPU.state(i)) === (VcpuState.Dead as number)) return;
    spinPoint(v, VCPU.mode(i));
    if (schedHookInstalled()) continue;
    // READING_SHADOW_PAGE_TABLES lasts a microsecond and its end is not notified: spin first.
    if (++spins < 2000) continue;
    if (kvm_vm_dead(kvm)) throw new VmDeadError("TLB flush");
    const bound = kvm_lock_bound_ms(kvm);
    if (t0 === 0) t0 = Date.now();
    else if (Date.now() - t0 > bound) {
      kvm_mark_vm_dead(kvm);
      throw new KvmError("ETIMEDOUT", `vcpu ${i}: no acknowledgement of a TLB flush in ${bound} ms`);
    }
    Atomics.wait(v, VCPU.mode(i), m, 0.2);
  }
}

/** kvm_flush_remote_tlbs. */
export function kvm_flush_remote_tlbs(kvm: Kvm): void {
  const t = kvm.trace;
  if (t.on && (!t.perAccessLocks || t.sampled())) return traced_flush_remote_tlbs(kvm, t);
  const kfd = kfunc_enter(KF.kvm_flush_remote_tlbs);
  try {
    make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH);
    aadd(kvm.ctl, CTL.remote_flushes, 1);
  } finally {
    kfunc_exit(kfd);
  }
}

/** kvm_flush_remote_tlbs as a slice, with a flow to each vCPU's ack. */
function traced_flush_remote_tlbs(kvm: Kvm, t: Tracer): void {
  t.emit(TP.kvm_flush_remote_tlbs, TracePhase.Begin);
  let waited = false;
  try {
    waited = make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH, t);
    aadd(kvm.ctl, CTL.remote_flushes, 1);
  } finally {
    t.emit(TP.kvm_flush_remote_tlbs, TracePhase.End, waited ? 1 : 0);
  }
}

/** A flow to vCPU v, unless a flush it has not served yet has one (its one ack serves both). */
function trace_flush_request(t: Tracer, v: number): void {
  const flow = t.flowId();
  if (t.flushPending(v, flow)) t.emit(TP.tlb_flush_request, TracePhase.Instant, v, flow);
}

/** The vCPU served KVM_REQ_TLB_FLUSH: ends the flow of the request, if one is pending. */
export function trace_flush_ack(t: Tracer, v: number): void {
  const flow = t.flushAck(v);
  if (flow !== 0) t.emit(TP.tlb_flush_ack, TracePhase.Instant, v, flow);
}

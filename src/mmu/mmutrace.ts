/**
 * The kvmmmu tracepoints (Linux's arch/x86/kvm/mmu/mmutrace.h): each trace_* takes what the
 * call site has and records the Linux fields (sync/tracepoints.ts). Call sites test kvm.trace.on
 * first, so a VM without a trace pays one boolean load; per-access events are sampled here.
 */
import { Kvm, SP } from "../kvm_host.js";
import { TracePhase } from "../sync/trace_ring.js";
import { TP } from "../sync/tracepoints.js";

/** What the fault tracepoints read of struct kvm_page_fault (mmu.ts's, which imports this file). */
interface FaultFields {
  vcpuId: number;
  addr: number;
  gfn: number;
  pfn: number;
  error_code: number;
  goal_level: number;
  it: { sptep: number; spte: number };
}

/** KVM_MMU_PAGE_ASSIGN: no generations here (mmu_valid_gen 0); unsync is never set (no unsync sp). */
function page(kvm: Kvm, tp: number, sp: number, created: number): void {
  const h = kvm.spHdr;
  kvm.trace.emit(tp, TracePhase.Instant, 0, h[SP.gfn(sp)], h[SP.role(sp)], h[SP.root_count(sp)], 0, created);
}

export function trace_kvm_mmu_get_page(kvm: Kvm, sp: number, created: boolean): void {
  page(kvm, TP.kvm_mmu_get_page, sp, created ? 1 : 0);
}

export function trace_kvm_mmu_prepare_zap_page(kvm: Kvm, sp: number): void {
  page(kvm, TP.kvm_mmu_prepare_zap_page, sp, 0);
}

export function trace_kvm_mmu_spte_requested(kvm: Kvm, fault: FaultFields): void {
  if (!kvm.trace.sampled()) return;
  kvm.trace.emit(TP.kvm_mmu_spte_requested, TracePhase.Instant, fault.gfn, fault.pfn, fault.goal_level);
}

export function trace_kvm_mmu_set_spte(kvm: Kvm, level: number, gfn: number, sptep: number): void {
  if (!kvm.trace.sampled()) return;
  kvm.trace.emit(TP.kvm_mmu_set_spte, TracePhase.Instant, gfn, kvm.spt[sptep], sptep, level);
}

/** After fast_page_fault: old_spte as the walk read it (fault.it.spte), new_spte as it is now. */
export function trace_fast_page_fault(kvm: Kvm, fault: FaultFields, ret: boolean): void {
  if (!kvm.trace.sampled()) return;
  const it = fault.it;
  kvm.trace.emit(
    TP.fast_page_fault,
    TracePhase.Instant,
    fault.vcpuId,
    fault.addr,
    fault.error_code,
    it.sptep,
    it.spte,
    it.sptep >= 0 ? kvm.spt[it.sptep] : 0,
    ret ? 1 : 0,
  );
}

export function trace_kvm_mmu_split_huge_page(
  kvm: Kvm,
  gfn: number,
  spte: number,
  level: number,
  errno: number,
): void {
  kvm.trace.emit(TP.kvm_mmu_split_huge_page, TracePhase.Instant, gfn, spte, level, errno);
}

export function trace_kvm_tdp_mmu_spte_changed(
  kvm: Kvm,
  gfn: number,
  level: number,
  oldSpte: number,
  newSpte: number,
): void {
  if (!kvm.trace.sampled()) return;
  kvm.trace.emit(TP.kvm_tdp_mmu_spte_changed, TracePhase.Instant, 0, gfn, level, oldSpte, newSpte);
}

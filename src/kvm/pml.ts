/**
 * PML buffers and kvm_flush_pml_buffers (kvm_arch_sync_dirty_log with PML): before
 * GET_DIRTY_LOG, CLEAR_DIRTY_LOG or a ring harvest reads the log, every vCPU's PML buffer must
 * be in it. A vCPU flushes its buffer at every exit (vmx_flush_pml_buffer; the write side is
 * src/vcpu/pml.ts), so kicking every vCPU in guest mode and waiting for the acknowledgement is
 * enough: one outside guest mode flushed as it left.
 *
 * The vCPU this thread runs (kvm_get_running_vcpu) is the exception: it cannot acknowledge a
 * kick while this thread is inside the ioctl. In KVM the caller of an ioctl is not in guest mode
 * (a vCPU thread left it, flushing its buffer, before it got there) and kvm_vcpu_kick sends no
 * IPI to the current CPU; here the thread may call the ioctl between two guest accesses, so it
 * flushes its own buffer itself, the flush that exit would have done, and is not waited for.
 */
import { Kvm, PML, PML_ENTITY_NUM } from "../kvm_host.js";
import { mark_page_dirty } from "../mem/memslot.js";
import { kvm_get_running_vcpu } from "../mem/dirty_ring.js";
import { make_all_cpus_request } from "./requests.js";

/**
 * vmx_flush_pml_buffer for vCPU `id`: every entry, oldest first, into the dirty log (bitmap or
 * the vCPU's ring). Only vCPU `id`'s thread may call it (its PML row is private to it). Adds
 * the entries to stats.flushed when given. Returns the entries flushed.
 */
export function vmx_flush_pml_buffer(kvm: Kvm, id: number, stats: { flushed: number } | null): number {
  const pml = kvm.pml;
  const row = PML.row(id);
  const used = pml[row + PML.used(0)];
  if (used === 0) return 0;
  const e0 = row + PML.entries(0);
  // Entry k (k-th written) sits at 511 - k: read from 511 down, in the order written (37c3ddfe5238).
  for (let k = 0; k < used; k++) mark_page_dirty(kvm, pml[e0 + PML_ENTITY_NUM - 1 - k]);
  pml[row + PML.used(0)] = 0;
  if (stats) stats.flushed += used;
  return used;
}

export function kvm_flush_pml_buffers(kvm: Kvm): void {
  const me = kvm_get_running_vcpu(kvm);
  if (me >= 0) vmx_flush_pml_buffer(kvm, me, null);
  make_all_cpus_request(kvm, 0);
}

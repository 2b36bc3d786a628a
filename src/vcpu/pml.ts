/**
 * Page Modification Logging, the vCPU's "hardware" side and vmx_flush_pml_buffer.
 *
 * With A/D bits, a write through a writable spte whose D bit is clear sets D (a cmpxchg: the MMU
 * may change the spte at the same moment) and, with PML, appends the gfn to the vCPU's 512-entry
 * buffer (PML rows in kvm.pml, private to the vCPU's thread). A full buffer is a PML-full exit:
 * the buffer is flushed before the write goes on. Every VM exit flushes it (vmx_handle_exit ->
 * vmx_flush_pml_buffer) into the dirty bitmap or the vCPU's dirty ring, oldest entry first
 * (37c3ddfe5238: the CPU fills the page from the top down, so the oldest entry is at 511).
 *
 * GET_DIRTY_LOG and CLEAR_DIRTY_LOG kick every vCPU first (kvm_flush_pml_buffers,
 * src/kvm/pml.ts, which also has vmx_flush_pml_buffer): a kicked vCPU exits at its next safe
 * point, which flushes, and the kick waits for that acknowledgement; a vCPU outside guest mode
 * flushed when it left.
 */
import { CTL, Kvm, KVM_DIRTY_RING_RSVD_ENTRIES, PML, PML_ENTITY_NUM } from "../kvm_host.js";

export { vmx_flush_pml_buffer };
import { acas } from "../sync/atomic.js";
import { vmx_flush_pml_buffer } from "../kvm/pml.js";
import { kvm_dirty_ring_used } from "../mem/dirty_ring.js";
import { SPTE_DIRTY } from "../mmu/spte.js";

/** PML statistics of this vCPU thread. */
export class PmlStats {
  /** D bits set by guest writes (each one PML entry). */
  logged = 0;
  /** PML-full exits. */
  fullExits = 0;
  /** Entries flushed into the log. */
  flushed = 0;
}

/**
 * The write of vCPU `id` through the writable spte `s` at `sptep` whose D bit is clear: sets D
 * and logs `gfn`. Returns false if the spte changed under it (the vCPU walks again).
 */
export function pml_log_write(
  kvm: Kvm,
  id: number,
  sptep: number,
  s: number,
  gfn: number,
  stats: PmlStats,
): boolean {
  const pml = kvm.pml;
  const row = PML.row(id);
  let used = pml[row + PML.used(0)];
  // A full buffer, or (ring mode) a flush that could push the ring past its reserve: exit first.
  const ring = kvm.ctl[CTL.dirty_ring_size];
  if (
    used === PML_ENTITY_NUM ||
    (ring !== 0 && used > 0 && kvm_dirty_ring_used(kvm, id) + used >= ring - KVM_DIRTY_RING_RSVD_ENTRIES)
  ) {
    stats.fullExits++;
    vmx_flush_pml_buffer(kvm, id, stats);
    used = 0;
  }
  if (acas(kvm.spt, sptep, s, s | SPTE_DIRTY) !== s) return false;
  pml[row + PML.entries(0) + PML_ENTITY_NUM - 1 - used] = gfn;
  pml[row + PML.used(0)] = used + 1;
  stats.logged++;
  return true;
}

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
import { CTL, Kvm, PML, PML_ENTITY_NUM, SLOT } from "../kvm_host.js";
import { gfn_to_memslot, mark_page_dirty, slot_dirty_logged } from "../mem/memslot.js";
import { aor } from "../sync/atomic.js";
import { KF, kfunc_enter, kfunc_exit } from "../sync/kfunc.js";
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
  // Entry k (k-th written) sits at 511 - k: read from 511 down, in the order written (37c3ddfe5238).
  const top = row + PML.entries(0) + PML_ENTITY_NUM - 1;
  if (kvm.ctl[CTL.dirty_ring_size] !== 0) for (let k = 0; k < used; k++) mark_page_dirty(kvm, pml[top - k]);
  else pml_mark_bitmap(kvm, pml, top, used);
  pml[row + PML.used(0)] = 0;
  if (stats) stats.flushed += used;
  return used;
}

/**
 * The bitmap side of the flush: mark_page_dirty of the `used` gfns from pml[top] down, with the
 * memslot looked up (and its logging flag read) once per run of gfns in one slot, and the bits
 * of one bitmap word OR-ed in with one atomic OR where KVM's set_bit_le takes one per gfn. The
 * bitmap ends the same; a GET racing the flush sees some of its bits or all, as in KVM (the
 * order of bits within one flush is not observable in a bitmap; the ring keeps it, above).
 */
function pml_mark_bitmap(kvm: Kvm, pml: Int32Array, top: number, used: number): void {
  const kfd = kfunc_enter(KF.mark_page_dirty_in_slot);
  const s = kvm.slots;
  const pool = kvm.bitmapPool;
  let base = 0;
  let end = 0; // [base, end): the gfns of the slot looked up last; empty at first
  let logged = false;
  let bitmap = 0;
  let word = -1;
  let bits = 0;
  for (let k = 0; k < used; k++) {
    const gfn = pml[top - k];
    if (gfn < base || gfn >= end) {
      const slot = gfn_to_memslot(kvm, gfn);
      if (slot < 0) {
        end = 0;
        continue;
      }
      base = s[SLOT.base_gfn(slot)];
      end = base + s[SLOT.npages(slot)];
      logged = slot_dirty_logged(kvm, slot);
      bitmap = s[SLOT.bitmap_base(slot)];
    }
    if (!logged) continue;
    const rel = gfn - base;
    const w = bitmap + (rel >>> 5);
    if (w !== word) {
      if (bits !== 0) aor(pool, word, bits);
      word = w;
      bits = 0;
    }
    bits |= 1 << (rel & 31);
  }
  if (bits !== 0) aor(pool, word, bits);
  kfunc_exit(kfd);
}

export function kvm_flush_pml_buffers(kvm: Kvm): void {
  const me = kvm_get_running_vcpu(kvm);
  if (me >= 0) vmx_flush_pml_buffer(kvm, me, null);
  make_all_cpus_request(kvm, 0);
}

/**
 * kvm_flush_pml_buffers (kvm_arch_sync_dirty_log with PML): before GET_DIRTY_LOG or
 * CLEAR_DIRTY_LOG reads the bitmap, every vCPU's PML buffer must be in it. A vCPU flushes its
 * buffer at every exit (src/vcpu/pml.ts), so kicking every vCPU in guest mode and waiting for
 * the acknowledgement is enough: one outside guest mode flushed as it left.
 */
import { Kvm } from "../kvm_host.js";
import { make_all_cpus_request } from "./requests.js";

export function kvm_flush_pml_buffers(kvm: Kvm): void {
  make_all_cpus_request(kvm, 0);
}

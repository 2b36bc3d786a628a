/**
 * userfaultfd on one memslot as the VMM uses it for post-copy: register, discard (the pages
 * become missing), copy (UFFDIO_COPY), the pending faults and their statistics. The missing
 * bitmap and the vCPUs' waits are src/mem/userfault.ts.
 */
import { KVM_USER_MEM_SLOTS, PAGE_SIZE, SLOT, UFFD, UFFD_BITMAP, UFFD_VCPU, VCPU } from "../kvm_host.js";
import { VcpuState } from "../kvm/requests.js";
import { einval, KvmError } from "../errors.js";
import { uffd_copy, uffd_discard, uffd_missing, uffd_words } from "../mem/userfault.js";
import { kvm_mmu_zap_memslot } from "../mmu/memslot.js";
import { waitAsyncAlive } from "../sync/atomic.js";
import { isInt, VmState } from "./state.js";
import { vm_vcpu_ids } from "./run.js";

/** Vm.userfaultRegister (UFFDIO_REGISTER): see there. */
export function vm_userfault_register(st: VmState, slot: number): void {
  const kvm = st.kvm;
  if (!isInt(slot) || slot < 0 || slot >= KVM_USER_MEM_SLOTS || kvm.slots[SLOT.active(slot)] === 0)
    throw einval("slot", `no memslot ${String(slot)}`);
  if (st.running) throw new KvmError("EBUSY", "userfaultRegister: the vCPUs are running");
  if (kvm.uffd[UFFD.slot] !== 0) throw new KvmError("EEXIST", "slot: a memslot is already registered");
  const npages = kvm.slots[SLOT.npages(slot)];
  let buf: SharedArrayBuffer;
  try {
    buf = new SharedArrayBuffer(uffd_words(npages) * 4);
  } catch (e) {
    throw new KvmError("ENOMEM", `slot: cannot allocate the missing bitmap (${(e as Error).message})`);
  }
  // Before the workers start: each one attaches to this buffer.
  st.shared.uffd = buf;
  kvm.uffd = new Int32Array(buf);
  kvm.uffd[UFFD.npages] = npages;
  Atomics.store(kvm.uffd, UFFD.slot, slot + 1);
}

function uffd_slot(st: VmState, what: string): number {
  const slot = st.kvm.uffd[UFFD.slot] - 1;
  if (slot < 0) throw einval(what, "no memslot is registered (userfaultRegister)");
  return slot;
}

/** Vm.userfaultDiscard (MADV_DONTNEED on the registered range): see there. */
export function vm_userfault_discard(st: VmState, bitmap: Uint32Array): number {
  const kvm = st.kvm;
  const slot = uffd_slot(st, "userfaultDiscard");
  const npages = kvm.uffd[UFFD.npages];
  if (!(bitmap instanceof Uint32Array) || bitmap.length < Math.ceil(npages / 32))
    throw einval("bitmap", `must be a Uint32Array of at least ${Math.ceil(npages / 32)} words`);
  // Parked vCPUs are outside guest mode and re-check their requests (the flush) on entry, as
  // QEMU's discard runs with the vCPU threads up but stopped.
  if (st.running && !vm_all_parked(st))
    throw new KvmError("EBUSY", "userfaultDiscard: the vCPUs are running (pause them first)");
  kvm_mmu_zap_memslot(kvm, slot);
  return uffd_discard(kvm, slot, bitmap);
}

/** Every started vCPU is parked (Vm.pause answered). */
function vm_all_parked(st: VmState): boolean {
  for (const id of st.workers.keys())
    if (Atomics.load(st.kvm.vcpu, VCPU.state(id)) !== (VcpuState.Paused as number)) return false;
  return true;
}

/** Vm.userfaultCopy (UFFDIO_COPY): see there. */
export function vm_userfault_copy(st: VmState, gpa: number, bytes: Uint8Array | null): boolean {
  const slot = uffd_slot(st, "userfaultCopy");
  const s = st.kvm.slots;
  const base = s[SLOT.base_gfn(slot)];
  if (
    !isInt(gpa) ||
    gpa % PAGE_SIZE !== 0 ||
    gpa / PAGE_SIZE < base ||
    gpa / PAGE_SIZE >= base + s[SLOT.npages(slot)]
  )
    throw einval("gpa", `must be a page-aligned address in the registered slot, got ${String(gpa)}`);
  if (bytes !== null && (!(bytes instanceof Uint8Array) || bytes.length !== PAGE_SIZE))
    throw einval("bytes", `must be ${PAGE_SIZE} bytes or null`);
  let words: Int32Array | null = null;
  if (bytes) {
    words = new Int32Array(PAGE_SIZE / 4);
    new Uint8Array(words.buffer).set(bytes);
  }
  return uffd_copy(st.kvm, slot, gpa / PAGE_SIZE, words);
}

/** Vm.userfaultMissing: see there. */
export function vm_userfault_missing(st: VmState, gpa: number): boolean {
  if (!isInt(gpa) || gpa < 0) throw einval("gpa", `must be a non-negative integer, got ${String(gpa)}`);
  const slot = st.kvm.uffd[UFFD.slot] - 1;
  const s = st.kvm.slots;
  if (slot < 0) return false;
  const gfn = Math.floor(gpa / PAGE_SIZE);
  const base = s[SLOT.base_gfn(slot)];
  return gfn >= base && gfn < base + s[SLOT.npages(slot)] && uffd_missing(st.kvm, slot, gfn);
}

/** Vm.userfaultPending (read(uffd)): see there. */
export function vm_userfault_pending(st: VmState): { seq: number; gpas: number[] } {
  const u = st.kvm.uffd;
  if (u[UFFD.slot] === 0) return { seq: 0, gpas: [] };
  const seq = Atomics.load(u, UFFD.req_seq);
  const gpas: number[] = [];
  for (const id of st.created) {
    const g = Atomics.load(u, UFFD_VCPU.fault_gfn(id));
    if (g !== 0 && !gpas.includes((g - 1) * PAGE_SIZE)) gpas.push((g - 1) * PAGE_SIZE);
  }
  return { seq, gpas };
}

/** Vm.waitUserfault: see there. */
export async function vm_wait_userfault(st: VmState, seq: number, timeoutMs: number): Promise<number> {
  const u = st.kvm.uffd;
  if (u[UFFD.slot] === 0) throw einval("waitUserfault", "no memslot is registered (userfaultRegister)");
  await waitAsyncAlive(u, UFFD.req_seq, seq, timeoutMs);
  return Atomics.load(u, UFFD.req_seq);
}

/** Vm.userfaultClose: see there. */
export function vm_userfault_close(st: VmState): void {
  const u = st.kvm.uffd;
  if (u[UFFD.slot] === 0) return;
  Atomics.store(u, UFFD.closed, 1);
  for (let w = 0; w < Math.ceil(u[UFFD.npages] / 32); w++) Atomics.notify(u, UFFD_BITMAP.bits(w));
}

export interface UserfaultStats {
  missing: number;
  vcpus: { id: number; blockedMs: number; maxBlockedMs: number; faults: number }[];
}

/** Vm.userfaultStats: see there. */
export function vm_userfault_stats(st: VmState): UserfaultStats {
  const u = st.kvm.uffd;
  const registered = u[UFFD.slot] !== 0;
  return {
    missing: registered ? Atomics.load(u, UFFD.missing) : 0,
    vcpus: vm_vcpu_ids(st).map((id) => ({
      id,
      blockedMs: registered ? Atomics.load(u, UFFD_VCPU.blocked_us(id)) / 1000 : 0,
      maxBlockedMs: registered ? Atomics.load(u, UFFD_VCPU.blocked_max_us(id)) / 1000 : 0,
      faults: registered ? Atomics.load(u, UFFD_VCPU.faults(id)) : 0,
    })),
  };
}

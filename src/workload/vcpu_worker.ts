/**
 * Entry point of a vCPU worker thread. It attaches to the VM's shared memory, runs its guest
 * program until told to stop, and reports any error to the owner instead of dying silently:
 * its state becomes Dead first, so no flusher waits for it.
 *
 * A built-in guest runs synchronously. A user's guest module is imported first (outside guest
 * mode: the import is asynchronous), then its entry is called with the guest context; if the
 * entry returns, the vCPU halts (outside guest mode, pause and stop honoured) until stopped.
 */
import { parentPort, workerData } from "node:worker_threads";
import { CTL, Kvm, KvmShared, OUTSIDE_GUEST_MODE, VCPU } from "../kvm_host.js";
import { Vcpu, VcpuStop } from "../vcpu/vcpu.js";
import { VCPU_KICK, VcpuState } from "../kvm/requests.js";
import { GuestArgs, runGuest } from "./guest.js";
import { kvm_set_running_vcpu } from "../mem/dirty_ring.js";
import { KvmError } from "../errors.js";
import { gettid } from "../sync/affinity.js";
import { GuestEntry, VcpuGuestContext } from "../guest/context.js";
import { kvm_load_design } from "../mmu/design.js";
import { kvm_watch_locks, SoftLockupError, VmDeadError } from "../kvm/vm_dead.js";

interface VcpuWorkerData {
  shared: KvmShared;
  vcpuId: number;
  guest: GuestArgs;
  tlbBits: number;
}

const data = workerData as VcpuWorkerData;
// A design registered at run time: import the module that registers it in this thread too.
await kvm_load_design(data.shared);
const kvm = new Kvm(data.shared);
const vcpuId = data.vcpuId;
kvm.trace.setName(`vcpu ${vcpuId}`);
// A vCPU takes mmu_lock and flushes per fault: sampled as its other per-access events.
kvm.trace.perAccessLocks = true;
kvm_watch_locks(kvm, vcpuId + 1);
const vcpu = new Vcpu(kvm, data.vcpuId, data.tlbBits);
// The VM's owner (another thread) resets the ring: a ring-full exit waits for it here.
vcpu.ringFullWaits = true;
const ctx = new VcpuGuestContext(vcpu);
// kvm_get_running_vcpu() on this thread: its dirty-ring pushes go to this vCPU's ring.
kvm_set_running_vcpu(kvm, data.vcpuId);

async function loadEntry(url: string): Promise<GuestEntry> {
  const m = (await import(url)) as { default?: unknown; main?: unknown };
  const entry = typeof m.default === "function" ? m.default : m.main;
  if (typeof entry !== "function")
    throw Object.assign(new Error(`module: ${url} exports no default function and no main`), {
      code: "EINVAL",
    });
  return entry as GuestEntry;
}

/**
 * The owner's kick (vm.stop, vm.pause), for a guest module waiting at an `await` (a timer, I/O):
 * the message is handled only while the guest's synchronous code is not running, so never inside
 * an MMU operation; the vCPU takes its safe point there, as a halted vCPU does on a kick. A guest
 * that spins in JavaScript without touching memory never lets it run.
 */
let awaitingGuest = false;
parentPort?.on("message", (m: unknown) => {
  if (m !== VCPU_KICK || !awaitingGuest) return;
  try {
    vcpu.safePoint();
  } catch (e) {
    awaitingGuest = false;
    vcpuExit(e);
  }
});
// The kick listener alone does not keep the thread alive.
parentPort?.unref();

async function main(): Promise<void> {
  const g = data.guest;
  Atomics.store(kvm.vcpu, VCPU.tid(vcpuId), gettid());
  Atomics.store(kvm.vcpu, VCPU.state(vcpuId), VcpuState.Running);
  if (g.kind === undefined) {
    const entry = await loadEntry(String(g.module));
    vcpu.enterGuest();
    vcpu.safePoint();
    awaitingGuest = true;
    try {
      await entry(ctx, g.args);
    } finally {
      awaitingGuest = false;
    }
    vcpu.publishStats();
    // The program ended: halt until stopped (a pause still parks, an audit still answers).
    for (;;) ctx.halt(kvm.vcpu, VCPU.run(vcpuId), Atomics.load(kvm.vcpu, VCPU.run(vcpuId)), 50);
  }
  vcpu.enterGuest();
  vcpu.safePoint();
  runGuest(ctx, g);
  // Only an unknown guest kind gets here; a vCPU that ends silently would stay IN_GUEST_MODE.
  throw new KvmError("EINVAL", `guest: vcpu ${data.vcpuId} has no guest program of this kind`);
}

main().catch(vcpuExit);

/** The vCPU thread ends: stopped (VcpuStop), or dead with its error reported to the owner. */
function vcpuExit(e: unknown): void {
  vcpu.publishStats();
  // A wait given up because the VM died: the VM's error is already known; this vCPU just stops.
  if (e instanceof VcpuStop || e instanceof VmDeadError) {
    Atomics.store(kvm.vcpu, VCPU.state(vcpuId), VcpuState.Stopped);
  } else {
    Atomics.store(kvm.vcpu, VCPU.mode(vcpuId), OUTSIDE_GUEST_MODE);
    Atomics.store(kvm.vcpu, VCPU.state(vcpuId), VcpuState.Dead);
    Atomics.store(kvm.ctl, CTL.vm_state, 2);
    const err = e as Error & { code?: string };
    parentPort?.postMessage({
      type: "error",
      vcpu: data.vcpuId,
      message: err.message,
      code: err.code,
      stack: err.stack,
      lockup: e instanceof SoftLockupError ? e.report() : undefined,
    });
  }
  Atomics.notify(kvm.vcpu, VCPU.state(vcpuId));
  Atomics.notify(kvm.vcpu, VCPU.mode(vcpuId));
}

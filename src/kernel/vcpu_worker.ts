/**
 * One kernel vCPU's thread: KVM_RUN in a loop, one guest pass per iteration. The host publishes
 * the iteration in ctl[GO]; the worker enters the guest, which runs one pass and does OUT to
 * PASS_PORT (KVM_EXIT_IO); the worker stores the iteration in ctl[PASS0 + id] and waits,
 * outside guest mode (parked), for the next one. A ring-full exit is counted and re-entered
 * after a millisecond (the host harvests and resets meanwhile). GO = -1 ends the loop.
 * UNTESTED against a kernel (no /dev/kvm where it was written).
 */
import { parentPort, workerData } from "node:worker_threads";
import { check, loadLibc, MAP_SHARED, PROT_READ, PROT_WRITE } from "./libc.js";
import { KVM_EXIT_DIRTY_RING_FULL, KVM_EXIT_IO, KVM_RUN, KVM_RUN_OFF } from "./ioctl.js";
import { PASS_PORT } from "./guest_x86.js";

/** ctl words: the iteration, ring-full exits, then one pass counter per vCPU. */
export const CTL_GO = 0;
export const CTL_RING_FULL = 1;
export const CTL_PASS0 = 2;

export interface VcpuWorkerData {
  id: number;
  fd: number;
  mmapSize: number;
  ctl: SharedArrayBuffer;
}

async function main(d: VcpuWorkerData): Promise<void> {
  const libc = await loadLibc();
  const p = libc.mmap(d.mmapSize, PROT_READ | PROT_WRITE, MAP_SHARED, d.fd, 0);
  if (p === null) throw new Error(`vcpu ${d.id}: mmap of kvm_run failed (errno ${libc.errno()})`);
  const run = new DataView(libc.view(p, d.mmapSize));
  const ctl = new Int32Array(d.ctl);
  let it = 0;
  for (;;) {
    while (Atomics.load(ctl, CTL_GO) === it) Atomics.wait(ctl, CTL_GO, it, 100);
    it = Atomics.load(ctl, CTL_GO);
    if (it < 0) break;
    for (;;) {
      const r = libc.ioctlInt(d.fd, KVM_RUN, 0);
      if (r < 0 && libc.errno() === 4) continue; // EINTR
      check(libc, r, `KVM_RUN(vcpu ${d.id})`);
      const reason = run.getUint32(KVM_RUN_OFF.exit_reason, true);
      if (reason === KVM_EXIT_IO && run.getUint16(KVM_RUN_OFF.io_port, true) === PASS_PORT) break;
      if (reason === KVM_EXIT_DIRTY_RING_FULL) {
        Atomics.add(ctl, CTL_RING_FULL, 1);
        Atomics.wait(ctl, CTL_GO, it, 1);
        continue;
      }
      throw new Error(`vcpu ${d.id}: unexpected exit reason ${reason}`);
    }
    Atomics.store(ctl, CTL_PASS0 + d.id, it);
    Atomics.notify(ctl, CTL_PASS0 + d.id);
  }
  libc.munmap(p, d.mmapSize);
}

if (parentPort !== null && (workerData as { kernelVcpu?: VcpuWorkerData } | null)?.kernelVcpu !== undefined)
  main((workerData as { kernelVcpu: VcpuWorkerData }).kernelVcpu).catch((e: unknown) => {
    parentPort!.postMessage({ type: "error", message: (e as Error).message });
  });

/**
 * The host thread (src/workload/host_worker.ts): migrates and invalidates guest backing through
 * the MMU notifier while the vCPUs run. Its control words are in `hostCtl` (layout HOST).
 */
import { Worker } from "node:worker_threads";
import { KVM_USER_MEM_SLOTS, SLOT } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { HOST, HostWorkerData } from "../mem/host_thread.js";
import { waitAsyncAlive } from "../sync/atomic.js";
import { isInt, vm_check_dead, vm_fail, vm_grace_ms, VCPU_WAIT_MS, VmState } from "./state.js";
import { vm_watch } from "./workers.js";
import { workerFlags } from "../sync/worker_flags.js";

export interface HostThreadOptions {
  migrateRate: number;
  invalidateRate: number;
  invalidatePages?: number;
  seed?: number;
}

export async function vm_start_host_thread(st: VmState, o: HostThreadOptions): Promise<void> {
  vm_check_dead(st, "startHostThread");
  if (typeof o !== "object" || o === null) throw einval("options", `must be an object, got ${String(o)}`);
  for (const [k, v] of Object.entries({ migrateRate: o.migrateRate, invalidateRate: o.invalidateRate }))
    if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v))
      throw einval(k, `must be a rate >= 0, got ${String(v)}`);
  const pages = o.invalidatePages ?? 512;
  if (!isInt(pages) || pages < 1 || pages > 1 << 20)
    throw einval("invalidatePages", `must be an integer 1..${1 << 20}, got ${String(pages)}`);
  if (o.seed !== undefined && !isInt(o.seed))
    throw einval("seed", `must be an integer, got ${String(o.seed)}`);
  if (st.hostWorker) throw new KvmError("EBUSY", "startHostThread: already running");
  const ranges: [number, number][] = [];
  const s = st.kvm.slots;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (s[SLOT.active(id)]) ranges.push([s[SLOT.hva_page(id)], s[SLOT.npages(id)]]);
  }
  if (ranges.length === 0) throw einval("startHostThread", "no memslot to act on");
  const ctl = new SharedArrayBuffer(HOST.WORDS * 4);
  const hostCtl = new Int32Array(ctl);
  st.hostCtl = hostCtl;
  const data: HostWorkerData = {
    shared: st.shared,
    ctl,
    ranges,
    migrateRate: o.migrateRate,
    invalidateRate: o.invalidateRate,
    invalidatePages: pages,
    seed: o.seed ?? 1,
  };
  st.hostWorker = new Worker(new URL("../workload/host_worker.js", import.meta.url), {
    workerData: data,
    ...workerFlags(),
  });
  vm_watch(st, st.hostWorker, "host thread");
  while (Atomics.load(hostCtl, HOST.state) === 0 && !st.error) await new Promise((r) => setTimeout(r, 1));
}

export function vm_host_thread_counters(st: VmState): { migrations: number; invalidations: number } {
  const c = st.hostCtl;
  return { migrations: c ? Atomics.load(c, 2) : 0, invalidations: c ? Atomics.load(c, 3) : 0 };
}

/** The host thread's mmu_lock wait and hold so far (ns; µs resolution): zero without one. */
export function vm_host_thread_lock_times(st: VmState): { lockWaitNs: number; lockHoldNs: number } {
  const c = st.hostCtl;
  return {
    lockWaitNs: c ? Atomics.load(c, HOST.lockWaitUs) * 1e3 : 0,
    lockHoldNs: c ? Atomics.load(c, HOST.lockHoldUs) * 1e3 : 0,
  };
}

export async function vm_pause_host_thread(st: VmState): Promise<void> {
  vm_check_dead(st, "pauseHostThread");
  const c = st.hostCtl;
  if (!c) return;
  Atomics.store(c, HOST.run, 1);
  const deadline = Date.now() + VCPU_WAIT_MS;
  while (Atomics.load(c, HOST.state) === 1) {
    if (Date.now() > deadline) {
      vm_fail(st, new KvmError("ETIMEDOUT", `host thread: did not pause in ${VCPU_WAIT_MS} ms`));
      throw st.error!;
    }
    await waitAsyncAlive(c, HOST.state, 1, 50);
  }
}

export function vm_resume_host_thread(st: VmState): void {
  vm_check_dead(st, "resumeHostThread");
  const c = st.hostCtl;
  if (!c) return;
  Atomics.store(c, HOST.run, 0);
  Atomics.notify(c, HOST.run);
}

export async function vm_stop_host_thread(st: VmState): Promise<void> {
  const w = st.hostWorker;
  const c = st.hostCtl;
  if (!w || !c) return;
  Atomics.store(c, HOST.run, 2);
  Atomics.notify(c, HOST.run);
  let timer: NodeJS.Timeout | undefined;
  const grace = vm_grace_ms(st);
  const exited = await new Promise<boolean>((res) => {
    w.once("exit", () => res(true));
    timer = setTimeout(() => res(false), grace);
  });
  clearTimeout(timer);
  if (!exited) {
    vm_fail(st, new KvmError("ETIMEDOUT", `host thread: did not stop in ${grace} ms`));
    await w.terminate();
  }
  st.hostWorker = null;
}

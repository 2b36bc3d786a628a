/**
 * The host thread that changes guest backing under the running VM: page migration (copy to a
 * new frame) and range invalidations without a move (as NUMA balancing or page aging do), at
 * configured rates, through the MMU-notifier protocol.
 *
 * Control words (Int32Array over `ctl`): [0] run (0 run, 1 pause, 2 stop), [1] state (1 running,
 * 2 paused, 3 stopped, 4 dead), [2] migrations done, [3] invalidations done, [4] and [5] its
 * mmu_lock wait and hold (µs).
 */
import { parentPort, workerData } from "node:worker_threads";
import { Kvm } from "../kvm_host.js";
import { host_invalidate_range, host_migrate_page, MmuNotifier } from "../mem/host_memory.js";
import { kvm_mmu_notifier } from "../mmu/mmu_notifier.js";
import { kvm_load_design } from "../mmu/design.js";
import { HOLDER_HOST, kvm_watch_locks, SoftLockupError, VmDeadError } from "../kvm/vm_dead.js";
import { ParkMiller } from "./rng.js";
import { HOST, HostWorkerData } from "../mem/host_thread.js";

const d = workerData as HostWorkerData;
// A design registered at run time: import the module that registers it in this thread too.
await kvm_load_design(d.shared);
const kvm = new Kvm(d.shared);
kvm.trace.setName("host thread (contention)");
// It takes mmu_lock and flushes per page it migrates: sampled as per-access events.
kvm.trace.perAccessLocks = true;
kvm_watch_locks(kvm, HOLDER_HOST);
const c = new Int32Array(d.ctl);
const notifier: MmuNotifier = kvm_mmu_notifier(kvm);
const rng = new ParkMiller(d.seed);
const total = d.ranges.reduce((n, r) => n + r[1], 0);

/** Publishes this thread's mmu_lock wait and hold, so a benchmark can tell who waited. */
function publishLock(): void {
  const us = (ns: number): number => Math.min(2 ** 31 - 1, Math.round(ns / 1e3));
  Atomics.store(c, HOST.lockWaitUs, us(kvm.mmu_lock.stats.waitNs));
  Atomics.store(c, HOST.lockHoldUs, us(kvm.mmu_lock.stats.holdNs));
}

function pickPage(): number {
  let k = rng.next() % total;
  for (const [hva, pages] of d.ranges) {
    if (k < pages) return hva + k;
    k -= pages;
  }
  return d.ranges[0][0];
}

try {
  Atomics.store(c, HOST.state, 1);
  // The rates apply to running time only: a pause must not be made up for in a burst.
  let activeMs = 0;
  let since = performance.now();
  let migrations = 0;
  let invalidations = 0;
  for (;;) {
    const run = Atomics.load(c, HOST.run);
    if (run === 2) break;
    if (run === 1) {
      if (Atomics.load(c, HOST.state) === 1) activeMs += performance.now() - since;
      publishLock();
      Atomics.store(c, HOST.state, 2);
      Atomics.notify(c, HOST.state);
      Atomics.wait(c, HOST.run, 1, 100);
      since = performance.now();
      continue;
    }
    Atomics.store(c, HOST.state, 1);
    const elapsed = (activeMs + performance.now() - since) / 1000;
    let acted = false;
    if (d.migrateRate > 0 && migrations < elapsed * d.migrateRate) {
      if (host_migrate_page(kvm, pickPage(), notifier)) Atomics.add(c, HOST.migrations, 1);
      migrations++;
      acted = true;
    }
    if (d.invalidateRate > 0 && invalidations < elapsed * d.invalidateRate) {
      const p = pickPage();
      host_invalidate_range(kvm, p - (p % d.invalidatePages), d.invalidatePages, notifier);
      Atomics.add(c, HOST.invalidations, 1);
      invalidations++;
      acted = true;
    }
    if (acted) publishLock();
    else Atomics.wait(c, HOST.run, 0, 1);
  }
  Atomics.store(c, HOST.state, 3);
} catch (e) {
  Atomics.store(c, HOST.state, 4);
  const err = e as Error & { code?: string };
  // A wait given up because the VM died: its error is already known.
  if (!(e instanceof VmDeadError))
    parentPort?.postMessage({
      type: "error",
      message: err.message,
      code: err.code,
      stack: err.stack,
      lockup: e instanceof SoftLockupError ? e.report() : undefined,
    });
}
Atomics.notify(c, HOST.state);

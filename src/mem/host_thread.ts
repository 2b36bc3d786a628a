/**
 * Control block of the host thread (src/workload/host_worker.ts) that migrates and invalidates guest
 * backing. Words of `ctl`: [0] run (0 run, 1 pause, 2 stop), [1] state (1 running, 2 paused,
 * 3 stopped, 4 dead), [2] migrations done, [3] invalidations done, [4] and [5] its mmu_lock
 * wait and hold in microseconds.
 */
import type { KvmShared } from "../kvm_host.js";
import { defineBlock } from "../layout.js";

export interface HostWorkerData {
  shared: KvmShared;
  ctl: SharedArrayBuffer;
  /** [hvaPage, pages] ranges of guest backing to act on. */
  ranges: [number, number][];
  migrateRate: number;
  invalidateRate: number;
  /** Pages per invalidation (512: a 2 MiB range). */
  invalidatePages: number;
  seed: number;
}

/** The host thread's control words (Int32Array `HostWorkerData.ctl`). */
export const HOST = defineBlock("host (MMU-notifier) thread control words", "HostWorkerData.ctl", {
  run: { by: "the owner writes it (atomic), the host thread reads it", doc: "RUN / PAUSE / STOP" },
  state: { by: "the host thread writes it (atomic, notified)", doc: "what the host thread is doing" },
  migrations: { by: "the host thread (atomic add)", doc: "pages migrated (statistic)" },
  invalidations: { by: "the host thread (atomic add)", doc: "ranges invalidated (statistic)" },
  lockWaitUs: {
    by: "the host thread (atomic store after each operation and at a pause)",
    doc: "µs it waited for mmu_lock (statistic, saturates at 2^31 - 1)",
  },
  lockHoldUs: { by: "as lockWaitUs", doc: "µs it held mmu_lock (statistic)" },
});

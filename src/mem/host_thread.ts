/**
 * Control block of the host thread (src/workload/host_worker.ts) that migrates and invalidates guest
 * backing. Words of `ctl`: [0] run (0 run, 1 pause, 2 stop), [1] state (1 running, 2 paused,
 * 3 stopped, 4 dead), [2] migrations done, [3] invalidations done.
 */
import type { KvmShared } from "../kvm_host.js";

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

export const HOST_RUN = 0;
export const HOST_STATE = 1;
export const HOST_MIGRATIONS = 2;
export const HOST_INVALIDATIONS = 3;
export const HOST_CTL_WORDS = 4;

/**
 * The VM's public surface, re-exported from its folder (src/vm/): the class `Vm` (the ioctl
 * layer) and its option and result types. The internal entry point is src/vm/internal.ts.
 */
export { Vm } from "./vm/vm.js";
export { MAX_MEMORY, POOL_LIMITS } from "./vm/create.js";
export type { MmuModeName, VmOptions, WpName } from "./vm/create.js";
export type { MemoryRegion } from "./mem/set_memslot.js";
export type { DirtyGfn } from "./vm/dirty_ring.js";
export type { HostThreadOptions } from "./vm/host_thread.js";
export type { UserfaultStats } from "./vm/userfault.js";
export { VCPU_ACK_MS, VCPU_WAIT_MAX_MS, VCPU_WAIT_MS } from "./vm/state.js";
export type { StopResult } from "./vm/state.js";
export { workerExecArgv } from "./sync/worker_flags.js";

/**
 * How the source collects dirty pages (QEMU's migration_bitmap_sync through the KVM memory
 * listener): the classic KVM_GET_DIRTY_LOG, GET + CLEAR with manual protect, or the dirty ring.
 */
import { KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, PAGE_SIZE } from "../kvm_host.js";
import type { Vm } from "../vm.js";
import { dirtyGfnArrays, harvestDirtyRingsInto } from "../dirty_bitmap.js";
import type { GuestVm } from "./guest_vm.js";
import { MigrationError } from "./stream.js";

export const LOG_MODES = ["dirty-log", "clear-log", "dirty-ring"] as const;
export type LogMode = (typeof LOG_MODES)[number];

export interface DirtyLogStrategy {
  readonly name: LogMode;
  /** Sets the VM up for this interface: before its logged slot and its vCPUs exist. */
  prepare(vm: Vm): void;
  /** Harvests slot 0's dirty pages into `out` (bit n = page n) and re-arms logging for them. */
  sync(g: GuestVm, out: Uint32Array): void;
}

/** Ring entries per vCPU in dirty-ring mode: a vCPU that fills it waits for the next sync. */
const RING_ENTRIES = 4096;

/** Each strategy is made per migration: the ring's holds its own harvest arrays. */
const STRATEGIES: Record<LogMode, () => DirtyLogStrategy> = {
  // KVM_GET_DIRTY_LOG: clears and re-protects in one call.
  "dirty-log": () => ({
    name: "dirty-log",
    prepare: () => {},
    sync: (g, out) => void g.vm.getDirtyLog(0, out),
  }),
  // As QEMU with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET copies, CLEAR re-protects what was copied.
  "clear-log": () => ({
    name: "clear-log",
    prepare: (vm) =>
      vm.enableManualDirtyLogProtect(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET),
    sync: (g, out) => {
      g.vm.getDirtyLog(0, out);
      g.vm.clearDirtyLog(0, 0, g.layout.memoryBytes / PAGE_SIZE, out);
    },
  }),
  // As QEMU's ring reaper: harvest every vCPU's ring, then reset (which re-protects) before
  // reading. The entries go from the ring to typed arrays to `out`: no object per entry.
  "dirty-ring": () => {
    const scratch = dirtyGfnArrays(RING_ENTRIES);
    return {
      name: "dirty-ring",
      prepare: (vm) => vm.enableDirtyRing(RING_ENTRIES),
      sync: (g, out) => {
        out.fill(0);
        harvestDirtyRingsInto(g.vm, 0, out, scratch);
        g.vm.resetDirtyRings();
      },
    };
  },
};

/** A new strategy for `mode` (EINVAL for an unknown mode). */
export function logStrategy(mode: string): DirtyLogStrategy {
  if ((LOG_MODES as readonly string[]).includes(mode)) return STRATEGIES[mode as LogMode]();
  throw new MigrationError("EINVAL", `log-mode: "${mode}" is not one of ${LOG_MODES.join(", ")}`);
}

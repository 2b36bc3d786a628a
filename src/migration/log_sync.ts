/**
 * How the source collects dirty pages (QEMU's migration_bitmap_sync through the KVM memory
 * listener): the classic KVM_GET_DIRTY_LOG, GET + CLEAR with manual protect, or the dirty ring.
 */
import { KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, PAGE_SIZE } from "../kvm_host.js";
import type { Vm } from "../vm.js";
import { dirtyGfnArrays, DirtyGfnArrays, harvestDirtyRingsInto } from "../dirty_bitmap.js";
import type { GuestVm } from "./guest_vm.js";
import { MigrationError } from "./stream.js";
import { einval } from "../errors.js";

export const LOG_MODES = ["dirty-log", "clear-log", "dirty-ring"] as const;
export type LogMode = (typeof LOG_MODES)[number];

/**
 * The one check that an option needs the dirty-ring log (EINVAL naming the option), made where
 * options enter the library; the CLI renames the option and logMode to its flags (flagNames).
 */
export function needsDirtyRing(option: string, logMode: string | undefined, what = ""): void {
  if (logMode !== "dirty-ring")
    throw einval(option, `${what}needs logMode "dirty-ring" (got ${String(logMode ?? "dirty-log")})`);
}

export interface DirtyLogStrategy {
  readonly name: LogMode;
  /** Sets the VM up for this interface: before its logged slot and its vCPUs exist. */
  prepare(vm: Vm): void;
  /** Harvests slot 0's dirty pages into `out` (bit n = page n) and re-arms logging for them. */
  sync(g: GuestVm, out: Uint32Array): void;
}

/** Ring entries per vCPU in dirty-ring mode (default): a vCPU that fills it waits for the next reap. */
export const RING_ENTRIES = 4096;

const STRATEGIES: Record<Exclude<LogMode, "dirty-ring">, DirtyLogStrategy> = {
  // KVM_GET_DIRTY_LOG: clears and re-protects in one call.
  "dirty-log": { name: "dirty-log", prepare: () => {}, sync: (g, out) => void g.vm.getDirtyLog(0, out) },
  // As QEMU with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET copies, CLEAR re-protects what was copied.
  "clear-log": {
    name: "clear-log",
    prepare: (vm) =>
      vm.enableManualDirtyLogProtect(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET),
    sync: (g, out) => {
      g.vm.getDirtyLog(0, out);
      g.vm.clearDirtyLog(0, 0, g.layout.memoryBytes / PAGE_SIZE, out);
    },
  },
};

/**
 * QEMU's kvm_dirty_ring_reap: harvests every vCPU's ring, setting in `out` the bit of each page
 * of `slot` (bit n = page n), adds each vCPU's entries to dirtyPages[id] (QEMU's
 * cpu->dirty_pages, what dirty-rate and dirty-limit measure), then resets the rings (which
 * re-protects the pages and lets a vCPU blocked in a ring-full exit go on). Returns the entries.
 * The migration's one use of the ring's harvest: dirty-rate and dirty-limit call it too.
 */
export function dirtyRingReap(
  vm: Vm,
  slot: number,
  out: Uint32Array,
  dirtyPages?: Float64Array,
  scratch?: DirtyGfnArrays,
): number {
  // Through typed arrays (harvestDirtyRingsInto): no object per entry.
  const n = harvestDirtyRingsInto(vm, slot, out, scratch, dirtyPages);
  vm.resetDirtyRings();
  return n;
}

/**
 * The dirty-ring interface, one per VM: its reaps (each sync's, and dirty-limit's at a ring-full
 * exit) gather into `reaped` (QEMU's KVM slot bitmap) until the next sync takes them.
 */
export class DirtyRingLog implements DirtyLogStrategy {
  readonly name = "dirty-ring";
  /** Entries reaped per vCPU so far (cpu->dirty_pages). Owner thread only, as `reaped`. */
  readonly dirtyPages = new Float64Array(64);
  private reaped = new Uint32Array(0);
  /** The harvest's arrays, sized as one ring: one call per vCPU. */
  private readonly scratch: DirtyGfnArrays;

  /** `ringEntries`: per vCPU (QEMU's dirty-ring-size). */
  constructor(readonly ringEntries = RING_ENTRIES) {
    this.scratch = dirtyGfnArrays(ringEntries);
  }

  prepare(vm: Vm): void {
    vm.enableDirtyRing(this.ringEntries);
  }

  /** Harvests and resets every ring now (slot 0); the pages wait in `reaped` for the next sync. */
  reap(g: GuestVm): number {
    const words = Math.ceil(g.layout.memoryBytes / PAGE_SIZE / 32);
    if (this.reaped.length !== words) this.reaped = new Uint32Array(words);
    return dirtyRingReap(g.vm, 0, this.reaped, this.dirtyPages, this.scratch);
  }

  // As QEMU's ring reaper: harvest every vCPU's ring, then reset (which re-protects) before reading.
  sync(g: GuestVm, out: Uint32Array): void {
    this.reap(g);
    out.set(this.reaped.subarray(0, out.length));
    this.reaped.fill(0);
  }
}

/** The interface for `mode`; the dirty ring's keeps state, so each call makes a new one. */
export function logStrategy(mode: string, o: { ringEntries?: number } = {}): DirtyLogStrategy {
  if (mode === "dirty-ring") return new DirtyRingLog(o.ringEntries);
  if ((LOG_MODES as readonly string[]).includes(mode))
    return STRATEGIES[mode as Exclude<LogMode, "dirty-ring">];
  throw new MigrationError("EINVAL", `log-mode: "${mode}" is not one of ${LOG_MODES.join(", ")}`);
}

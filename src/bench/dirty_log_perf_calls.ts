/**
 * The calls one harvest makes, named as KVM's dirty_log_perf_test names them, each with its own
 * decomposition, and "ns per dirty page" defined once: the terminal, the JSON, the CSV,
 * `compare` and the report all read their figures from here.
 *
 * - dirty-log (no manual protect): "get dirty log" (KVM_GET_DIRTY_LOG), which write-protects.
 * - clear-log (manual protect): "get dirty log" only copies the bitmap; "clear dirty log"
 *   (KVM_CLEAR_DIRTY_LOG) write-protects. Total "GET + CLEAR".
 * - dirty-ring: "ring harvest" collects the entries; "ring reset" (KVM_RESET_DIRTY_RINGS)
 *   write-protects. Total "harvest + reset".
 *
 * The decomposition (mmu_lock wait, harvest + write-protect, remote TLB flush) belongs to the call
 * that write-protects; the other call takes no mmu_lock and has one part.
 */
import { bootstrapMedianCi, median } from "./stats.js";

export type LogMode = "dirty-log" | "clear-log" | "dirty-ring";
export type CallId = "get" | "clear" | "ringHarvest" | "ringReset" | "total";

/** What the figures read of one iteration (every schema version has these or leaves them out). */
export interface CallIteration {
  warmup: boolean;
  getDirtyLogNs: number;
  clearDirtyLogNs?: number;
  ringHarvestNs?: number;
  ringResetNs?: number;
  lockWaitNs: number;
  protectNs: number;
  flushNs: number;
  /** D-bit logging: the PML flush kick of the protecting call (absent in older results). */
  pmlFlushNs?: number;
  dirtyPages: number;
}

export interface CallPart {
  /** "mmu_lock wait", "PML flush", "harvest + write-protect", "remote TLB flush", or the one part of a call. */
  name: string;
  ns: (i: CallIteration) => number;
}

export interface HarvestCall {
  id: CallId;
  /** KVM's name: "get dirty log", "clear dirty log", "ring harvest", "ring reset", "GET + CLEAR", "harvest + reset". */
  name: string;
  ns: (i: CallIteration) => number;
  /** The call's time split; parts sum to the call's time. Empty for a total. */
  parts: CallPart[];
  /** This call write-protects: the kernel's reference figure (KERNEL_NS_PER_PAGE) is for it. */
  protects: boolean;
}

/**
 * The kernel's ns per dirty page of the call that write-protects (GET without manual protect,
 * CLEAR with it), 4 KiB pages: with the vCPUs idle (KVM's test) and with 2 vCPUs writing.
 */
export const KERNEL_NS_PER_PAGE = { parked: 24, running: 50, runningVcpus: 2 } as const;

const PROTECT_PARTS: CallPart[] = [
  { name: "mmu_lock wait", ns: (i) => i.lockWaitNs },
  // D-bit logging: the kick that makes each vCPU flush its PML buffer first (0 without PML).
  { name: "PML flush", ns: (i) => i.pmlFlushNs ?? 0 },
  { name: "harvest + write-protect", ns: (i) => i.protectNs },
  { name: "remote TLB flush", ns: (i) => i.flushNs },
];

/** A result's log mode: recorded since version 2; older files tell it by the fields they have. */
export function logModeOfIterations(iters: readonly CallIteration[], recorded?: string): LogMode {
  if (recorded === "dirty-log" || recorded === "clear-log" || recorded === "dirty-ring") return recorded;
  if (iters.some((i) => i.ringHarvestNs !== undefined)) return "dirty-ring";
  if (iters.some((i) => i.clearDirtyLogNs !== undefined)) return "clear-log";
  return "dirty-log";
}

/** The calls of one harvest in `mode`, in call order, then the total when there are two. */
export function harvestCalls(mode: LogMode): HarvestCall[] {
  if (mode === "dirty-log")
    return [
      { id: "get", name: "get dirty log", ns: (i) => i.getDirtyLogNs, parts: PROTECT_PARTS, protects: true },
    ];
  if (mode === "clear-log")
    return [
      {
        id: "get",
        name: "get dirty log",
        ns: (i) => i.getDirtyLogNs,
        parts: [{ name: "copy the bitmap", ns: (i) => i.getDirtyLogNs }],
        protects: false,
      },
      {
        id: "clear",
        name: "clear dirty log",
        ns: (i) => i.clearDirtyLogNs ?? 0,
        parts: PROTECT_PARTS,
        protects: true,
      },
      {
        id: "total",
        name: "GET + CLEAR",
        ns: (i) => i.getDirtyLogNs + (i.clearDirtyLogNs ?? 0),
        parts: [],
        protects: false,
      },
    ];
  return [
    {
      id: "ringHarvest",
      name: "ring harvest",
      ns: (i) => i.ringHarvestNs ?? 0,
      parts: [{ name: "collect the entries", ns: (i) => i.ringHarvestNs ?? 0 }],
      protects: false,
    },
    {
      id: "ringReset",
      name: "ring reset",
      ns: (i) => i.ringResetNs ?? 0,
      parts: PROTECT_PARTS,
      protects: true,
    },
    // getDirtyLogNs is harvest + reset with a ring (dirty_log_perf_iterate.ts).
    { id: "total", name: "harvest + reset", ns: (i) => i.getDirtyLogNs, parts: [], protects: false },
  ];
}

/** The whole harvest: the total when the mode makes two calls, else its one call. */
export function totalCall(mode: LogMode): HarvestCall {
  const calls = harvestCalls(mode);
  return calls[calls.length - 1];
}

/** The call that write-protects (the kernel's reference figure is for it). */
export function protectingCall(mode: LogMode): HarvestCall {
  return harvestCalls(mode).find((c) => c.protects)!;
}

/** ns per dirty page of `call` in one iteration; null when it dirtied no page. */
export function nsPerDirtyPageOf(call: HarvestCall, i: CallIteration): number | null {
  return i.dirtyPages > 0 ? call.ns(i) / i.dirtyPages : null;
}

/** The per-iteration ns per dirty page of `call` over the measured iterations. */
export function nsPerDirtyPageSamples(call: HarvestCall, iters: readonly CallIteration[]): number[] {
  return iters
    .filter((i) => !i.warmup)
    .map((i) => nsPerDirtyPageOf(call, i))
    .filter((x): x is number => x !== null);
}

/**
 * THE definition: ns per dirty page of `call` is the median over the measured iterations of
 * (the call's time / that iteration's dirty pages), with a 95% bootstrap CI of that median.
 */
export function nsPerDirtyPage(
  call: HarvestCall,
  iters: readonly CallIteration[],
): { median: number; ci95: [number, number]; n: number } {
  const s = nsPerDirtyPageSamples(call, iters);
  if (s.length === 0) return { median: 0, ci95: [0, 0], n: 0 };
  return { median: median(s), ci95: bootstrapMedianCi(s), n: s.length };
}

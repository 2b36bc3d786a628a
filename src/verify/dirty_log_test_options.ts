/** dirty-log-test's options, results and their checks (the test itself: dirty_log_test.ts). */
import type { MmuModeName } from "../vm.js";
import { BugName, PAGE_SIZE } from "../kvm_host.js";
import { einval } from "../errors.js";
import { DesignName, designNames, isDesign } from "../mmu/design.js";
import type { Vm } from "../vm.js";

export type OracleName = "kvm" | "qemu";
/** The selftest's -M: how the kvm oracle collects dirty pages. */
export type DirtyLogMode = "dirty-log" | "clear-log" | "dirty-ring";
export const MODES: readonly DirtyLogMode[] = ["dirty-log", "clear-log", "dirty-ring"];
export const ORACLES: readonly OracleName[] = ["kvm", "qemu"];

/** Which harvest a bitmap came from (for harvestFilter). */
export type HarvestPhase = "mid-run" | "final" | "live-round";

export interface DirtyLogTestOptions {
  /** Iterations per (strategy, oracle) run. Ignored when `seconds` is set. */
  iterations: number;
  /** Wall-clock budget for the whole test, split evenly over the runs; overrides iterations. */
  seconds?: number;
  /** Interval per iteration (kvm) or per live round (qemu), ms. */
  intervalMs: number;
  vcpus: number;
  /** Guest memory per vCPU, bytes (a multiple of 4 KiB). */
  bytesPerVcpu: number;
  /** Designs to check, by registered name (src/mmu/design.ts). */
  wp: DesignName[];
  oracles: OracleName[];
  thp: boolean;
  /** Designs with D-bit logging (tdp-mmu): PML (default true) or write protection. */
  pml?: boolean;
  /** tdp-mmu: eager page splitting when logging starts (default true). */
  eagerPageSplit?: boolean;
  /** MMU-notifier churn: page migrations and 2 MiB invalidations per second; 0 and 0 = off. */
  migrateRate: number;
  invalidateRate: number;
  /**
   * NUMA balancing run by the vCPUs (Vm.setNumaBalancing): a scan every this many ms (0 or
   * absent: off) of `numaScanBytes` (default 256 MiB: the whole slot here).
   */
  numaScanPeriodMs?: number;
  numaScanBytes?: number;
  seed: number;
  /** Pages added to the slot beyond the vCPU regions (default 3). */
  extraPages?: number;
  /** Live harvest-and-copy rounds per check, qemu oracle (default 3). */
  qemuRounds?: number;
  /** Guest-physical address of the test slot (default: the top of a 40-bit space, 2 MiB aligned). */
  gpa?: number;
  /** Bugs of the catalog to switch on in the engine (src/kvm_host.ts BUG). */
  bugs?: BugName[];
  /**
   * "tdp" (default) or "shadow": EPT off; each vCPU builds page tables (in a second slot) that
   * map its region at a guest virtual address, and stores through them.
   */
  mode?: MmuModeName;
  /** Collection modes of the kvm oracle (default ["dirty-log"]); the qemu oracle uses dirty-log. */
  modes?: DirtyLogMode[];
  /** dirty-ring: entries per vCPU ring (default: 65536, or fewer for small slots; >= 256). */
  ringEntries?: number;
  /** Violations whose details are kept, per strategy and oracle (default 5). */
  maxViolationDetails?: number;
  /**
   * Test-only: called on every bitmap getDirtyLog returns, before the oracle uses it. A filter
   * that clears bits plays a broken harvester (negative controls).
   */
  harvestFilter?: (bitmap: Uint32Array, phase: HarvestPhase) => void;
  progress?: (msg: string) => void;
  /** Checked between iterations: once aborted, the result covers what was checked. */
  signal?: AbortSignal;
  /** Called with each VM made, before its vCPUs exist (--trace: vm.enableTrace), and its name. */
  onVm?: (vm: Vm, name: string) => void;
}

export interface Violation {
  wp: DesignName;
  oracle: OracleName;
  mode?: DirtyLogMode;
  iteration: number;
  /** Slot-relative page. */
  page: number;
  gpa: string;
  what: string;
}

export interface OracleResult {
  iterations: number;
  pagesChecked: number;
  violations: number;
  /** kvm: pages reported dirty, summed over iterations; qemu: pages copied after the bulk copy. */
  dirtyPages: number;
  /** kvm: pages reported clean; qemu: pages whose copy matched the source at a check. */
  cleanPages: number;
  guestWrites: number;
  harvests: number;
  /** dirty-ring: ring-full exits of the vCPUs. */
  ringFullExits?: number;
  host: { migrations: number; invalidations: number };
  /** NUMA balancing scans the vCPUs ran (DirtyLogTestOptions.numaScanPeriodMs). */
  numa?: { scans: number; pagesScanned: number };
  durationMs: number;
  /** Time spent reading guest memory and checking it. */
  verifyMs: number;
  pagesCheckedPerSec: number;
}

export interface ModeResult {
  mode: DirtyLogMode;
  wp: DesignName;
  iterations: number;
  pagesChecked: number;
  violations: number;
  dirtyPages: number;
  ringFullExits: number;
}

export interface DirtyLogTestResult {
  iterations: number;
  pagesChecked: number;
  violations: number;
  pagesCheckedPerSec: number;
  durationMs: number;
  slotPages: number;
  slotGpa: string;
  options: Omit<DirtyLogTestOptions, "harvestFilter" | "progress" | "onVm">;
  /** Per strategy and oracle; the kvm entry is its dirty-log run (or its first mode's). */
  results: Partial<Record<DesignName, Partial<Record<OracleName, OracleResult>>>>;
  /** Every kvm-oracle run, one per mode and strategy. */
  modes: ModeResult[];
  firstViolations: Violation[];
  machine: { cpus: number; node: string };
  /** The run was stopped (options.signal) before it ended: never a PASS. */
  interrupted: boolean;
  /** The runs ("<design> <oracle>[ -M <mode>]") an interruption left out. */
  notRun: string[];
}

export function validateDirtyLogTestOptions(o: DirtyLogTestOptions): void {
  const int = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x);
  if (!int(o.iterations) || o.iterations < 1)
    throw einval("iterations", `must be >= 1, got ${String(o.iterations)}`);
  if (
    o.seconds !== undefined &&
    !(typeof o.seconds === "number" && o.seconds > 0 && Number.isFinite(o.seconds))
  )
    throw einval("seconds", `must be > 0, got ${String(o.seconds)}`);
  if (!int(o.intervalMs) || o.intervalMs < 1 || o.intervalMs > 60_000)
    throw einval("intervalMs", `must be 1..60000, got ${String(o.intervalMs)}`);
  if (!int(o.vcpus) || o.vcpus < 1 || o.vcpus > 64)
    throw einval("vcpus", `must be 1..64, got ${String(o.vcpus)}`);
  if (!int(o.bytesPerVcpu) || o.bytesPerVcpu < PAGE_SIZE || o.bytesPerVcpu % PAGE_SIZE !== 0)
    throw einval(
      "bytesPerVcpu",
      `must be a positive multiple of ${PAGE_SIZE}, got ${String(o.bytesPerVcpu)}`,
    );
  if (o.vcpus * o.bytesPerVcpu > 16 * 2 ** 30)
    throw einval("bytesPerVcpu", "vcpus x bytesPerVcpu is over 16 GiB");
  if (!Array.isArray(o.wp) || o.wp.length === 0 || o.wp.some((w) => !isDesign(w)))
    throw einval("wp", `must be a non-empty list of ${designNames().join(", ")}`);
  if (!Array.isArray(o.oracles) || o.oracles.length === 0 || o.oracles.some((w) => !ORACLES.includes(w)))
    throw einval("oracles", `must be a non-empty list of ${ORACLES.join(", ")}`);
  for (const k of ["migrateRate", "invalidateRate"] as const)
    if (typeof o[k] !== "number" || !(o[k] >= 0) || !Number.isFinite(o[k]))
      throw einval(k, `must be a rate >= 0, got ${String(o[k])}`);
  if (!int(o.seed) || o.seed < 0 || o.seed > 2 ** 31 - 2) throw einval("seed", `must be 0..${2 ** 31 - 2}`);
  const extra = o.extraPages ?? 3;
  if (!int(extra) || extra < 0 || extra > 511) throw einval("extraPages", "must be 0..511");
  const rounds = o.qemuRounds ?? 3;
  if (!int(rounds) || rounds < 0 || rounds > 1000) throw einval("qemuRounds", "must be 0..1000");
  if (o.maxViolationDetails !== undefined && (!int(o.maxViolationDetails) || o.maxViolationDetails < 0))
    throw einval("maxViolationDetails", "must be >= 0");
  if (
    o.modes !== undefined &&
    (!Array.isArray(o.modes) || o.modes.length === 0 || o.modes.some((m) => !MODES.includes(m)))
  )
    throw einval("modes", `must be a non-empty list of ${MODES.join(", ")}`);
  if (
    o.ringEntries !== undefined &&
    (!int(o.ringEntries) ||
      o.ringEntries < 256 ||
      o.ringEntries > 65536 ||
      (o.ringEntries & (o.ringEntries - 1)) !== 0)
  )
    throw einval("ringEntries", `must be a power of two in 256..65536, got ${String(o.ringEntries)}`);
  if (o.mode !== undefined && o.mode !== "tdp" && o.mode !== "shadow")
    throw einval("mode", `must be "tdp" or "shadow", got ${String(o.mode)}`);
  if (o.gpa !== undefined) {
    const slotBytes = o.vcpus * o.bytesPerVcpu + extra * PAGE_SIZE;
    if (!int(o.gpa) || o.gpa < 0 || o.gpa % PAGE_SIZE !== 0 || o.gpa + slotBytes > 2 ** 40)
      throw einval("gpa", "must be page-aligned, with the slot below 2^40");
  }
}

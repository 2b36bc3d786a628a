/**
 * dirty-log-perf's options: their defaults, the presets (`--preset`), and their checks. A library
 * caller and the CLI both go through resolvePerfOptions, so `dirtyLogPerf({ preset: "seed" })`
 * runs what `kvmmu dirty-log-perf --preset seed` runs.
 */
import os from "node:os";
import { MAX_MEMORY, MmuModeName, type Vm } from "../vm.js";
import { PAGE_SIZE } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { tablesFor } from "../workload/guest_paging.js";
import type { LockMode } from "../sync/mutex.js";
import { numa_balancing_settings } from "../mem/numa_balancing.js";
import { DEFAULT_BASELINE, designBackend, DesignName, designNames } from "../mmu/design.js";
import { isRunName } from "./dirty_log_perf_variant.js";

export interface Contention {
  migrateRate: number;
  invalidateRate: number;
  /** Pages per invalidation (default 512: a 2 MiB range). */
  invalidatePages?: number;
}

export const CONTENTION: Record<string, Contention> = {
  none: { migrateRate: 0, invalidateRate: 0 },
  default: { migrateRate: 200, invalidateRate: 100 },
  heavy: { migrateRate: 1000, invalidateRate: 400 },
};

/**
 * Option sets for `--preset`; an option given on the command line wins. "seed": the conditions
 * under which the seed's harvester had to wait for mmu_lock (docs/design.md §14).
 */
export const PRESETS: Record<string, Partial<PerfOptions>> = {
  seed: {
    bytesPerVcpu: 256 << 20,
    // Timed windows, a multiple of the scan period so that every window holds as many scans;
    // 100 pairs, order swapped every pair, take about 45 s.
    iterations: 100,
    warmup: 2,
    windowMs: 200,
    // A migration near convergence: the dirty set is small and QEMU syncs the log again and
    // again; a get-dirty-log every 2 ms.
    harvestIntervalMs: 2,
    // NUMA balancing at the defaults of the seed's kernels (3.8-3.12): 256 MiB unmapped every
    // 100 ms by the vCPU thread itself, each chunk one mmu_lock hold; the guest refaults it.
    numaScanPeriodMs: 100,
    numaScanBytes: 256 << 20,
    contention: { migrateRate: 0, invalidateRate: 0 },
    // 4 KiB mappings, as under dirty logging: one spte per page to zap and to refault.
    thp: false,
    lock: "spin",
    // The seed's interface: GET clears and protects (no manual protect, 2013).
    manualProtect: false,
    // A CPU for each thread, as KVM's test pins with -c: unpinned, the guest of either design
    // ran at about half speed for seconds at a time (docs/design.md §14).
    pin: "auto",
  },
};

/** True when the configuration runs the host (MMU-notifier) thread. */
export function hasHostThread(c: Contention): boolean {
  return c.migrateRate > 0 || c.invalidateRate > 0;
}

/**
 * The threads a run needs against the machine's cores: the vCPUs, the harvester (the main
 * thread, which runs the ioctls) and, with contention on, the host thread.
 */
export interface ThreadFit {
  cpus: number;
  vcpus: number;
  harvester: 1;
  hostThread: 0 | 1;
  /** "auto": the vCPU count was chosen to fit the cores; "user": given with -v. */
  vcpusFrom: "auto" | "user";
  oversubscribed: boolean;
}

/** vCPUs that fit next to the harvester and the host thread (at least one). */
export function fitVcpus(cpus: number, c: Contention): number {
  return Math.max(1, cpus - 1 - (hasHostThread(c) ? 1 : 0));
}

export function threadFit(cpus: number, vcpus: number, c: Contention, from: "auto" | "user"): ThreadFit {
  const hostThread = hasHostThread(c) ? 1 : 0;
  return {
    cpus,
    vcpus,
    harvester: 1,
    hostThread,
    vcpusFrom: from,
    oversubscribed: vcpus + 1 + hostThread > cpus,
  };
}

export interface PerfOptions {
  vcpus: number;
  bytesPerVcpu: number;
  iterations: number;
  writePercent: number;
  random: boolean;
  /** The designs run, alternated iteration by iteration (registered names, src/mmu/design.ts). */
  wp: DesignName[];
  /**
   * The design the others are compared with (`ratios`): DEFAULT_BASELINE when it runs, else the
   * first of `wp`. Must be one of `wp`.
   */
  baseline?: DesignName;
  thp: boolean;
  contention: Contention;
  park: boolean;
  /**
   * Every iteration starts with logging off: logging is disabled (huge pages come back on the
   * next faults), the vCPUs run one full pass, pause, and logging is enabled again, timed
   * (IterationResult.enableLoggingNs); the iteration's dirty memory is then the first pass with
   * logging, so enable time and first pass get a sample per iteration (eager against lazy page
   * splitting). Models only, not with timed iterations.
   */
  relog?: boolean;
  seed: number;
  /** Iterations run first and left out of every statistic (default 1). */
  warmup?: number;
  /** How mmu_lock waiters wait: "sleep" (default) or "spin" (3.11's ticket spinlock). */
  lock?: LockMode;
  /** The preset the options came from (recorded only). */
  preset?: string;
  /** How the vCPU count relates to the cores (recorded only; the CLI fills it). */
  threads?: ThreadFit;
  /**
   * "tdp" (default): as KVM's test, no guest paging. "shadow": EPT off; each vCPU first builds
   * its page tables (in a second, small memslot) mapping its region at a guest virtual address,
   * with 2 MiB guest pages if `guestHuge`, then runs memstress on virtual addresses.
   */
  mode?: MmuModeName;
  guestHuge?: boolean;
  progress?: (msg: string) => void;
  /** Checked between iterations: once aborted, the results cover the iterations done. */
  signal?: AbortSignal;
  /** Called with each VM made, before its vCPUs exist (--trace: vm.enableTrace), and its name. */
  onVm?: (vm: Vm, name: string) => void;
  /**
   * KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with INITIALLY_SET, as KVM's test does by default (true
   * unless a ring is used): GET copies the bitmap, then CLEAR re-protects what it reported.
   */
  manualProtect?: boolean;
  /** Pages per KVM_CLEAR_DIRTY_LOG call (a multiple of 64); 0 (default): one call for the slot. */
  clearChunkPages?: number;
  /** Entries of a per-vCPU dirty ring instead of the bitmap (0, default: no ring). */
  ring?: number;
  /**
   * Timed iterations: each iteration is a fixed wall-clock window of this many ms (vCPUs and host
   * thread running), in which the harvester calls get-dirty-log every `harvestIntervalMs`; guest
   * throughput is the writes of the window over its length. 0 or absent: the classic iteration
   * (wait for two passes, then one get-dirty-log), whose length grows with any stall.
   */
  windowMs?: number;
  /** Timed iterations: ms between two get-dirty-log calls (default: windowMs, one call at the end). */
  harvestIntervalMs?: number;
  /**
   * NUMA balancing (Vm.setNumaBalancing): every this many ms a vCPU unmaps the next
   * `numaScanBytes` of guest memory (0 or absent: off).
   */
  numaScanPeriodMs?: number;
  /** Bytes per NUMA balancing scan (default 256 MiB). */
  numaScanBytes?: number;
  /**
   * Pin threads to CPUs, as KVM's dirty_log_perf_test -c: the vCPU threads' CPUs in id order
   * (both VMs' vCPU i share one: they never run at once), then optionally the harvester's (the
   * main thread). "auto": the harvester on the first CPU this process may use, the vCPUs on the
   * others. Absent: unpinned.
   * A failure to pin is an error for a list and a warning (the run goes on unpinned) for "auto".
   */
  pin?: number[] | "auto";
}

export type LogModeName = "dirty-log" | "clear-log" | "dirty-ring";

export function logModeOf(o: PerfOptions): LogModeName {
  if ((o.ring ?? 0) > 0) return "dirty-ring";
  return (o.manualProtect ?? true) ? "clear-log" : "dirty-log";
}

/**
 * The host memory a run needs: the guest, in shadow mode the guest's page-table pool (its own
 * memslot), and 2 MiB of spare frames only when pages migrate (a migration takes a free frame
 * before it frees the old one). Nothing for alignment: frame 0 is handed out, so the guest's
 * THP mapping starts 2 MiB aligned and the pool's size is a multiple of 512 frames.
 */
export function hostMemoryFor(o: PerfOptions): { memory: number; ptPages: number; pool: number } {
  const shadow = o.mode === "shadow";
  const pages = o.bytesPerVcpu / PAGE_SIZE;
  // Shadow: a pool of table pages per vCPU for its region and the kernel area's identity map.
  const pool = shadow ? tablesFor(pages, o.guestHuge) + tablesFor(o.vcpus * 4096) + 8 : 0;
  const ptPages = Math.ceil((o.vcpus * pool) / 512) * 512;
  const spare = o.contention.migrateRate > 0 ? 2 << 20 : 0;
  return { memory: o.vcpus * o.bytesPerVcpu + ptPages * PAGE_SIZE + spare, ptPages, pool };
}

export function validatePerfOptions(o: PerfOptions): void {
  if (!Number.isInteger(o.vcpus) || o.vcpus < 1 || o.vcpus > 64) throw einval("vcpus", "must be 1..64");
  const chunk = o.clearChunkPages ?? 0;
  if (!Number.isInteger(chunk) || chunk < 0 || chunk % 64 !== 0)
    throw einval("clearChunkPages", `must be 0 or a positive multiple of 64, got ${String(chunk)}`);
  const ring = o.ring ?? 0;
  if (ring !== 0 && (!Number.isInteger(ring) || ring < 256 || ring > 65536 || (ring & (ring - 1)) !== 0))
    throw einval("ring", `must be 0 or a power of two in 256..65536, got ${String(ring)}`);
  if (ring !== 0 && o.manualProtect === true) throw einval("manualProtect", "does not go with a dirty ring");
  if (!Number.isInteger(o.bytesPerVcpu) || o.bytesPerVcpu < 2 << 20 || o.bytesPerVcpu % (2 << 20) !== 0)
    throw einval("bytesPerVcpu", "must be a positive multiple of 2 MiB");
  if (!Number.isInteger(o.iterations) || o.iterations < 1) throw einval("iterations", "must be >= 1");
  if (!Number.isInteger(o.writePercent) || o.writePercent < 0 || o.writePercent > 100)
    throw einval("writePercent", "must be 0..100");
  if (!Array.isArray(o.wp) || o.wp.length === 0) throw einval("wp", "no design");
  for (const d of o.wp)
    if (typeof d !== "string" || !isRunName(d))
      throw einval(
        "wp",
        `"${String(d)}" is not one of ${designNames().join(", ")} (or tdp-mmu:no-pml, tdp-mmu:no-eager-split)`,
      );
  if (new Set(o.wp).size !== o.wp.length) throw einval("wp", "a design is named twice");
  if (o.baseline !== undefined && !o.wp.includes(o.baseline))
    throw einval("baseline", `"${o.baseline}" is not one of the designs run (${o.wp.join(", ")})`);
  if (o.mode !== undefined && o.mode !== "tdp" && o.mode !== "shadow")
    throw einval("mode", "must be tdp or shadow");
  if (o.warmup !== undefined && (!Number.isInteger(o.warmup) || o.warmup < 0 || o.warmup > 1000))
    throw einval("warmup", "must be 0..1000");
  if (o.lock !== undefined && o.lock !== "sleep" && o.lock !== "spin")
    throw einval("lock", "must be sleep or spin");
  const win = o.windowMs ?? 0;
  if (!Number.isFinite(win) || win < 0 || win > 600_000)
    throw einval("windowMs", `must be 0..600000 ms, got ${String(win)}`);
  if (o.harvestIntervalMs !== undefined) {
    const h = o.harvestIntervalMs;
    if (win === 0) throw einval("harvestIntervalMs", "needs a timed iteration (windowMs > 0)");
    if (!Number.isFinite(h) || h < 1 || h > win)
      throw einval("harvestIntervalMs", `must be 1..windowMs (${win}) ms, got ${String(h)}`);
  }
  if (win > 0 && ring !== 0) throw einval("windowMs", "timed iterations do not go with a dirty ring");
  if (win > 0 && o.park) throw einval("windowMs", "timed iterations keep the vCPUs writing (no --park)");
  if (o.relog === true && win > 0)
    throw einval("relog", "re-enabling logging each iteration needs untimed iterations");
  if (o.relog === true && ring !== 0) throw einval("relog", "does not go with a dirty ring");
  if (o.pin !== undefined && o.pin !== "auto") {
    const cpus = os.cpus().length;
    if (!Array.isArray(o.pin) || (o.pin.length !== o.vcpus && o.pin.length !== o.vcpus + 1))
      throw einval(
        "pin",
        `must be "auto" or ${o.vcpus} or ${o.vcpus + 1} CPUs (the vCPUs', then the harvester's)`,
      );
    for (const c of o.pin)
      if (!Number.isInteger(c) || c < 0 || c >= cpus)
        throw einval("pin", `CPU ${String(c)} is not one of this machine's 0..${cpus - 1}`);
  }
  numa_balancing_settings(o.numaScanPeriodMs, o.numaScanBytes, {
    period: "numaScanPeriodMs",
    bytes: "numaScanBytes",
  });
  const ip = o.contention.invalidatePages;
  if (ip !== undefined && (!Number.isInteger(ip) || ip < 1 || ip > 1 << 22))
    throw einval("invalidatePages", "must be 1..4194304");
  const { memory, ptPages } = hostMemoryFor(o);
  if (memory > MAX_MEMORY) {
    const why = [
      ptPages > 0 ? `${ptPages} frames of guest page tables (shadow mode)` : "",
      o.contention.migrateRate > 0 ? "2 MiB of spare frames for page migration" : "",
    ].filter((x) => x !== "");
    throw new KvmError(
      "ENOMEM",
      `bytesPerVcpu: ${o.vcpus} x ${o.bytesPerVcpu} bytes of guest memory` +
        (why.length > 0 ? ` plus ${why.join(" and ")}` : "") +
        ` exceed the ${MAX_MEMORY / 2 ** 30} GiB of host memory one VM can have`,
    );
  }
}

/**
 * Both designs' VMs exist at once, and host_mmap touches every frame: refuse, before anything is
 * allocated, a run whose host memory does not fit the memory the machine has free now (with
 * 1 GiB to spare), rather than let the kernel's OOM killer pick a process.
 */
export function checkMachineMemory(o: PerfOptions, freeBytes = os.freemem()): void {
  const need = o.wp.length * hostMemoryFor(o).memory;
  if (need + 2 ** 30 <= freeBytes) return;
  const gib = (x: number): string => (x / 2 ** 30).toFixed(1);
  throw new KvmError(
    "ENOMEM",
    o.wp.length > 1
      ? `wp: ${o.wp.length} VMs of ${gib(need / o.wp.length)} GiB host memory each do not fit the ${gib(freeBytes)} GiB free; run one design at a time (--wp ${o.wp[0]}, then the others)`
      : `bytesPerVcpu: ${gib(need)} GiB of host memory does not fit the ${gib(freeBytes)} GiB free`,
  );
}

/**
 * What a caller gives dirtyLogPerf: any subset of PerfOptions. `contention` may also name a level
 * of CONTENTION, or give some of its fields (the others from the preset, else "default"); `pin`
 * may be "none" (unpinned, also over a preset's pin).
 */
export type PerfOptionsInput = Partial<Omit<PerfOptions, "contention" | "pin">> & {
  contention?: Partial<Contention> | string;
  pin?: number[] | "auto" | "none";
};

/** The defaults of every option a preset or the caller may leave out. */
export const PERF_DEFAULTS = {
  bytesPerVcpu: 512 << 20,
  iterations: 10,
  warmup: 1,
  writePercent: 100,
  random: false,
  seed: 1,
  thp: true,
  park: false,
  lock: "sleep" as LockMode,
  mode: "tdp" as MmuModeName,
  guestHuge: false,
  clearChunkPages: 0,
  windowMs: 0,
  numaScanPeriodMs: 0,
  numaScanBytes: 256 << 20,
};

/** A preset by name; KvmError(EINVAL) naming `opt` for an unknown one. */
export function perfPreset(name: string | undefined, opt = "preset"): Partial<PerfOptions> {
  if (name === undefined) return {};
  const p = Object.hasOwn(PRESETS, name) ? PRESETS[name] : undefined;
  if (!p) throw einval(opt, `"${name}" is not one of ${Object.keys(PRESETS).join(", ")}`);
  return p;
}

/** A contention level by name; KvmError(EINVAL) naming `opt` for an unknown one. */
export function contentionLevel(name: string, opt = "contention"): Contention {
  const c = Object.hasOwn(CONTENTION, name) ? CONTENTION[name] : undefined;
  if (!c) throw einval(opt, `"${name}" is not one of ${Object.keys(CONTENTION).join(", ")}`);
  return { ...c };
}

function resolveContention(given: PerfOptionsInput["contention"], preset?: Contention): Contention {
  if (typeof given === "string") return contentionLevel(given);
  return { ...(preset ?? CONTENTION["default"]), ...(given ?? {}) };
}

/**
 * Options as dirtyLogPerf runs them: the caller's, then the preset's, then the defaults; the
 * vCPU count (absent) fits the cores (fitVcpus) and `threads` records how. Checked
 * (validatePerfOptions): KvmError(EINVAL) naming the option otherwise.
 */
export function resolvePerfOptions(input: PerfOptionsInput = {}): PerfOptions {
  const preset = perfPreset(input.preset);
  const d = PERF_DEFAULTS;
  const pick = <K extends keyof typeof PERF_DEFAULTS>(k: K): PerfOptions[K] =>
    (input[k] ?? preset[k] ?? d[k]) as PerfOptions[K];
  const contention = resolveContention(input.contention, preset.contention);
  const cpus = os.availableParallelism();
  const vcpus = input.vcpus ?? preset.vcpus ?? fitVcpus(cpus, contention);
  // By default the models: the kernel (where registered) runs only when named.
  const wp = input.wp ?? preset.wp ?? designNames().filter((d) => designBackend(d) !== "kernel");
  const ring = input.ring ?? preset.ring ?? 0;
  const harvestIntervalMs = input.harvestIntervalMs ?? preset.harvestIntervalMs;
  const pin = input.pin ?? preset.pin;
  const baseline =
    input.baseline ??
    preset.baseline ??
    (Array.isArray(wp) && wp.includes(DEFAULT_BASELINE) ? DEFAULT_BASELINE : wp[0]);
  const o: PerfOptions = {
    vcpus,
    bytesPerVcpu: pick("bytesPerVcpu"),
    iterations: pick("iterations"),
    warmup: pick("warmup"),
    writePercent: pick("writePercent"),
    random: pick("random"),
    seed: pick("seed"),
    wp,
    baseline,
    thp: pick("thp"),
    contention,
    park: pick("park"),
    ...(input.relog === true ? { relog: true } : {}),
    lock: pick("lock"),
    mode: pick("mode"),
    guestHuge: pick("guestHuge"),
    ...(ring !== 0 ? { ring } : {}),
    manualProtect: input.manualProtect ?? (ring !== 0 ? false : (preset.manualProtect ?? true)),
    clearChunkPages: pick("clearChunkPages"),
    windowMs: pick("windowMs"),
    ...(harvestIntervalMs !== undefined ? { harvestIntervalMs } : {}),
    numaScanPeriodMs: pick("numaScanPeriodMs"),
    numaScanBytes: pick("numaScanBytes"),
    ...(pin !== undefined && pin !== "none" ? { pin } : {}),
    // Kept when given: resolving resolved options must not turn an "auto" count into "user".
    threads: input.threads ?? threadFit(cpus, vcpus, contention, input.vcpus !== undefined ? "user" : "auto"),
    ...(input.preset !== undefined ? { preset: input.preset } : {}),
    ...(input.progress ? { progress: input.progress } : {}),
    ...(input.signal ? { signal: input.signal } : {}),
    ...(input.onVm ? { onVm: input.onVm } : {}),
  };
  validatePerfOptions(o);
  return o;
}

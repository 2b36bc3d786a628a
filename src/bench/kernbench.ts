/**
 * kernbench: the seed's second measurement. The series put store-release/load-acquire accesses
 * on the rmap hot path even with dirty logging off, so its cover letter ran kernbench with EPT on
 * and off and reported no regression. Here: a fixed amount of guest work (src/workload/
 * kernbench_guest.ts: processes with their own address spaces, page-table churn, shared
 * file-cache mappings aliased at several gvas and in every address space), timed from "go" until
 * the last vCPU finished ("real"), for every combination of MMU mode (tdp, shadow) and dirty
 * logging (off; on with a harvester calling KVM_GET_DIRTY_LOG continuously, under each registered
 * write-protect design, src/mmu/design.ts). Runs are interleaved (run 1 of every combination, then run 2, ...) so drift
 * hits all of them.
 *
 * Also reported per combination: the rmap chain-length histogram (sampled under mmu_lock while
 * the guest runs), pte_list_desc allocations per second and how many of them reused a freed
 * descriptor, and the lockless walker's walks and restarts per second (the harvester's).
 */
import { bitmap_weight } from "../mem/dirty_bitmap.js";
import { MmuModeName, Vm } from "../vm.js";
import { DEFAULT_BASELINE, DesignName, designNames, designSupportsMode, isDesign } from "../mmu/design.js";
import {
  CTL,
  Kvm,
  KVM_MEM_LOG_DIRTY_PAGES,
  KVM_USER_MEM_SLOTS,
  MmuMode,
  PAGE_SIZE,
  PAGE_WORDS,
  SLOT,
  ST,
} from "../kvm_host.js";
import { einval } from "../errors.js";
import { gfn_to_rmap, slot_level_pages } from "../mem/memslot.js";
import { hva_to_pfn } from "../mem/host_memory.js";
import { pte_list_count } from "../mmu/rmap.js";
import { shadowCounters } from "../mmu/pte_write.js";
import { tablesFor } from "../workload/guest_paging.js";
import { audit } from "../verify/audit.js";
import { Envelope, envelope } from "./result.js";
import { pairedRatio, RatioSummary, summarize, Summary, verdict } from "./stats.js";
import { waitAsyncAlive } from "../sync/atomic.js";
import {
  ALIAS_WINDOW,
  KB_BOOTED,
  KB_DONE,
  KB_GO,
  kbCtlBytes,
  kbFinishIndex,
  KernbenchGuestArgs,
  LIB_MAGIC,
} from "../workload/kernbench_guest.js";
import { vmKvm } from "../vm/internal.js";

/** Dirty logging "off", or on under a design (its registered name). */
export type LoggingName = DesignName;

/** Every logging setting: off, then each registered design. */
export function loggingNames(): LoggingName[] {
  return ["off", ...designNames()];
}

/**
 * The design a run with logging off uses: the series' cover letter measured the cost of its
 * rmap accesses with logging off, so "off" runs the lockless design's code.
 */
export const LOGGING_OFF_DESIGN: DesignName = "lockless";
export const MODES: readonly MmuModeName[] = ["tdp", "shadow"];

export interface KernbenchOptions {
  vcpus: number;
  processes: number;
  /** Jobs per vCPU (the fixed amount of work). */
  jobs: number;
  runs: number;
  /** Runs of every combination before the measured ones, left out of the statistics (default 0). */
  warmup?: number;
  modes: MmuModeName[];
  logging: LoggingName[];
  jobsPerProcess: number;
  heapPages: number;
  libPages: number;
  sharedPages: number;
  libReads: number;
  sharedWrites: number;
  compute: number;
  thp: boolean;
  seed: number;
  /** MMU-notifier churn from the host thread during the runs (default none). */
  migrateRate?: number;
  invalidateRate?: number;
  /** Pause at the end of every run and run the MMU audit; failures go to the cell. */
  audit?: boolean;
  progress?: (msg: string) => void;
  /** Checked between runs: once aborted, the cells cover the runs done. */
  signal?: AbortSignal;
}

export const KERNBENCH_DEFAULTS: Omit<KernbenchOptions, "progress"> = {
  vcpus: 2,
  processes: 4,
  jobs: 300,
  runs: 3,
  modes: ["tdp", "shadow"],
  // A getter: a design registered after this module loaded is among the defaults.
  get logging(): LoggingName[] {
    return loggingNames();
  },
  jobsPerProcess: 8,
  heapPages: 32,
  libPages: 512,
  sharedPages: 64,
  libReads: 128,
  sharedWrites: 8,
  compute: 20000,
  thp: true,
  seed: 1,
};

export interface KernbenchRun {
  /** A warm-up run: kept, left out of every statistic. */
  warmup: boolean;
  realNs: number;
  opsPerSec: number;
  harvests: number;
  dirtyPages: number;
}

/** Chain-length histogram: bucket label -> rmap heads with that many entries. */
export type Histogram = Record<string, number>;
export const HIST_BUCKETS: readonly [string, number, number][] = [
  ["1", 1, 1],
  ["2", 2, 2],
  ["3-4", 3, 4],
  ["5-8", 5, 8],
  ["9-16", 9, 16],
  ["17-32", 17, 32],
  ["33-64", 33, 64],
  ["65+", 65, Infinity],
];

export interface KernbenchCell {
  /** Warm-ups included (marked); the statistics below use the measured runs. */
  runs: KernbenchRun[];
  /** "real" of the measured runs, ns: median, mean, stdev, min, max, bootstrap CI of the median. */
  real: Summary;
  realAvgNs: number;
  realStdNs: number;
  /** Jobs per second of the measured runs. */
  throughput: Summary;
  opsPerSec: number;
  /** Averaged over the samples of every run. */
  rmapHistogram: Histogram;
  rmapMaxChain: number;
  descAllocsPerSec: number;
  descReusedPerSec: number;
  walkerWalksPerSec: number;
  walkerRestartsPerSec: number;
  harvestsPerSec: number;
  faults: { fast: number; slow: number; tlbMisses: number; guestWalks: number; emulated: number };
  shadow?: Record<string, number>;
  /** With `audit`: the broken invariants found after each run (empty when all hold). */
  audit?: string[];
}

export interface KernbenchRatio extends RatioSummary {
  verdict: string;
}

export interface KernbenchResult extends Envelope {
  options: Omit<KernbenchOptions, "progress">;
  results: Partial<Record<MmuModeName, Partial<Record<LoggingName, KernbenchCell>>>>;
  /**
   * Per mode, "real" of one logging setting over another, paired by run (runs are interleaved):
   * lockless/locked, locked/off and lockless/off where both ran.
   */
  ratio: Partial<Record<MmuModeName, Record<string, KernbenchRatio>>>;
}

/**
 * The ratios kernbench reports, where both sides ran: each design against the baseline design
 * (DEFAULT_BASELINE), then each design against logging off.
 */
export function ratioPairs(logging: readonly LoggingName[]): [LoggingName, LoggingName][] {
  const designs = logging.filter((l) => l !== "off");
  const out: [LoggingName, LoggingName][] = [];
  if (designs.includes(DEFAULT_BASELINE))
    for (const d of designs) if (d !== DEFAULT_BASELINE) out.push([d, DEFAULT_BASELINE]);
  if (logging.includes("off")) for (const d of designs) out.push([d, "off"]);
  return out;
}

export function validateKernbenchOptions(o: KernbenchOptions): void {
  const int = (x: unknown, min: number, max: number): boolean =>
    typeof x === "number" && Number.isSafeInteger(x) && x >= min && x <= max;
  if (!int(o.vcpus, 1, 64)) throw einval("vcpus", "must be 1..64");
  if (!int(o.processes, 1, 64)) throw einval("processes", "must be 1..64");
  if (!int(o.jobs, 1, 1e7)) throw einval("jobs", "must be >= 1");
  if (!int(o.runs, 1, 100)) throw einval("runs", "must be 1..100");
  if (o.warmup !== undefined && !int(o.warmup, 0, 100)) throw einval("warmup", "must be 0..100");
  if (!int(o.jobsPerProcess, 1, 1e7)) throw einval("jobsPerProcess", "must be >= 1");
  if (!int(o.heapPages, 1, 512)) throw einval("heapPages", "must be 1..512");
  if (!int(o.libPages, 1, 1 << 18)) throw einval("libPages", "must be 1..262144");
  if (!int(o.sharedPages, 1, 1 << 18)) throw einval("sharedPages", "must be 1..262144");
  if (!int(o.libReads, 0, 1e6)) throw einval("libReads", "must be >= 0");
  if (!int(o.sharedWrites, 0, 1e6)) throw einval("sharedWrites", "must be >= 0");
  if (!int(o.compute, 0, 1e9)) throw einval("compute", "must be >= 0");
  for (const k of ["migrateRate", "invalidateRate"] as const) {
    const x = o[k];
    if (x !== undefined && !(typeof x === "number" && x >= 0 && Number.isFinite(x)))
      throw einval(k, "must be a rate >= 0");
  }
  if (o.modes.length === 0 || o.modes.some((m) => !MODES.includes(m)))
    throw einval("modes", "tdp and/or shadow");
  if (o.logging.length === 0 || o.logging.some((m) => m !== "off" && !isDesign(m)))
    throw einval("logging", `off and/or ${designNames().join(", ")}`);
}

const DATA_SLOT = 0;
const KERNEL_SLOT = 1;
const DATA_GPA = 1 << 30;
const KERNEL_GPA = 1 << 20;

/** rmap chain lengths of every head of every slot, all levels (mmu_lock held or quiesced). */
export function rmapChainHistogram(kvm: Kvm, into: Histogram = {}): { hist: Histogram; max: number } {
  let max = 0;
  for (const [label] of HIST_BUCKETS) into[label] ??= 0;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (kvm.slots[SLOT.active(id)] === 0) continue;
    const base = kvm.slots[SLOT.base_gfn(id)];
    const npages = kvm.slots[SLOT.npages(id)];
    for (let level = 1; level <= 3; level++) {
      const h0 = gfn_to_rmap(kvm, id, base, level);
      const n = slot_level_pages(base, npages, level);
      for (let i = 0; i < n; i++) {
        if (kvm.rmapPool[h0 + i] === 0) continue;
        const c = pte_list_count(kvm, kvm.rmapPool, h0 + i);
        if (c > max) max = c;
        for (const [label, lo, hi] of HIST_BUCKETS)
          if (c >= lo && c <= hi) {
            into[label]++;
            break;
          }
      }
    }
  }
  return { hist: into, max };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

interface RunStats {
  run: KernbenchRun;
  hist: Histogram;
  histSamples: number;
  maxChain: number;
  descAllocs: number;
  descReused: number;
  walks: number;
  restarts: number;
  faults: KernbenchCell["faults"];
  shadow?: Record<string, number>;
  audit?: string[];
}

/** Host-side write of word 0 of every library page (the page cache filled from disk). */
function fillLibraries(kvm: Kvm, hva: number, libGfn: number, libPages: number): void {
  kvm.mm_lock.lock();
  try {
    for (let i = 0; i < libPages; i++) {
      const pfn = hva_to_pfn(kvm, hva / PAGE_SIZE + i);
      kvm.mem[pfn * PAGE_WORDS] = (libGfn + i) ^ LIB_MAGIC;
    }
  } finally {
    kvm.mm_lock.unlock();
  }
}

/** Where one run's guest memory lies, in pages (gfns for the *Gfn fields). */
interface RunLayout {
  /** Data slot: libraries, the shared file, each vCPU's anonymous pool of anonPer pages. */
  libGfn: number;
  sharedGfn: number;
  anonGfn: number;
  anonPer: number;
  dataPages: number;
  /** Kernel slot: each vCPU's table pool of `pool` pages (its kernel identity map and processes). */
  pool: number;
  kernelPages: number;
}

function runLayout(o: KernbenchOptions): RunLayout {
  const v = o.vcpus;
  const anonPer = o.heapPages * 2 + 16;
  const libGfn = DATA_GPA / PAGE_SIZE;
  const sharedGfn = libGfn + o.libPages;
  const anonGfn = sharedGfn + o.sharedPages;
  const dataPages = Math.ceil((o.libPages + o.sharedPages + v * anonPer) / 512) * 512;
  const perProc =
    tablesFor(o.libPages) + tablesFor(ALIAS_WINDOW) + tablesFor(o.sharedPages) + tablesFor(o.heapPages) + 2;
  let pool = o.processes * perProc + 32;
  pool += tablesFor(Math.ceil((v * pool) / 512) * 512 + 512);
  const kernelPages = Math.ceil((v * pool) / 512) * 512;
  return { libGfn, sharedGfn, anonGfn, anonPer, dataPages, pool, kernelPages };
}

type Region = Parameters<Vm["setUserMemoryRegion"]>[0];

/** The run's VM, sized for the layout. */
function createRunVm(mode: MmuModeName, logging: LoggingName, o: KernbenchOptions, l: RunLayout): Vm {
  return Vm.create({
    memory: (l.dataPages + l.kernelPages) * PAGE_SIZE + (8 << 20),
    // A design's name, as registered.
    wp: logging === "off" ? LOGGING_OFF_DESIGN : logging,
    mode,
    maxVcpus: o.vcpus,
    maxSlotPages: l.dataPages + l.kernelPages,
  });
}

/** Creates both slots (logging off) and fills the libraries; returns the two regions. */
function setRunSlots(vm: Vm, o: KernbenchOptions, l: RunLayout): { data: Region; kern: Region } {
  const dhva = vm.mmap(l.dataPages * PAGE_SIZE, { thp: o.thp });
  const khva = vm.mmap(l.kernelPages * PAGE_SIZE, { thp: o.thp });
  const data = {
    slot: DATA_SLOT,
    flags: 0,
    guestPhysAddr: DATA_GPA,
    memorySize: l.dataPages * PAGE_SIZE,
    userspaceAddr: dhva,
  };
  const kern = {
    slot: KERNEL_SLOT,
    flags: 0,
    guestPhysAddr: KERNEL_GPA,
    memorySize: l.kernelPages * PAGE_SIZE,
    userspaceAddr: khva,
  };
  vm.setUserMemoryRegion(data);
  vm.setUserMemoryRegion(kern);
  fillLibraries(vmKvm(vm), dhva, l.libGfn, o.libPages);
  return { data, kern };
}

/** vCPU id's guest arguments. */
function guestArgs(
  o: KernbenchOptions,
  l: RunLayout,
  ctl: SharedArrayBuffer,
  id: number,
): KernbenchGuestArgs {
  const kernel = { baseGfn: KERNEL_GPA / PAGE_SIZE, pages: l.kernelPages };
  return {
    kind: "kernbench",
    ctl,
    vcpus: o.vcpus,
    paging: { kernel, poolGfn: kernel.baseGfn + id * l.pool, poolPages: l.pool },
    libGfn: l.libGfn,
    libPages: o.libPages,
    sharedGfn: l.sharedGfn,
    sharedPages: o.sharedPages,
    anonGfn: l.anonGfn + id * l.anonPer,
    anonPages: l.anonPer,
    processes: o.processes,
    jobs: o.jobs,
    jobsPerProcess: o.jobsPerProcess,
    heapPages: o.heapPages,
    libReads: o.libReads,
    sharedWrites: o.sharedWrites,
    compute: o.compute,
    seed: o.seed,
  };
}

/** rmap chain-length samples of a run, each taken under mmu_lock. */
class ChainSampler {
  readonly hist: Histogram = {};
  samples = 0;
  max = 0;

  sample(kvm: Kvm): void {
    kvm.mmu_lock.lock();
    try {
      this.max = Math.max(this.max, rmapChainHistogram(kvm, this.hist).max);
      this.samples++;
    } finally {
      kvm.mmu_lock.unlock();
    }
  }
}

/**
 * Lets the guests go and waits until every vCPU finished its jobs: with logging on, harvesting
 * both slots all the while; chain lengths sampled every 200 ms. Returns "real" (go until the
 * last vCPU's finish time), ns.
 */
async function runJobs(
  vm: Vm,
  ctlBuf: SharedArrayBuffer,
  v: number,
  l: RunLayout,
  logged: boolean,
  sampler: ChainSampler,
  run: { harvests: number; dirtyPages: number },
): Promise<number> {
  const kvm = vmKvm(vm);
  const ctl = new Int32Array(ctlBuf);
  const bm0 = new Uint32Array(Math.ceil(l.dataPages / 32));
  const bm1 = new Uint32Array(Math.ceil(l.kernelPages / 32));
  const start = performance.timeOrigin + performance.now();
  let nextSample = performance.now() + 50;
  Atomics.store(ctl, KB_GO, 1);
  Atomics.notify(ctl, KB_GO);
  while (Atomics.load(ctl, KB_DONE) < v) {
    vm.throwIfFailed();
    if (logged) {
      run.dirtyPages +=
        bitmap_weight(vm.getDirtyLog(DATA_SLOT, bm0)) + bitmap_weight(vm.getDirtyLog(KERNEL_SLOT, bm1));
      run.harvests++;
      await new Promise((r) => setImmediate(r));
    } else {
      await waitAsyncAlive(ctl, KB_DONE, Atomics.load(ctl, KB_DONE), 20);
    }
    if (performance.now() >= nextSample) {
      sampler.sample(kvm);
      nextSample = performance.now() + 200;
    }
  }
  const times = new Float64Array(ctlBuf);
  let end = 0;
  for (let id = 0; id < v; id++) end = Math.max(end, times[kbFinishIndex(v, id)]);
  return (end - start) * 1e6;
}

/** The vCPUs' fault counters, summed. */
function faultCounters(vm: Vm, kvm: Kvm): KernbenchCell["faults"] {
  const sum = (field: (id: number) => number): number =>
    vm.vcpuIds.reduce((n, id) => n + kvm.vcpuStats[field(id)], 0);
  return {
    fast: sum(ST.fast_pf),
    slow: sum(ST.slow_pf),
    tlbMisses: sum(ST.tlb_miss),
    guestWalks: sum(ST.guest_walks),
    emulated: sum(ST.emulated),
  };
}

async function oneRun(
  mode: MmuModeName,
  logging: LoggingName,
  o: KernbenchOptions,
  warmup: boolean,
): Promise<RunStats> {
  const v = o.vcpus;
  const l = runLayout(o);
  const vm = createRunVm(mode, logging, o, l);
  try {
    const { data, kern } = setRunSlots(vm, o, l);
    const ctlBuf = new SharedArrayBuffer(kbCtlBytes(v));
    const ctl = new Int32Array(ctlBuf);
    for (let i = 0; i < v; i++) vm.createVcpu(i);
    await vm.run((id) => guestArgs(o, l, ctlBuf, id));
    while (Atomics.load(ctl, KB_BOOTED) < v) {
      vm.throwIfFailed();
      await waitAsyncAlive(ctl, KB_BOOTED, Atomics.load(ctl, KB_BOOTED), 20);
    }
    const logged = logging !== "off";
    if (logged) {
      vm.setUserMemoryRegion({ ...data, flags: KVM_MEM_LOG_DIRTY_PAGES });
      vm.setUserMemoryRegion({ ...kern, flags: KVM_MEM_LOG_DIRTY_PAGES });
    }
    const kvm = vmKvm(vm);
    if ((o.migrateRate ?? 0) > 0 || (o.invalidateRate ?? 0) > 0)
      await vm.startHostThread({
        migrateRate: o.migrateRate ?? 0,
        invalidateRate: o.invalidateRate ?? 0,
        seed: o.seed,
      });
    const a0 = kvm.ctl[CTL.desc_allocs];
    const h0 = kvm.ctl[CTL.desc_high];
    const w0 = kvm.rmapStats.walks;
    const r0 = kvm.rmapStats.restarts;
    const sampler = new ChainSampler();
    const counts = { harvests: 0, dirtyPages: 0 };
    const realNs = await runJobs(vm, ctlBuf, v, l, logged, sampler, counts);
    vm.throwIfFailed();
    if (sampler.samples === 0) sampler.sample(kvm);
    let auditFailures: string[] | undefined;
    if (o.audit) {
      await vm.pause();
      await vm.pauseHostThread();
      vm.throwIfFailed();
      auditFailures = audit(kvm);
    }
    const sec = realNs / 1e9;
    const allocs = kvm.ctl[CTL.desc_allocs] - a0;
    const fresh = kvm.ctl[CTL.desc_high] - h0;
    return {
      run: { warmup, realNs, opsPerSec: (v * o.jobs) / sec, ...counts },
      hist: sampler.hist,
      histSamples: sampler.samples,
      maxChain: sampler.max,
      descAllocs: allocs / sec,
      descReused: (allocs - fresh) / sec,
      walks: (kvm.rmapStats.walks - w0) / sec,
      restarts: (kvm.rmapStats.restarts - r0) / sec,
      faults: faultCounters(vm, kvm),
      ...(kvm.mode === MmuMode.Shadow ? { shadow: shadowCounters(kvm) } : {}),
      ...(auditFailures ? { audit: auditFailures } : {}),
    };
  } finally {
    await vm.stop();
  }
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

function cell(all: RunStats[]): KernbenchCell {
  const stats = all.filter((s) => !s.run.warmup);
  const real = stats.map((s) => s.run.realNs);
  const realS = summarize(real);
  const samples = stats.reduce((n, s) => n + s.histSamples, 0);
  const hist: Histogram = {};
  for (const [label] of HIST_BUCKETS)
    hist[label] = stats.reduce((n, s) => n + (s.hist[label] ?? 0), 0) / Math.max(1, samples);
  const last = stats[stats.length - 1];
  const totalSec = real.reduce((a, b) => a + b, 0) / 1e9;
  return {
    runs: all.map((s) => s.run),
    real: realS,
    realAvgNs: realS.mean,
    realStdNs: realS.stdev,
    throughput: summarize(stats.map((s) => s.run.opsPerSec)),
    opsPerSec: mean(stats.map((s) => s.run.opsPerSec)),
    rmapHistogram: hist,
    rmapMaxChain: Math.max(...stats.map((s) => s.maxChain)),
    descAllocsPerSec: mean(stats.map((s) => s.descAllocs)),
    descReusedPerSec: mean(stats.map((s) => s.descReused)),
    walkerWalksPerSec: mean(stats.map((s) => s.walks)),
    walkerRestartsPerSec: mean(stats.map((s) => s.restarts)),
    harvestsPerSec: stats.reduce((n, s) => n + s.run.harvests, 0) / totalSec,
    faults: last.faults,
    ...(last.shadow ? { shadow: last.shadow } : {}),
    ...(stats.some((s) => s.audit) ? { audit: stats.flatMap((s) => s.audit ?? []) } : {}),
  };
}

/** Whether `logging` (off or a design) runs in paging mode `mode`. */
function loggingRuns(logging: LoggingName, mode: MmuModeName): boolean {
  return logging === "off" || designSupportsMode(logging, mode === "shadow" ? MmuMode.Shadow : MmuMode.Tdp);
}

export async function kernbench(o: KernbenchOptions): Promise<KernbenchResult> {
  validateKernbenchOptions(o);
  const say = o.progress ?? (() => {});
  const all = new Map<string, RunStats[]>();
  const warmup = o.warmup ?? 0;
  for (let run = 1; run <= warmup + o.runs; run++) {
    const w = run <= warmup;
    for (const mode of o.modes) {
      for (const logging of o.logging) {
        if (o.signal?.aborted) break;
        // A design without this paging mode (the TDP MMU has no shadow paging) is left out.
        if (!loggingRuns(logging, mode)) continue;
        const s = await oneRun(mode, logging, o, w);
        const key = `${mode}/${logging}`;
        if (!all.has(key)) all.set(key, []);
        all.get(key)!.push(s);
        say(
          `kernbench ${mode}, logging ${logging}, ${w ? "warm-up" : `run ${run - warmup}`}: real ${(s.run.realNs / 1e9).toFixed(3)}s`,
        );
        await sleep(0);
      }
    }
  }
  const results: KernbenchResult["results"] = {};
  const ratio: KernbenchResult["ratio"] = {};
  const measured = (mode: MmuModeName, l: LoggingName): number[] =>
    all
      .get(`${mode}/${l}`)!
      .filter((s) => !s.run.warmup)
      .map((s) => s.run.realNs);
  for (const mode of o.modes) {
    const per: Partial<Record<LoggingName, KernbenchCell>> = {};
    for (const logging of o.logging) {
      const runs = all.get(`${mode}/${logging}`);
      if (runs) per[logging] = cell(runs); // (an interrupted run may lack some)
    }
    if (Object.keys(per).length === 0) continue;
    results[mode] = per;
    const r: Record<string, KernbenchRatio> = {};
    for (const [a, b] of ratioPairs(o.logging)) {
      if (!per[a] || !per[b]) continue;
      const q = pairedRatio(measured(mode, a), measured(mode, b));
      r[`${a}/${b}`] = { ...q, verdict: verdict(q, `${a} faster`, `${a} slower`) };
    }
    ratio[mode] = r;
  }
  const { progress: _p, signal: _s, ...options } = o;
  void _p;
  void _s;
  return { ...envelope("kernbench", options), options, results, ratio };
}

/**
 * Micro-benchmark: guest accesses that hit the software TLB against plain typed-array accesses
 * of the same words, measured with tinybench (warm-up, timed samples, margin of error).
 *
 * Access pattern, the same for every task: sequential words of PAGES guest pages (all 1024
 * words of a page, then the next page), every access a TLB hit. Tasks:
 * - plain: `mem[base[page] + w]`, frame bases precomputed (guest memory with no MMU at all);
 * - vcpu: `Vcpu.read32` / `Vcpu.write32` (the hit path of the built-in guests);
 * - ctx: `read32w` / `write32w` of the public guest context (as memstress calls it);
 * - guest: the same calls on a context that the JIT cannot treat as a constant. A guest program
 *   receives its context as an argument; the ctx and vcpu loops close over theirs, so V8 folds
 *   the vCPU's fields and arrays into the code. Here the context is read from a binding that is
 *   assigned twice, so every field the hit needs is loaded as in a guest.
 * One tinybench sample is `accesses` accesses. A round runs every task once (a time budget of
 * `timeMs` each, task order rotated round by round); rounds repeat, so each ratio is paired by
 * round (same machine state) and bootstrapped. Warm-up rounds (JIT tiering) are left out;
 * tinybench also warms every task up before its samples.
 *
 * The engine is passed in (TlbHitImpl), so the same harness can measure another build's dist
 * (`node dist/src/bench/tlb_hit_main.js --from DIR`) in the same process conditions.
 */
import { Bench } from "tinybench";
import { Vm } from "../vm.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { VcpuGuestContext } from "../guest/context.js";
import { PAGE_SIZE, PAGE_WORDS } from "../kvm_host.js";
import { hva_to_pfn } from "../mem/host_memory.js";
import { einval } from "../errors.js";
import { formatRatio, median, pairedRatio, RatioSummary, summarize, Summary } from "./stats.js";
import { vmKvm } from "../vm/internal.js";

export interface TlbHitOptions {
  /** Measured rounds. */
  rounds: number;
  /** Rounds run first and left out. */
  warmup: number;
  /** Accesses per tinybench sample (a multiple of 1024: whole pages). */
  accesses: number;
  /** tinybench time budget per task per round, ms (it also takes at least 64 samples). */
  timeMs?: number;
}

/** What tinybench reported for one task in one round (ns per access). */
export interface TaskRound {
  /** Median of the samples. */
  p50Ns: number;
  meanNs: number;
  /** Relative margin of error of the mean, %, at 95% (Student's t). */
  rme: number;
  samples: number;
}

export const TLB_HIT_TASKS = [
  "plain-read",
  "vcpu-read",
  "ctx-read",
  "plain-write",
  "vcpu-write",
  "ctx-write",
  "guest-read",
  "guest-write",
] as const;
export type TlbHitTask = (typeof TLB_HIT_TASKS)[number];

/** The pieces of an engine build the harness drives (ours, or another dist's: tlb_hit_main.ts). */
export interface TlbHitImpl {
  /** Where it came from (a dist directory), for the report. */
  label: string;
  createVcpu(): {
    vcpu: {
      read32(gfn: number, w: number): number;
      write32(gfn: number, w: number, x: number): void;
      enterGuest(): void;
      tlbMisses: number;
    };
    /** The guest context over that vCPU; null where the build has none. */
    ctx: { read32w(p: number, w: number): number; write32w(p: number, w: number, x: number): void } | null;
    /** Maps the benchmark's pages (through the MMU) and returns each page's first word in mem. */
    mapPages: (gfns: Int32Array) => Int32Array;
    mem: Int32Array;
  };
}

/** Guest pages the loops walk (all in the TLB, distinct sets). */
const PAGES = 8;

export const OWN_IMPL: TlbHitImpl = {
  label: "this build",
  createVcpu() {
    const vm = Vm.create({ memory: 8 << 20, wp: "lockless" });
    const hva = vm.mmap(4 << 20);
    vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 4 << 20, userspaceAddr: hva });
    vm.createVcpu(0);
    const vcpu = new Vcpu(vmKvm(vm), 0);
    return {
      vcpu,
      ctx: new VcpuGuestContext(vcpu),
      mem: vmKvm(vm).mem,
      mapPages: (gfns) => {
        const bases = new Int32Array(gfns.length);
        gfns.forEach((gfn, k) => {
          vcpu.write32(gfn, 0, 0); // a write fault maps the page: the entry is what a guest gets
          bases[k] = hva_to_pfn(vmKvm(vm), hva / PAGE_SIZE + gfn) * PAGE_WORDS;
        });
        return bases;
      },
    };
  },
};

export interface TlbHitResult {
  options: Required<TlbHitOptions>;
  harness: string;
  impl: string;
  /** Vcpu.read32 hit, ns per access (per-round sample medians). */
  tlbNsPerAccess: Summary;
  /** Plain typed-array load, ns per access. */
  plainNsPerAccess: Summary;
  /** Vcpu.read32 hit / plain load, paired by round. */
  ratio: RatioSummary;
  /** Every task that ran, ns per access over the measured rounds. */
  tasks: Partial<Record<TlbHitTask, Summary>>;
  /** Each path against the plain access of the same kind, paired by round (ctx: where it exists). */
  ratios: {
    vcpuRead: RatioSummary;
    vcpuWrite: RatioSummary;
    ctxRead?: RatioSummary;
    ctxWrite?: RatioSummary;
    guestRead?: RatioSummary;
    guestWrite?: RatioSummary;
  };
  /** tlbNs / plainNs: the per-round medians of vcpu-read and plain-read. */
  rounds: {
    warmup: boolean;
    tlbNs: number;
    plainNs: number;
    tasks: Partial<Record<TlbHitTask, TaskRound>>;
  }[];
}

export const TLB_HIT_DEFAULTS: TlbHitOptions = { rounds: 10, warmup: 1, accesses: 16384, timeMs: 100 };

type Engine = ReturnType<TlbHitImpl["createVcpu"]>;
type TaskFns = Partial<Record<TlbHitTask, () => void>>;
type Round = TlbHitResult["rounds"][number];

/**
 * The tasks' loops: one closure per task, so that no two tasks share a call site's type
 * feedback. Everything they close over is a const binding (V8 may fold it into the code), but
 * for the guest tasks' context (see the module comment). `sink` keeps the reads alive.
 */
function taskLoops(setup: { engine: Engine; gfns: Int32Array; bases: Int32Array; n: number }): {
  fns: TaskFns;
  sink: () => number;
} {
  const { vcpu, ctx, mem } = setup.engine;
  const { gfns, bases, n } = setup;
  const pm = PAGES - 1;
  let sink = 0;
  const fns: TaskFns = {
    "plain-read": () => {
      let s = 0;
      for (let i = 0; i < n; i++) s = (s + mem[bases[(i >>> 10) & pm] + (i & 1023)]) | 0;
      sink ^= s;
    },
    "vcpu-read": () => {
      let s = 0;
      for (let i = 0; i < n; i++) s = (s + vcpu.read32(gfns[(i >>> 10) & pm], i & 1023)) | 0;
      sink ^= s;
    },
    "plain-write": () => {
      for (let i = 0; i < n; i++) mem[bases[(i >>> 10) & pm] + (i & 1023)] = i;
    },
    "vcpu-write": () => {
      for (let i = 0; i < n; i++) vcpu.write32(gfns[(i >>> 10) & pm], i & 1023, i);
    },
  };
  if (ctx !== null) {
    fns["ctx-read"] = () => {
      let s = 0;
      for (let i = 0; i < n; i++) s = (s + ctx.read32w(gfns[(i >>> 10) & pm], i & 1023)) | 0;
      sink ^= s;
    };
    fns["ctx-write"] = () => {
      for (let i = 0; i < n; i++) ctx.write32w(gfns[(i >>> 10) & pm], i & 1023, i);
    };
    // Assigned twice: a mutable binding, which the JIT does not fold to a constant.
    let guest: typeof ctx | null = null;
    guest = ctx;
    fns["guest-read"] = () => {
      const c = guest;
      let s = 0;
      for (let i = 0; i < n; i++) s = (s + c.read32w(gfns[(i >>> 10) & pm], i & 1023)) | 0;
      sink ^= s;
    };
    fns["guest-write"] = () => {
      const c = guest;
      for (let i = 0; i < n; i++) c.write32w(gfns[(i >>> 10) & pm], i & 1023, i);
    };
  }
  return { fns, sink: () => sink };
}

/** Round r: every task once under tinybench, the order rotated by r; ns per access per task. */
function runRound(names: TlbHitTask[], fns: TaskFns, opts: Required<TlbHitOptions>, r: number): Round {
  const n = opts.accesses;
  const bench = new Bench({ time: opts.timeMs, warmupTime: Math.min(50, opts.timeMs), throws: true });
  // Rotate the task order each round so that no task always runs first (or right after a GC).
  for (let k = 0; k < names.length; k++) {
    const name = names[(k + r) % names.length];
    bench.add(name, fns[name] as () => void);
  }
  bench.runSync();
  const tasks: Partial<Record<TlbHitTask, TaskRound>> = {};
  for (const t of bench.tasks) {
    const lat = t.result?.latency;
    if (lat === undefined) throw new Error(`tinybench: no result for ${t.name}`);
    const k = 1e6 / n; // ms per sample -> ns per access
    tasks[t.name as TlbHitTask] = {
      p50Ns: (lat.p50 ?? lat.mean) * k,
      meanNs: lat.mean * k,
      rme: lat.rme,
      samples: lat.samples.length,
    };
  }
  return {
    warmup: r < opts.warmup,
    tlbNs: (tasks["vcpu-read"] as TaskRound).p50Ns,
    plainNs: (tasks["plain-read"] as TaskRound).p50Ns,
    tasks,
  };
}

/** Each path against the plain access of its kind, paired by measured round. */
function tlbRatios(col: (t: TlbHitTask) => number[], withCtx: boolean): TlbHitResult["ratios"] {
  const ratios: TlbHitResult["ratios"] = {
    vcpuRead: pairedRatio(col("vcpu-read"), col("plain-read")),
    vcpuWrite: pairedRatio(col("vcpu-write"), col("plain-write")),
  };
  if (withCtx) {
    ratios.ctxRead = pairedRatio(col("ctx-read"), col("plain-read"));
    ratios.ctxWrite = pairedRatio(col("ctx-write"), col("plain-write"));
    ratios.guestRead = pairedRatio(col("guest-read"), col("plain-read"));
    ratios.guestWrite = pairedRatio(col("guest-write"), col("plain-write"));
  }
  return ratios;
}

export function tlbHitBench(o: TlbHitOptions = TLB_HIT_DEFAULTS, impl: TlbHitImpl = OWN_IMPL): TlbHitResult {
  const opts: Required<TlbHitOptions> = { timeMs: 100, ...o };
  if (!Number.isInteger(opts.rounds) || opts.rounds < 1) throw einval("rounds", "must be >= 1");
  if (!Number.isInteger(opts.warmup) || opts.warmup < 0) throw einval("warmup", "must be >= 0");
  if (!Number.isInteger(opts.accesses) || opts.accesses < 1024 || opts.accesses % 1024 !== 0)
    throw einval("accesses", "must be a positive multiple of 1024");
  if (!Number.isFinite(opts.timeMs) || opts.timeMs <= 0) throw einval("timeMs", "must be > 0");
  const engine = impl.createVcpu();
  const vcpu = engine.vcpu;
  vcpu.enterGuest(); // as the worker does before the guest runs
  const gfns = new Int32Array(PAGES);
  for (let k = 0; k < PAGES; k++) gfns[k] = k * 7;
  const bases = engine.mapPages(gfns);
  const misses = vcpu.tlbMisses;
  const { fns, sink } = taskLoops({ engine, gfns, bases, n: opts.accesses });
  const names = TLB_HIT_TASKS.filter((t) => fns[t] !== undefined);
  const rounds: Round[] = [];
  for (let r = 0; r < opts.warmup + opts.rounds; r++) rounds.push(runRound(names, fns, opts, r));
  if (sink() === 0x5eed) console.log("");
  // Every access was a hit: the loops measured the hit path, not the MMU.
  if (vcpu.tlbMisses !== misses) throw new Error(`tlb-hit: ${vcpu.tlbMisses - misses} misses in the loops`);
  const m = rounds.filter((x) => !x.warmup);
  const col = (t: TlbHitTask): number[] => m.map((x) => (x.tasks[t] as TaskRound).p50Ns);
  const tasks: Partial<Record<TlbHitTask, Summary>> = {};
  for (const t of names) tasks[t] = summarize(col(t));
  const ratios = tlbRatios(col, engine.ctx !== null);
  return {
    options: opts,
    harness: "tinybench",
    impl: impl.label,
    tlbNsPerAccess: tasks["vcpu-read"] as Summary,
    plainNsPerAccess: tasks["plain-read"] as Summary,
    ratio: ratios.vcpuRead,
    tasks,
    ratios,
    rounds,
  };
}

/** Median over the measured rounds of tinybench's relative margin of error for task t, %. */
export function medianRme(r: TlbHitResult, t: TlbHitTask): number {
  return median(r.rounds.filter((x) => !x.warmup).map((x) => (x.tasks[t] as TaskRound).rme));
}

/** Human-readable lines: each task's median ns per access and margin, then the ratios. */
export function formatTlbHit(r: TlbHitResult): string {
  const lines = [
    `software TLB hit, ${r.impl} (tinybench, ${r.options.rounds} rounds after ${r.options.warmup} warm-up, ` +
      `${r.options.accesses} accesses per sample, ${r.options.timeMs} ms per task per round)`,
  ];
  for (const t of TLB_HIT_TASKS) {
    const s = r.tasks[t];
    if (s === undefined) continue;
    lines.push(
      `  ${t.padEnd(12)} ${s.median.toFixed(3)} ns/access [${s.ci95[0].toFixed(3)}, ${s.ci95[1].toFixed(3)}]` +
        `  (tinybench rme, median of rounds: ±${medianRme(r, t).toFixed(1)}%)`,
    );
  }
  const q = r.ratios;
  const parts = [`vcpu read ${formatRatio(q.vcpuRead)}`, `vcpu write ${formatRatio(q.vcpuWrite)}`];
  if (q.ctxRead) parts.push(`ctx read ${formatRatio(q.ctxRead)}`);
  if (q.ctxWrite) parts.push(`ctx write ${formatRatio(q.ctxWrite)}`);
  if (q.guestRead) parts.push(`guest read ${formatRatio(q.guestRead)}`);
  if (q.guestWrite) parts.push(`guest write ${formatRatio(q.guestWrite)}`);
  lines.push(`  vs plain: ${parts.join(", ")}`);
  return lines.join("\n");
}

/**
 * Micro-benchmark: a guest load that hits the software TLB against a plain typed-array load of
 * the same data. Both loops read the same 64 pages in the same order; the TLB loop goes through
 * Vcpu.read32 (tag check, entry load, safe-point countdown), the plain loop indexes guest memory
 * with precomputed frame offsets. The two loops alternate round by round; warm-up rounds (JIT
 * tiering) are left out; ns per access with the statistics of src/bench/stats.ts.
 */
import { Vm } from "../vm.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { PAGE_SIZE, PAGE_WORDS } from "../kvm_host.js";
import { hva_to_pfn } from "../mem/host_memory.js";
import { einval } from "../errors.js";
import { pairedRatio, RatioSummary, summarize, Summary } from "./stats.js";

export interface TlbHitOptions {
  rounds: number;
  warmup: number;
  accesses: number;
}

export interface TlbHitResult {
  options: TlbHitOptions;
  /** ns per access, per measured round. */
  tlbNsPerAccess: Summary;
  plainNsPerAccess: Summary;
  /** TLB / plain, paired by round. */
  ratio: RatioSummary;
  rounds: { warmup: boolean; tlbNs: number; plainNs: number }[];
}

export const TLB_HIT_DEFAULTS: TlbHitOptions = { rounds: 15, warmup: 2, accesses: 4_000_000 };

export function tlbHitBench(o: TlbHitOptions = TLB_HIT_DEFAULTS): TlbHitResult {
  if (!Number.isInteger(o.rounds) || o.rounds < 1) throw einval("rounds", "must be >= 1");
  if (!Number.isInteger(o.warmup) || o.warmup < 0) throw einval("warmup", "must be >= 0");
  if (!Number.isInteger(o.accesses) || o.accesses < 64) throw einval("accesses", "must be >= 64");
  const vm = Vm.create({ memory: 8 << 20, wp: "lockless" });
  const hva = vm.mmap(4 << 20);
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 4 << 20, userspaceAddr: hva });
  vm.createVcpu(0);
  const vcpu = new Vcpu(vm.kvm, 0);
  const N = 64;
  const gfns = new Int32Array(N);
  const bases = new Int32Array(N);
  for (let k = 0; k < N; k++) {
    gfns[k] = k * 7;
    const pfn = hva_to_pfn(vm.kvm, hva / PAGE_SIZE + k * 7);
    bases[k] = pfn * PAGE_WORDS;
    vcpu.tlb.fill(k * 7, pfn, true);
  }
  const mem = vm.kvm.mem;
  const accesses = o.accesses;
  const rounds: TlbHitResult["rounds"] = [];
  let sink = 0;
  for (let r = 0; r < o.warmup + o.rounds; r++) {
    let t = performance.now();
    let s = 0;
    for (let i = 0; i < accesses; i++) s += vcpu.read32(gfns[i & 63], 8);
    const tlbNs = ((performance.now() - t) * 1e6) / accesses;
    sink += s;
    t = performance.now();
    s = 0;
    for (let i = 0; i < accesses; i++) s += mem[bases[i & 63] + 8];
    const plainNs = ((performance.now() - t) * 1e6) / accesses;
    sink += s;
    rounds.push({ warmup: r < o.warmup, tlbNs, plainNs });
  }
  if (sink === 42) console.log("");
  const m = rounds.filter((r) => !r.warmup);
  const tlb = m.map((r) => r.tlbNs);
  const plain = m.map((r) => r.plainNs);
  return {
    options: { ...o },
    tlbNsPerAccess: summarize(tlb),
    plainNsPerAccess: summarize(plain),
    ratio: pairedRatio(tlb, plain),
    rounds,
  };
}

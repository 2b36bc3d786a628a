/**
 * Micro-benchmark: a guest load that hits the software TLB against a plain typed-array load of
 * the same data. Both loops read the same 64 pages in the same order; the TLB loop goes through
 * Vcpu.read32 (tag check, entry load, safe-point countdown), the plain loop indexes guest memory
 * with precomputed frame offsets. Median of several rounds, ns per access.
 */
import { median } from "./dirty_log_perf.js";
import { Vm } from "../vm.js";
import { Vcpu } from "../vcpu/vcpu.js";
import { PAGE_SIZE, PAGE_WORDS } from "../kvm_host.js";
import { hva_to_pfn } from "../mem/host_memory.js";

export interface TlbHitResult {
  tlbNsPerAccess: number;
  plainNsPerAccess: number;
  ratio: number;
}

export function tlbHitBench(rounds = 15, accesses = 4_000_000): TlbHitResult {
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
  const tlbRuns: number[] = [];
  const plainRuns: number[] = [];
  let sink = 0;
  for (let r = 0; r < rounds; r++) {
    let t = performance.now();
    let s = 0;
    for (let i = 0; i < accesses; i++) s += vcpu.read32(gfns[i & 63], 8);
    tlbRuns.push(((performance.now() - t) * 1e6) / accesses);
    sink += s;
    t = performance.now();
    s = 0;
    for (let i = 0; i < accesses; i++) s += mem[bases[i & 63] + 8];
    plainRuns.push(((performance.now() - t) * 1e6) / accesses);
    sink += s;
  }
  if (sink === 42) console.log("");
  const tlb = median(tlbRuns);
  const plain = median(plainRuns);
  return { tlbNsPerAccess: tlb, plainNsPerAccess: plain, ratio: tlb / plain };
}

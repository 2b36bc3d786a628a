/**
 * `node dist/src/bench/tlb_hit_main.js [--from DIST] [--rounds N] [--warmup N] [--accesses N]
 * [--time-ms N] [--json]`: the software-TLB micro-benchmark alone, on this build or, with
 * --from, on another build's dist directory (its Vm, Vcpu and guest context, loaded here), so
 * that two builds can be compared by the same harness in alternation.
 */
import { existsSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { Command } from "commander";
import { formatTlbHit, OWN_IMPL, tlbHitBench, TlbHitImpl, TLB_HIT_DEFAULTS } from "./tlb_hit.js";

/* eslint-disable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-assignment,
   @typescript-eslint/no-unsafe-call, @typescript-eslint/no-unsafe-member-access --
   another build's modules are untyped here: they are used only through TlbHitImpl. */
async function loadImpl(dist: string): Promise<TlbHitImpl> {
  const root = resolve(dist, "src");
  const load = async (p: string): Promise<any> => import(pathToFileURL(resolve(root, p)).href);
  const { Vm } = await load("vm.js");
  const { Vcpu } = await load("vcpu/vcpu.js");
  const { PAGE_SIZE, PAGE_WORDS } = await load("kvm_host.js");
  const { hva_to_pfn } = await load("mem/host_memory.js");
  // A build before the internal entry point (src/vm/internal.ts) had a public vm.kvm.
  const internalPath = resolve(root, "vm/internal.js");
  const vmKvm = existsSync(internalPath) ? (await load("vm/internal.js")).vmKvm : (vm: any): any => vm.kvm;
  const ctxPath = resolve(root, "guest/context.js");
  const Ctx = existsSync(ctxPath) ? (await load("guest/context.js")).VcpuGuestContext : undefined;
  return {
    label: dist,
    createVcpu() {
      const vm = Vm.create({ memory: 8 << 20, wp: "lockless" });
      const hva = vm.mmap(4 << 20);
      vm.setUserMemoryRegion({
        slot: 0,
        flags: 0,
        guestPhysAddr: 0,
        memorySize: 4 << 20,
        userspaceAddr: hva,
      });
      vm.createVcpu(0);
      const vcpu = new Vcpu(vmKvm(vm), 0);
      return {
        vcpu,
        ctx: Ctx ? new Ctx(vcpu) : null,
        mem: vmKvm(vm).mem,
        mapPages: (gfns: Int32Array) => {
          const bases = new Int32Array(gfns.length);
          gfns.forEach((gfn, k) => {
            vcpu.write32(gfn, 0, 0);
            bases[k] = hva_to_pfn(vmKvm(vm), hva / PAGE_SIZE + gfn) * PAGE_WORDS;
          });
          return bases;
        },
      };
    },
  };
}
/* eslint-enable @typescript-eslint/no-explicit-any, @typescript-eslint/no-unsafe-assignment,
   @typescript-eslint/no-unsafe-call, @typescript-eslint/no-unsafe-member-access */

const int = (s: string): number => Number.parseInt(s, 10);
const cmd = new Command("tlb-hit")
  .option("--from <dist>", "measure another build's dist directory instead of this one")
  .option("--rounds <n>", "measured rounds", int, TLB_HIT_DEFAULTS.rounds)
  .option("--warmup <n>", "warm-up rounds left out", int, TLB_HIT_DEFAULTS.warmup)
  .option(
    "--accesses <n>",
    "accesses per tinybench sample (a multiple of 1024)",
    int,
    TLB_HIT_DEFAULTS.accesses,
  )
  .option("--time-ms <n>", "tinybench time per task per round", Number, TLB_HIT_DEFAULTS.timeMs)
  .option("--json", "print the result as JSON")
  .parse();
const o = cmd.opts<{
  from?: string;
  rounds: number;
  warmup: number;
  accesses: number;
  timeMs: number;
  json?: boolean;
}>();
const impl = o.from === undefined ? OWN_IMPL : await loadImpl(o.from);
const r = tlbHitBench({ rounds: o.rounds, warmup: o.warmup, accesses: o.accesses, timeMs: o.timeMs }, impl);
process.stdout.write((o.json === true ? JSON.stringify(r) : formatTlbHit(r)) + "\n");

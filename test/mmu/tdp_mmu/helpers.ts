/** Shared setup of the TDP MMU tests: a tdp-mmu VM with one 4 MiB slot, a vCPU in this thread. */
import { CTL, Kvm, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, SLOT } from "../../../src/kvm_host.js";
import { Vm } from "../../../src/vm.js";
import { Vcpu } from "../../../src/vcpu/vcpu.js";
import {
  TdpIter,
  tdp_iter_in_range,
  tdp_iter_next,
  tdp_iter_start,
} from "../../../src/mmu/tdp_mmu/tdp_iter.js";
import { is_last_spte, is_shadow_present_pte } from "../../../src/mmu/spte.js";
import { vmKvm } from "../../../src/vm/internal.js";

export const BYTES = 4 << 20;
export const NPAGES = BYTES / 4096;

export function makeTdpVm(o: { pml?: boolean; eager?: boolean; thp?: boolean; vcpus?: number } = {}): Vm {
  const vm = Vm.create({
    memory: 16 << 20,
    wp: "tdp-mmu",
    maxVcpus: o.vcpus ?? 1,
    pml: o.pml,
    eager_page_split: o.eager,
  });
  const hva = vm.mmap(BYTES, { thp: o.thp ?? true });
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: BYTES, userspaceAddr: hva });
  for (let i = 0; i < (o.vcpus ?? 1); i++) vm.createVcpu(i);
  return vm;
}

export function setLogging(vm: Vm, on: boolean): void {
  const hva = vmKvm(vm).slots[SLOT.hva_page(0)] * PAGE_SIZE;
  vm.setUserMemoryRegion({
    slot: 0,
    flags: on ? KVM_MEM_LOG_DIRTY_PAGES : 0,
    guestPhysAddr: 0,
    memorySize: BYTES,
    userspaceAddr: hva,
  });
}

export function writePages(vm: Vm, gfns: number[], x: number, v = new Vcpu(vmKvm(vm), 0, 4)): Vcpu {
  v.enterGuest();
  for (const g of gfns) v.write32(g, 0, x);
  v.exitGuest();
  return v;
}

/** Every present leaf under the root: gfn -> [spte, level]. */
export function leaves(kvm: Kvm): Map<number, [number, number]> {
  const out = new Map<number, [number, number]>();
  const it = new TdpIter();
  for (
    tdp_iter_start(kvm, it, kvm.ctl[CTL.root], 1, 0);
    tdp_iter_in_range(it, 1 << 30);
    tdp_iter_next(kvm, it)
  )
    if (is_shadow_present_pte(it.old_spte) && is_last_spte(it.old_spte, it.level))
      out.set(it.gfn, [it.old_spte, it.level]);
  return out;
}

export function reported(bm: Uint32Array): number[] {
  const out: number[] = [];
  for (let g = 0; g < NPAGES; g++) if ((bm[g >>> 5] & (1 << (g & 31))) !== 0) out.push(g);
  return out;
}

import { Vm, KVM_MEM_LOG_DIRTY_PAGES, bitmap_weight } from "kvmmu";

const vm = Vm.create({ memory: 1 << 30, wp: "lockless" }); // or "locked" (Linux 3.11)
const hva = vm.mmap(512 << 20, { thp: true }); // host memory, 2 MiB pages where possible
vm.setUserMemoryRegion({
  slot: 0,
  flags: KVM_MEM_LOG_DIRTY_PAGES,
  guestPhysAddr: 1 << 30,
  memorySize: 512 << 20,
  userspaceAddr: hva,
});
vm.createVcpu(0);
await vm.run(() => ({
  kind: "memstress",
  baseGfn: 1 << 18,
  pages: 131072,
  writePercent: 100,
  random: false,
  seed: 1,
}));
await vm.waitPasses(1); // the first pass writes every page
const bitmap = vm.getDirtyLog(0); // KVM_GET_DIRTY_LOG
console.log(bitmap_weight(bitmap)); // 131072
await vm.stop();

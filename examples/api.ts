import { copyDirtyPages, dirtyPages, KVM_MEM_LOG_DIRTY_PAGES, KvmError, Vm } from "kvmmu";

const GPA = 1 << 30;
const vm = Vm.create({ memory: 16 << 20, wp: "lockless" });
const hva = vm.mmap(8 << 20, { thp: false });
vm.setUserMemoryRegion({
  slot: 0,
  flags: KVM_MEM_LOG_DIRTY_PAGES,
  guestPhysAddr: GPA,
  memorySize: 8 << 20,
  userspaceAddr: hva,
});
vm.createVcpu(0);
vm.createVcpu(1);
vm.writeGuest(GPA, new TextEncoder().encode("hello")); // the host's write dirties page 0
await vm.run((id) => ({
  module: new URL("./api_guest.js", import.meta.url), // compiled from examples/api_guest.ts
  args: { gpa: GPA + (1 + 16 * id) * 4096, pages: 16 },
}));
await vm.waitPasses(1); // both guests have written their pages
const bitmap = vm.getDirtyLog(0);
const image = new Uint8Array(8 << 20); // the slot, as a migration target would receive it
copyDirtyPages(vm, 0, bitmap, image);
const now = vm.readGuest(GPA, 33 * 4096); // kvm_read_guest
const same = now.every((b, i) => b === image[i]);
let code = "";
try {
  vm.readGuest(0, 8); // no memslot there
} catch (e) {
  if (e instanceof KvmError) code = e.code; // "EFAULT"
}
await vm.stop();
console.log(JSON.stringify({ dirty: dirtyPages(bitmap).length, same, code }));
// {"dirty":33,"same":true,"code":"EFAULT"}

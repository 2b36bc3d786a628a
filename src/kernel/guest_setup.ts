/**
 * Puts a guest of src/kernel/guest_x86.ts into a kernel VM: the system slot (slot 0 at GPA 0:
 * GDT, TSS, page tables, shared variables, code), then per vCPU KVM_SET_CPUID2 (from
 * KVM_GET_SUPPORTED_CPUID), KVM_SET_SREGS (long mode, CPL3) and KVM_SET_REGS (the arguments).
 * UNTESTED against a kernel (no /dev/kvm where it was written).
 */
import { KVM_GET_SREGS, KVM_SET_CPUID2, KVM_SET_REGS, KVM_SET_SREGS, SIZEOF } from "./ioctl.js";
import { check } from "./libc.js";
import { buildSystemSlot, longModeRegs, R, setLongModeSregs, SYSTEM_BYTES, VARS_GPA } from "./guest_x86.js";
import type { KernelVm } from "./kernel_vm.js";

export const SYSTEM_SLOT = 0;

/** The system slot, made once per VM; returns the host view of its shared-variables page. */
export function setupSystemSlot(vm: KernelVm, code: Uint8Array, testBytes: number): DataView {
  const hva = vm.mmap(SYSTEM_BYTES);
  const mem = vm.hostBytes(hva, SYSTEM_BYTES);
  buildSystemSlot(mem, code, testBytes);
  vm.setUserMemoryRegion({
    slot: SYSTEM_SLOT,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: SYSTEM_BYTES,
    userspaceAddr: hva,
  });
  return new DataView(mem.buffer, mem.byteOffset + VARS_GPA, 4096);
}

/** One vCPU's CPUID, long-mode sregs and registers (args by register name). */
export function setupVcpu(vm: KernelVm, vcpuId: number, args: Partial<Record<keyof typeof R, bigint>>): void {
  const v = vm.vcpus.get(vcpuId) ?? vm.createVcpu(vcpuId);
  const libc = vm.dev.libc;
  check(libc, libc.ioctlBuf(v.fd, KVM_SET_CPUID2, vm.dev.supportedCpuid()), "KVM_SET_CPUID2");
  const sregs = new Uint8Array(SIZEOF.kvm_sregs);
  check(libc, libc.ioctlBuf(v.fd, KVM_GET_SREGS, sregs), "KVM_GET_SREGS");
  setLongModeSregs(sregs);
  check(libc, libc.ioctlBuf(v.fd, KVM_SET_SREGS, sregs), "KVM_SET_SREGS");
  check(libc, libc.ioctlBuf(v.fd, KVM_SET_REGS, longModeRegs(args)), "KVM_SET_REGS");
}

/**
 * Which hardware virtualization the host's KVM uses, from the module list: "pvm" (kvm_pvm),
 * "vmx" (kvm_intel), "svm" (kvm_amd), or "unknown". Recorded with kernel results.
 */
export function detectKvmFlavour(modules: string): "pvm" | "vmx" | "svm" | "unknown" {
  const has = (m: string): boolean => new RegExp(`^${m}\\s`, "m").test(modules);
  if (has("kvm_pvm")) return "pvm";
  if (has("kvm_intel")) return "vmx";
  if (has("kvm_amd")) return "svm";
  return "unknown";
}

/**
 * The kernel as an entry of the design registry, named `kernel`: registered only where
 * /dev/kvm can be opened read-write, so that `--wp all` and the listed designs stay the models
 * elsewhere. It has no model ops: a model Vm of it is refused with ENOSYS naming the backend.
 */
import { KvmError } from "../errors.js";
import { designBackend, isDesign, registerDesign } from "../mmu/design.js";
import { KVM_DEVICE, kvmDeviceProblem } from "./kvm_dev.js";

export const KERNEL_DESIGN = "kernel";

/**
 * Registers `kernel` when the device is usable. Returns null when registered (or already
 * there), else the reason it is not (KvmError ENODEV / EACCES naming the device).
 */
export function registerKernelDesign(devicePath: string = KVM_DEVICE): KvmError | null {
  if (isDesign(KERNEL_DESIGN) && designBackend(KERNEL_DESIGN) === "kernel") return null;
  const problem = kvmDeviceProblem(devicePath);
  if (problem !== null) return problem;
  registerDesign({
    name: KERNEL_DESIGN,
    kernel: `this host's KVM (${devicePath})`,
    description: "the real kernel through /dev/kvm (koffi): the anchor the models are compared with",
    backend: "kernel",
    mmu: () => {
      throw new KvmError(
        "ENOSYS",
        "wp: the kernel design has no model MMU; it runs through the kernel backend (src/kernel/), not Vm.create",
      );
    },
  });
  return null;
}

/**
 * A `--wp` list that names `kernel`: registers it, or throws why it cannot run here (ENODEV for
 * a missing device, EACCES for one not open read-write), naming the option and the device,
 * instead of the list's "not one of" (the design is simply absent where /dev/kvm is).
 */
export function requireKernelDesign(opt: string, list: string, devicePath: string = KVM_DEVICE): void {
  if (!list.split(",").some((s) => s.trim() === KERNEL_DESIGN)) return;
  const problem = registerKernelDesign(devicePath);
  if (problem !== null)
    throw new KvmError(problem.code, `${opt} ${KERNEL_DESIGN}: ${problem.message.replace(/^E\w+: /, "")}`, {
      cause: problem,
    });
}

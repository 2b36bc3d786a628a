/**
 * What the conformance suite runs its cases on: one interface over a model VM (the library's
 * Vm, any registered design) and over the kernel (KernelVm through /dev/kvm). Guest writes are
 * real vCPU writes on both: the model runs the writer module (conformance_guest.ts), the kernel
 * its x86 twin; after each round the vCPU is parked (halted, or at its OUT exit).
 */
import { Vm } from "../vm.js";
import { KvmError } from "../errors.js";
import type { MemoryRegion } from "../mem/set_memslot.js";
import { KernelVm } from "../kernel/kernel_vm.js";
import { KvmDevice, KvmDeviceOptions } from "../kernel/kvm_dev.js";
import { setupSystemSlot, setupVcpu } from "../kernel/guest_setup.js";
import { KVM_EXIT_IO } from "../kernel/ioctl.js";
import { listWriteCode, PASS_PORT, VAR, VARS_GPA } from "../kernel/guest_x86.js";
import type { WpName } from "../vm/create.js";

/** The ioctl surface a case uses; answers are KvmError codes (the kernel's errno for the kernel). */
export interface ConfVm {
  mmap(bytes: number): number;
  setUserMemoryRegion(m: MemoryRegion): void;
  createVcpu(id: number): void;
  /** KVM_GET_DIRTY_LOG; `words32`: an output buffer of that many 32-bit words. */
  getDirtyLog(slot: number, words32?: number): Uint32Array;
  clearDirtyLog(slot: number, firstPage: number, numPages: number, bitmap: Uint32Array): void;
  enableManualDirtyLogProtect(flags: number): void;
  enableDirtyRing(entries: number, opts?: { withBitmap?: boolean }): void;
  harvestDirtyRing(vcpuId: number): { slot: number; offset: number }[];
  resetDirtyRings(): number;
  /** vCPU 0 writes the first bytes of each gfn, then parks. */
  writePages(gfns: readonly number[]): Promise<void>;
  close(): Promise<void>;
}

export interface ConfTarget {
  readonly name: string;
  create(): Promise<ConfVm>;
}

const WRITER_URL = new URL("./conformance_guest.js", import.meta.url).href;

/** A model design through the public Vm API. */
export function modelTarget(wp: WpName): ConfTarget {
  return {
    name: wp,
    create: () => Promise.resolve(new ModelConfVm(Vm.create({ memory: 16 << 20, wp, maxVcpus: 2 }))),
  };
}

/**
 * The ioctls both VMs offer with the same signatures (the library's Vm and KernelVm): the cases
 * reach them unchanged, so a target adds only how its vCPU writes pages.
 */
interface IoctlVm {
  mmap(bytes: number): number;
  setUserMemoryRegion(m: MemoryRegion): void;
  createVcpu(id: number): unknown;
  getDirtyLog(slot: number, out?: Uint32Array): Uint32Array;
  clearDirtyLog(slot: number, firstPage: number, numPages: number, bitmap: Uint32Array): void;
  enableManualDirtyLogProtect(flags: number): void;
  enableDirtyRing(entries: number, opts?: { withBitmap?: boolean }): void;
  harvestDirtyRing(vcpuId: number): { slot: number; offset: number }[];
  resetDirtyRings(): number;
}

abstract class IoctlConfVm<V extends IoctlVm> implements ConfVm {
  constructor(protected readonly vm: V) {}
  mmap(bytes: number): number {
    return this.vm.mmap(bytes);
  }
  setUserMemoryRegion(m: MemoryRegion): void {
    this.vm.setUserMemoryRegion(m);
  }
  createVcpu(id: number): void {
    this.vm.createVcpu(id);
  }
  getDirtyLog(slot: number, words32?: number): Uint32Array {
    return this.vm.getDirtyLog(slot, words32 === undefined ? undefined : new Uint32Array(words32));
  }
  clearDirtyLog(slot: number, firstPage: number, numPages: number, bitmap: Uint32Array): void {
    this.vm.clearDirtyLog(slot, firstPage, numPages, bitmap);
  }
  enableManualDirtyLogProtect(flags: number): void {
    this.vm.enableManualDirtyLogProtect(flags);
  }
  enableDirtyRing(entries: number, opts?: { withBitmap?: boolean }): void {
    this.vm.enableDirtyRing(entries, opts);
  }
  harvestDirtyRing(vcpuId: number): { slot: number; offset: number }[] {
    return this.vm.harvestDirtyRing(vcpuId);
  }
  resetDirtyRings(): number {
    return this.vm.resetDirtyRings();
  }
  abstract writePages(gfns: readonly number[]): Promise<void>;
  abstract close(): Promise<void>;
}

class ModelConfVm extends IoctlConfVm<Vm> {
  private readonly w = new Int32Array(new SharedArrayBuffer(4 * 1024));
  private running = false;
  async writePages(gfns: readonly number[]): Promise<void> {
    if (!this.running) {
      if (!this.vm.vcpuIds.includes(0)) this.vm.createVcpu(0);
      await this.vm.run(() => ({ module: WRITER_URL, args: { sab: this.w.buffer } }));
      this.running = true;
    }
    const w = this.w;
    w[1] = gfns.length;
    gfns.forEach((g, i) => (w[2 + i] = g));
    const round = Atomics.add(w, 0, 1) + 1;
    Atomics.notify(w, 0);
    await this.vm.waitPasses(round, { timeoutMs: 20_000 });
  }
  async close(): Promise<void> {
    if (this.running) await this.vm.stop();
  }
}

/** The kernel through /dev/kvm (one device fd for the whole suite). */
export async function kernelTarget(o: KvmDeviceOptions = {}): Promise<ConfTarget & { close(): void }> {
  const dev = await KvmDevice.open(o);
  return {
    name: "kernel",
    create: () => Promise.resolve(new KernelConfVm(KernelVm.create(dev))),
    close: () => dev.close(),
  };
}

class KernelConfVm extends IoctlConfVm<KernelVm> {
  private vars: DataView | null = null;
  private round = 0;
  writePages(gfns: readonly number[]): Promise<void> {
    if (this.vars === null) {
      this.vars = setupSystemSlot(this.vm, listWriteCode(), 1 << 30);
      setupVcpu(this.vm, 0, { r8: BigInt(VARS_GPA) });
    }
    const v = this.vars;
    v.setBigUint64(VAR.iteration, BigInt(++this.round), true);
    v.setBigUint64(VAR.list_count, BigInt(gfns.length), true);
    gfns.forEach((g, i) => v.setBigUint64(VAR.list + 8 * i, BigInt(g) * 4096n, true));
    const exit = this.vm.runVcpu(0);
    if (exit.reason !== KVM_EXIT_IO || exit.port !== PASS_PORT)
      throw new KvmError(
        "EIO",
        `KVM_RUN: exit ${exit.reason} (port 0x${exit.port.toString(16)}), not the pass-done OUT`,
      );
    return Promise.resolve();
  }
  close(): Promise<void> {
    this.vm.close();
    return Promise.resolve();
  }
}

/**
 * dirty_log_perf_test on the real kernel: memstress guests (src/kernel/guest_x86.ts) on one
 * worker per vCPU (vcpu_worker.ts), the same phases as the models' dirty-log-perf (populate,
 * enable logging, then per iteration: dirty memory, GET, CLEAR or ring harvest + reset, with
 * the vCPUs parked), and the kernel's own statistics from KVM_GET_STATS_FD at the end.
 *
 * A KernelPerfSession is one VM kept across iterations, so that `kvmmu dirty-log-perf --wp
 * ...,kernel` alternates it with the models' VMs iteration by iteration
 * (src/bench/dirty_log_perf_kernel.ts); kernelDirtyLogPerf runs one alone.
 *
 * UNTESTED against a kernel: written on machines without /dev/kvm.
 */
import { Worker } from "node:worker_threads";
import { readFileSync } from "node:fs";
import { KVM_MEM_LOG_DIRTY_PAGES } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { KvmDevice, KvmDeviceOptions } from "./kvm_dev.js";
import { KernelRegion, KernelVm } from "./kernel_vm.js";
import { memstressCode, TEST_GPA } from "./guest_x86.js";
import { detectKvmFlavour, setupSystemSlot, setupVcpu } from "./guest_setup.js";
import { CTL_GO, CTL_PASS0, CTL_RING_FULL, VcpuWorkerData } from "./vcpu_worker.js";

export interface KernelPerfOptions extends KvmDeviceOptions {
  vcpus: number;
  bytesPerVcpu: number;
  iterations: number;
  /** "get": GET only (-g); "clear": manual protect with INITIALLY_SET, GET + CLEAR; "ring". */
  log: "get" | "clear" | "ring";
  ringEntries?: number;
}

export interface KernelPerfIteration {
  dirtyMemoryNs: number;
  /** GET's ioctl alone; with a ring, the harvest (userspace) and the reset (ioctl) together. */
  getNs: number;
  /** Manual protect: CLEAR's ioctl alone. */
  clearNs: number;
  /** Dirty ring: the harvest and KVM_RESET_DIRTY_RINGS apart (getNs is their sum). */
  ringHarvestNs: number;
  ringResetNs: number;
  dirtyPages: number;
  /** Guest writes of the pass (memstress writes each page once). */
  writes: number;
}

export interface KernelPerfResult {
  populateNs: number;
  enableNs: number;
  iterations: KernelPerfIteration[];
  ringFullExits: number;
  stats: Record<string, number>;
}

const SLOT = 1;
const now = (): number => Number(process.hrtime.bigint());

function popcount(b: Uint32Array): number {
  let n = 0;
  for (let x of b) for (; x !== 0; x &= x - 1) n++;
  return n;
}

/** One KVM_RUN worker per vCPU, each as the promise of its exit; a worker's error lands in `failed`. */
function spawnVcpuWorkers(
  vm: KernelVm,
  ctl: Int32Array<SharedArrayBuffer>,
  failed: string[],
): Promise<unknown>[] {
  const url = new URL("./vcpu_worker.js", import.meta.url);
  const mmapSize = vm.dev.vcpuMmapSize();
  return [...vm.vcpus].map(([id, v]) => {
    const d: VcpuWorkerData = { id, fd: v.fd, mmapSize, ctl: ctl.buffer };
    const w = new Worker(url, { workerData: { kernelVcpu: d } });
    w.on("message", (m: { message: string }) => failed.push(m.message));
    w.on("error", (e) => failed.push(e.message));
    // Taken now: a worker that exits early (its error) must not leave close() waiting.
    return new Promise((r) => w.once("exit", r));
  });
}

/** Which KVM this host runs (PVM, VMX, SVM), from /proc/modules; "unknown" where unreadable. */
export function kvmFlavour(): string {
  try {
    return detectKvmFlavour(readFileSync("/proc/modules", "utf8"));
  } catch {
    return "unknown";
  }
}

/** One kernel VM running memstress, kept across iterations; close() ends it. */
export class KernelPerfSession {
  /** Each vCPU worker's exit. */
  private readonly exits: Promise<unknown>[] = [];
  private readonly failed: string[] = [];
  private readonly ctl: Int32Array<SharedArrayBuffer>;
  private readonly region: KernelRegion;
  private pass = 0;
  private bitmap: Uint32Array | null = null;
  populateNs = 0;
  enableNs = 0;

  private constructor(
    readonly o: KernelPerfOptions,
    readonly dev: KvmDevice,
    readonly vm: KernelVm,
  ) {
    this.ctl = new Int32Array(new SharedArrayBuffer(4 * (CTL_PASS0 + o.vcpus)));
    const total = o.bytesPerVcpu * o.vcpus;
    this.region = { slot: SLOT, flags: 0, guestPhysAddr: TEST_GPA, memorySize: total, userspaceAddr: 0 };
  }

  /** Opens /dev/kvm, builds the VM and its vCPUs, runs the populate pass, enables logging. */
  static async open(o: KernelPerfOptions): Promise<KernelPerfSession> {
    const dev = await KvmDevice.open(o);
    let s: KernelPerfSession | null = null;
    try {
      s = new KernelPerfSession(o, dev, KernelVm.create(dev));
      await s.build();
      return s;
    } catch (e) {
      if (s) await s.close();
      else dev.close();
      throw e;
    }
  }

  private async build(): Promise<void> {
    const { o, vm } = this;
    const pages = o.bytesPerVcpu / 4096;
    const total = o.bytesPerVcpu * o.vcpus;
    if (o.log === "clear") vm.enableManualDirtyLogProtect(3);
    if (o.log === "ring") vm.enableDirtyRing(o.ringEntries ?? 65536);
    setupSystemSlot(vm, memstressCode(), total);
    this.region.userspaceAddr = vm.mmap(total);
    vm.setUserMemoryRegion(this.region);
    for (let i = 0; i < o.vcpus; i++)
      setupVcpu(vm, i, {
        rdi: BigInt(TEST_GPA + i * o.bytesPerVcpu),
        rsi: BigInt(pages),
        rax: 0x0123456789abcdefn,
      });
    this.exits.push(...spawnVcpuWorkers(vm, this.ctl, this.failed));
    this.populateNs = await this.runPass();
    const t = now();
    vm.setUserMemoryRegion({ ...this.region, flags: KVM_MEM_LOG_DIRTY_PAGES });
    this.enableNs = now() - t;
  }

  /** Every vCPU runs one pass (the host waits, servicing the ring meanwhile); its time in ns. */
  private async runPass(service?: () => void): Promise<number> {
    const it = ++this.pass;
    const ctl = this.ctl;
    const t0 = now();
    Atomics.store(ctl, CTL_GO, it);
    Atomics.notify(ctl, CTL_GO);
    for (let i = 0; i < this.o.vcpus; i++)
      while (Atomics.load(ctl, CTL_PASS0 + i) !== it) {
        if (this.failed.length > 0) throw new KvmError("EIO", `kernel vCPU: ${this.failed[0]}`);
        service?.();
        await new Promise((r) => setTimeout(r, 0));
      }
    return now() - t0;
  }

  /** Harvests every vCPU's ring and resets them: entries harvested, and the two times. */
  private harvestRing(): { pages: number; harvestNs: number; resetNs: number } {
    const t0 = now();
    let pages = 0;
    for (const id of this.vm.vcpus.keys()) pages += this.vm.harvestDirtyRing(id).length;
    const t1 = now();
    this.vm.resetDirtyRings();
    return { pages, harvestNs: t1 - t0, resetNs: now() - t1 };
  }

  /** Dirty ring: what the pass's collections harvested, added to the harvest that follows it. */
  private pending = { pages: 0, harvestNs: 0, resetNs: 0 };

  /** One pass of every vCPU, parked after it (a full ring is collected meanwhile): its ns. */
  async dirtyMemory(): Promise<number> {
    this.pending = { pages: 0, harvestNs: 0, resetNs: 0 };
    const collect = (): void => {
      const h = this.harvestRing();
      const p = this.pending;
      this.pending = {
        pages: p.pages + h.pages,
        harvestNs: p.harvestNs + h.harvestNs,
        resetNs: p.resetNs + h.resetNs,
      };
    };
    return this.runPass(this.o.log === "ring" ? collect : undefined);
  }

  /** The harvest after a pass, each call timed alone (GET, CLEAR; ring harvest, reset). */
  harvest(): Omit<KernelPerfIteration, "dirtyMemoryNs"> {
    const { o, vm } = this;
    const total = o.bytesPerVcpu * o.vcpus;
    const writes = total / 4096;
    if (o.log === "ring") {
      const h = this.harvestRing();
      const p = this.pending;
      const ringHarvestNs = p.harvestNs + h.harvestNs;
      const ringResetNs = p.resetNs + h.resetNs;
      const dirtyPages = p.pages + h.pages;
      return {
        getNs: ringHarvestNs + ringResetNs,
        clearNs: 0,
        ringHarvestNs,
        ringResetNs,
        dirtyPages,
        writes,
      };
    }
    this.bitmap = vm.getDirtyLog(SLOT, this.bitmap ?? undefined);
    const getNs = vm.lastIoctlNs;
    const dirtyPages = popcount(this.bitmap);
    let clearNs = 0;
    if (o.log === "clear") {
      vm.clearDirtyLog(SLOT, 0, total / 4096, this.bitmap);
      clearNs = vm.lastIoctlNs;
    }
    return { getNs, clearNs, ringHarvestNs: 0, ringResetNs: 0, dirtyPages, writes };
  }

  /** One iteration: a pass with the vCPUs parked after it, then the harvest. */
  async iterate(): Promise<KernelPerfIteration> {
    const dirtyMemoryNs = await this.dirtyMemory();
    return { dirtyMemoryNs, ...this.harvest() };
  }

  /** Clears KVM_MEM_LOG_DIRTY_PAGES (the vCPUs parked): its time in ns. */
  disableLogging(): number {
    const t = now();
    this.vm.setUserMemoryRegion({ ...this.region, flags: 0 });
    return now() - t;
  }

  ringFullExits(): number {
    return Atomics.load(this.ctl, CTL_RING_FULL);
  }

  /** Stops the workers (GO = -1 at their next wait), closes the VM and the device. */
  async close(): Promise<void> {
    Atomics.store(this.ctl, CTL_GO, -1);
    Atomics.notify(this.ctl, CTL_GO);
    await Promise.all(this.exits);
    this.vm.close();
    this.dev.close();
  }
}

/** The whole test on its own VM: populate, enable, `iterations` iterations, the kernel's stats. */
export async function kernelDirtyLogPerf(o: KernelPerfOptions): Promise<KernelPerfResult> {
  const s = await KernelPerfSession.open(o);
  try {
    const iterations: KernelPerfIteration[] = [];
    for (let it = 1; it <= o.iterations; it++) iterations.push(await s.iterate());
    return {
      populateNs: s.populateNs,
      enableNs: s.enableNs,
      iterations,
      ringFullExits: s.ringFullExits(),
      stats: s.vm.stats(),
    };
  } finally {
    await s.close();
  }
}

/**
 * dirty_log_perf_test on the real kernel: memstress guests (src/kernel/guest_x86.ts) on one
 * worker per vCPU (vcpu_worker.ts), the same phases as the models' dirty-log-perf (populate,
 * enable logging, then per iteration: dirty memory, GET, CLEAR or ring harvest + reset, with
 * the vCPUs parked), and the kernel's own statistics from KVM_GET_STATS_FD at the end.
 *
 * UNTESTED: written on a machine without /dev/kvm; not yet wired into `kvmmu dirty-log-perf`
 * (whose results schema this change does not touch). Call it from a script where KVM exists.
 */
import { Worker } from "node:worker_threads";
import { KVM_MEM_LOG_DIRTY_PAGES } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { KvmDevice, KvmDeviceOptions } from "./kvm_dev.js";
import { KernelVm } from "./kernel_vm.js";
import { memstressCode, TEST_GPA } from "./guest_x86.js";
import { setupSystemSlot, setupVcpu } from "./guest_setup.js";
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
  getNs: number;
  clearNs: number;
  dirtyPages: number;
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

/** One KVM_RUN worker per vCPU; a worker's error lands in `failed`. */
function spawnVcpuWorkers(vm: KernelVm, ctl: Int32Array<SharedArrayBuffer>, failed: string[]): Worker[] {
  const url = new URL("./vcpu_worker.js", import.meta.url);
  const mmapSize = vm.dev.vcpuMmapSize();
  return [...vm.vcpus].map(([id, v]) => {
    const d: VcpuWorkerData = { id, fd: v.fd, mmapSize, ctl: ctl.buffer };
    const w = new Worker(url, { workerData: { kernelVcpu: d } });
    w.on("message", (m: { message: string }) => failed.push(m.message));
    w.on("error", (e) => failed.push(e.message));
    return w;
  });
}

export async function kernelDirtyLogPerf(o: KernelPerfOptions): Promise<KernelPerfResult> {
  const dev = await KvmDevice.open(o);
  const vm = KernelVm.create(dev);
  const ctl = new Int32Array(new SharedArrayBuffer(4 * (CTL_PASS0 + o.vcpus)));
  const workers: Worker[] = [];
  const failed: string[] = [];
  try {
    const pages = o.bytesPerVcpu / 4096;
    const total = o.bytesPerVcpu * o.vcpus;
    if (o.log === "clear") vm.enableManualDirtyLogProtect(3);
    if (o.log === "ring") vm.enableDirtyRing(o.ringEntries ?? 65536);
    setupSystemSlot(vm, memstressCode(), total);
    const hva = vm.mmap(total);
    const region = { slot: SLOT, flags: 0, guestPhysAddr: TEST_GPA, memorySize: total, userspaceAddr: hva };
    vm.setUserMemoryRegion(region);
    for (let i = 0; i < o.vcpus; i++)
      setupVcpu(vm, i, {
        rdi: BigInt(TEST_GPA + i * o.bytesPerVcpu),
        rsi: BigInt(pages),
        rax: 0x0123456789abcdefn,
      });
    workers.push(...spawnVcpuWorkers(vm, ctl, failed));
    const pass = async (it: number, service?: () => void): Promise<number> => {
      const t0 = now();
      Atomics.store(ctl, CTL_GO, it);
      Atomics.notify(ctl, CTL_GO);
      for (let i = 0; i < o.vcpus; i++)
        while (Atomics.load(ctl, CTL_PASS0 + i) !== it) {
          if (failed.length > 0) throw new KvmError("EIO", `kernel vCPU: ${failed[0]}`);
          service?.();
          await new Promise((r) => setTimeout(r, 0));
        }
      return now() - t0;
    };
    const harvest = (): number => {
      let n = 0;
      for (const id of vm.vcpus.keys()) n += vm.harvestDirtyRing(id).length;
      vm.resetDirtyRings();
      return n;
    };
    const populateNs = await pass(1);
    let t = now();
    vm.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES });
    const enableNs = now() - t;
    const iterations: KernelPerfIteration[] = [];
    for (let it = 1; it <= o.iterations; it++) {
      let ringPages = 0;
      const dirtyMemoryNs = await pass(it + 1, o.log === "ring" ? () => (ringPages += harvest()) : undefined);
      t = now();
      let dirtyPages: number;
      let bitmap: Uint32Array | null = null;
      if (o.log === "ring") dirtyPages = ringPages + harvest();
      else {
        bitmap = vm.getDirtyLog(SLOT);
        dirtyPages = popcount(bitmap);
      }
      const getNs = now() - t;
      t = now();
      if (o.log === "clear" && bitmap !== null) vm.clearDirtyLog(SLOT, 0, total / 4096, bitmap);
      iterations.push({ dirtyMemoryNs, getNs, clearNs: o.log === "clear" ? now() - t : 0, dirtyPages });
    }
    return {
      populateNs,
      enableNs,
      iterations,
      ringFullExits: Atomics.load(ctl, CTL_RING_FULL),
      stats: vm.stats(),
    };
  } finally {
    Atomics.store(ctl, CTL_GO, -1);
    Atomics.notify(ctl, CTL_GO);
    await Promise.all(workers.map((w) => new Promise((r) => w.once("exit", r))));
    vm.close();
    dev.close();
  }
}

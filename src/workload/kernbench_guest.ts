/**
 * The kernbench guest: a small "kernel" running several processes on each vCPU, each with its
 * own address space, doing a fixed amount of work (jobs), the way a parallel kernel build keeps
 * a guest MMU busy:
 *
 *  - processes are created (exec: a new PML4 sharing the kernel's tables, then mappings) and
 *    destroyed (exit: the user part of the address space is torn down and its table pages go back
 *    to the pool, where the next exec reuses and zeroes them) every `jobsPerProcess` jobs;
 *  - every process maps the same "file cache" (shared libraries: the same gfns, read-only) at
 *    LIB_VPN, a window of it a second time at ALIAS_VPN (two gvas, one gfn), and a shared writable
 *    file at SHARED_VPN: the same gfns in every address space of every vCPU;
 *  - a job switches to its process (MOV CR3), reads library pages through both aliases and
 *    checks their contents, maps `heapPages` anonymous pages from the vCPU's page pool, writes
 *    and reads them back, computes, writes its words of some shared-file pages, then unmaps the
 *    heap (INVLPG) and frees the pages: page-table churn on every job.
 *
 * Library pages hold a pattern the host wrote before the run (word 0 = gfn ^ LIB_MAGIC); a
 * mismatch means a wrong translation and stops the vCPU with an error.
 *
 * Host <-> guest control block (Int32Array over `ctl`): see KB_*.
 */
import type { GuestContext } from "../guest/context.js";
import { GuestKernel, GuestPagingArgs, MAP_RO, MAP_RW } from "./guest_paging.js";
import { ParkMiller } from "./rng.js";

export const KB_GO = 0; // host -> guests: 1 = start the jobs
export const KB_BOOTED = 1; // guests -> host: vCPUs that finished booting
export const KB_DONE = 2; // guests -> host: vCPUs that finished their jobs
export const KB_VCPU_BASE = 4; // per vCPU: jobs done
/** Float64 words (index into a Float64Array over the same buffer) of each vCPU's finish time. */
export function kbFinishIndex(vcpus: number, id: number): number {
  return Math.ceil((KB_VCPU_BASE + vcpus) / 2) + id;
}
export function kbCtlBytes(vcpus: number): number {
  return (kbFinishIndex(vcpus, vcpus) + 1) * 8;
}

export const LIB_MAGIC = 0x5a5a1234;
export const LIB_VPN = 1 << 27; // PML4 index 1
export const ALIAS_VPN = LIB_VPN + (1 << 20);
export const SHARED_VPN = LIB_VPN + (2 << 20);
export const HEAP_VPN = LIB_VPN + (3 << 20);
/** Pages of the library window mapped a second time. */
export const ALIAS_WINDOW = 64;

export interface KernbenchGuestArgs {
  kind: "kernbench";
  ctl: SharedArrayBuffer;
  vcpus: number;
  paging: GuestPagingArgs;
  libGfn: number;
  libPages: number;
  sharedGfn: number;
  sharedPages: number;
  /** This vCPU's pool of anonymous pages. */
  anonGfn: number;
  anonPages: number;
  processes: number;
  jobs: number;
  jobsPerProcess: number;
  heapPages: number;
  /** Library pages read per job (each through both aliases where it can). */
  libReads: number;
  /** Shared-file pages written per job. */
  sharedWrites: number;
  /** Iterations of the compute loop per job. */
  compute: number;
  seed: number;
}

interface Proc {
  pml4: number;
  jobs: number;
  aliasOff: number;
}

const PARK_POLL_MS = 5;

/** Parked: halted (outside guest mode) until ctl[word] changes; pause/stop at safe points. */
function park(ctx: GuestContext, ctl: Int32Array, word: number, value: number): void {
  while (Atomics.load(ctl, word) === value) ctx.halt(ctl, word, value, PARK_POLL_MS);
}

/** One vCPU's kernel: its page tables, its processes and its pool of anonymous pages. */
interface KbVcpu {
  ctx: GuestContext;
  a: KernbenchGuestArgs;
  rng: ParkMiller;
  k: GuestKernel;
  /** The kernel's own address space (init_mm), used while a process is torn down. */
  idle: number;
  procs: (Proc | null)[];
  freeAnon: number[];
  /** The current job's heap pages. */
  heap: number[];
}

/** exec: a new address space with the libraries, their alias window and the shared file. */
function spawn(c: KbVcpu): Proc {
  const { k, a } = c;
  const pml4 = k.newAddressSpace();
  k.mapRange(pml4, LIB_VPN, a.libGfn, a.libPages, MAP_RO);
  const aliasOff = c.rng.next() % Math.max(1, a.libPages - ALIAS_WINDOW);
  k.mapRange(pml4, ALIAS_VPN, a.libGfn + aliasOff, Math.min(ALIAS_WINDOW, a.libPages), MAP_RO);
  k.mapRange(pml4, SHARED_VPN, a.sharedGfn, a.sharedPages, MAP_RW);
  return { pml4, jobs: 0, aliasOff };
}

/** The process of job's slot, switched to: exit of one that did its jobs, exec of a new one. */
function switchToProcess(c: KbVcpu, job: number): Proc {
  const slot = job % c.a.processes;
  let p = c.procs[slot];
  if (p !== null && p.jobs >= c.a.jobsPerProcess) {
    c.ctx.loadCr3(c.idle);
    c.k.destroyAddressSpace(p.pml4);
    p = null;
  }
  if (p === null) {
    c.ctx.loadCr3(c.idle);
    p = c.procs[slot] = spawn(c);
  }
  c.ctx.loadCr3(p.pml4);
  p.jobs++;
  return p;
}

/** Reads the libraries, through both mappings where the page is in the alias window. */
function readLibraries(c: KbVcpu, p: Proc): number {
  const { ctx, a } = c;
  let sink = 0;
  for (let i = 0; i < a.libReads; i++) {
    const page = c.rng.next() % a.libPages;
    const x = ctx.read32w(LIB_VPN + page, 0);
    if (x !== ((a.libGfn + page) ^ LIB_MAGIC))
      throw new Error(`kernbench: library page ${page} reads 0x${(x >>> 0).toString(16)}`);
    const w = page - p.aliasOff;
    if (w >= 0 && w < ALIAS_WINDOW && ctx.read32w(ALIAS_VPN + w, 0) !== x)
      throw new Error(`kernbench: alias of library page ${page} differs`);
    sink += x;
  }
  return sink;
}

/** The heap: fresh anonymous pages mapped, written and read back. */
function fillHeap(c: KbVcpu, p: Proc, job: number): void {
  const { ctx, a, heap } = c;
  for (let i = 0; i < a.heapPages; i++) {
    const g = c.freeAnon.pop();
    if (g === undefined) throw new Error("kernbench: anonymous page pool exhausted");
    heap.push(g);
    c.k.map(p.pml4, HEAP_VPN + i, g, MAP_RW);
    ctx.write64w(HEAP_VPN + i, (job & 255) * 2, job, g);
  }
  for (let i = 0; i < a.heapPages; i++) {
    if (ctx.read32w(HEAP_VPN + i, (job & 255) * 2 + 1) !== heap[i])
      throw new Error(`kernbench: heap page ${i} lost its data`);
  }
}

/** Unmaps the heap (INVLPG) and frees its pages. */
function freeHeap(c: KbVcpu, p: Proc): void {
  for (let i = 0; i < c.a.heapPages; i++) {
    c.k.unmap(p.pml4, HEAP_VPN + i);
    c.freeAnon.push(c.heap[i]);
  }
  c.heap.length = 0;
}

/** One job; returns what keeps its reads and computation alive. */
function runJob(c: KbVcpu, job: number): number {
  const { ctx, a } = c;
  const p = switchToProcess(c, job);
  let sink = readLibraries(c, p);
  fillHeap(c, p, job);
  // Compute.
  let h = job ^ ctx.vcpuId;
  for (let i = 0; i < a.compute; i++) h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) + i;
  sink += h;
  // Output: this vCPU's words of some shared-file pages.
  for (let i = 0; i < a.sharedWrites; i++) {
    const page = c.rng.next() % a.sharedPages;
    ctx.write64w(SHARED_VPN + page, (ctx.vcpuId & 255) * 2, job, h);
  }
  freeHeap(c, p);
  ctx.writes++;
  return sink;
}

export function kernbench_guest(ctx: GuestContext, a: KernbenchGuestArgs): never {
  const ctl = new Int32Array(a.ctl);
  const times = new Float64Array(a.ctl);
  const rng = new ParkMiller(a.seed * 977 + ctx.vcpuId + 1);
  const k = new GuestKernel(ctx, a.paging);
  // Boot: the kernel's own address space (init_mm), used while a process is torn down.
  const idle = k.newAddressSpace();
  ctx.loadCr3(idle);
  const freeAnon: number[] = [];
  for (let i = a.anonPages - 1; i >= 0; i--) freeAnon.push(a.anonGfn + i);
  const procs: (Proc | null)[] = new Array<Proc | null>(a.processes).fill(null);
  const c: KbVcpu = { ctx, a, rng, k, idle, procs, freeAnon, heap: [] };

  Atomics.add(ctl, KB_BOOTED, 1);
  Atomics.notify(ctl, KB_BOOTED);
  park(ctx, ctl, KB_GO, 0);

  const me = KB_VCPU_BASE + ctx.vcpuId;
  let sink = 0;
  for (let job = 0; job < a.jobs; job++) {
    sink += runJob(c, job);
    Atomics.store(ctl, me, job + 1);
  }
  times[kbFinishIndex(a.vcpus, ctx.vcpuId)] = performance.timeOrigin + performance.now();
  ctx.publishStats();
  Atomics.add(ctl, KB_DONE, 1);
  Atomics.notify(ctl, KB_DONE);
  if (sink === 0.5) Atomics.store(ctl, me, -1);
  for (;;) park(ctx, ctl, KB_DONE, Atomics.load(ctl, KB_DONE));
}

/**
 * The VM a migration moves: one dirty-logged memslot at gpa 0 holding the migration-test guest
 * (state page, then one region per vCPU), and the checks made on it (page hashes, invariant).
 */
import { createHash } from "node:crypto";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { Vm, MmuModeName } from "../vm.js";
import type { DesignName } from "../mmu/design.js";
import { MIG_CTL, invariantOf, InvariantResult, MigrationGuestArgs } from "./guest.js";

export const GUEST_MODULE = new URL("./guest.js", import.meta.url).href;

/** Where the guest lives; sent in the config section, so both sides build the same VM. */
export interface GuestLayout {
  /** The one memslot: slot 0 at gpa 0. */
  memoryBytes: number;
  vcpus: number;
  stateGpa: number;
  regionGpa: number;
  pagesPerVcpu: number;
  /** The workload (guest.ts): pages per vCPU rewritten after the fill pass (pagesPerVcpu: all). */
  workingPages: number;
  /** Pages per second per vCPU the rewriting may dirty (0: unbounded). */
  dirtyRate: number;
}

/** The migration workload's knobs: `--working-set` and `--dirty-rate`, whole-guest figures. */
export interface GuestWorkload {
  /** Bytes the guest rewrites after filling all its memory (default: all of it). */
  workingSetBytes?: number;
  /** Bytes per second the guest may dirty, all vCPUs together (default 0: unbounded). */
  dirtyRateBytes?: number;
}

/** Host memory beyond the slot: spare frames the engine may migrate pages into. */
const HOST_SPARE = 2 << 20;
export const MAX_GUEST_MEMORY = 4 * 2 ** 30;

export function layoutFor(memoryBytes: number, vcpus: number, wl: GuestWorkload = {}): GuestLayout {
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes % PAGE_SIZE !== 0 || memoryBytes <= 0)
    throw einval("memory", `must be a positive multiple of ${PAGE_SIZE} bytes, got ${String(memoryBytes)}`);
  if (memoryBytes > MAX_GUEST_MEMORY) throw einval("memory", `at most ${MAX_GUEST_MEMORY} bytes`);
  if (!Number.isSafeInteger(vcpus) || vcpus < 1 || vcpus > 64) throw einval("vcpus", "must be 1..64");
  const pagesPerVcpu = Math.floor((memoryBytes / PAGE_SIZE - 1) / vcpus);
  if (pagesPerVcpu < 1) throw einval("memory", `too small for ${vcpus} vCPUs`);
  let workingPages = pagesPerVcpu;
  const ws = wl.workingSetBytes;
  if (ws !== undefined) {
    if (!Number.isSafeInteger(ws) || ws < PAGE_SIZE || ws % PAGE_SIZE !== 0)
      throw einval(
        "workingSet",
        `must be a multiple of ${PAGE_SIZE} bytes, at least one page, got ${String(ws)}`,
      );
    if (ws > memoryBytes - PAGE_SIZE)
      throw einval(
        "workingSet",
        `${ws} bytes is more than the guest's ${memoryBytes - PAGE_SIZE} bytes of regions`,
      );
    workingPages = Math.min(pagesPerVcpu, Math.max(1, Math.floor(ws / PAGE_SIZE / vcpus)));
  }
  const dr = wl.dirtyRateBytes ?? 0;
  if (typeof dr !== "number" || !Number.isFinite(dr) || dr < 0)
    throw einval("dirtyRate", `must be a number of bytes per second >= 0, got ${String(dr)}`);
  if (dr > 0 && dr < PAGE_SIZE)
    throw einval("dirtyRate", `must be 0 (unbounded) or at least one page (${PAGE_SIZE} bytes) per second`);
  const dirtyRate = dr / PAGE_SIZE / vcpus;
  return { memoryBytes, vcpus, stateGpa: 0, regionGpa: PAGE_SIZE, pagesPerVcpu, workingPages, dirtyRate };
}

/** Checks a layout that came from a peer (as untrusted input). */
export function checkLayout(l: unknown, maxMemory: number): GuestLayout {
  const o = (typeof l === "object" && l !== null ? l : {}) as Record<string, unknown>;
  const int = (k: string): number => {
    const x = o[k];
    if (typeof x !== "number" || !Number.isSafeInteger(x) || x < 0)
      throw einval(`config.${k}`, `bad value ${String(x)}`);
    return x;
  };
  const memoryBytes = int("memoryBytes");
  if (memoryBytes > maxMemory)
    throw einval(
      "config.memoryBytes",
      `${memoryBytes} bytes is over this destination's ${maxMemory}-byte limit`,
    );
  const want = layoutFor(memoryBytes, int("vcpus"));
  for (const k of ["stateGpa", "regionGpa", "pagesPerVcpu"] as const)
    if (int(k) !== want[k])
      throw einval(`config.${k}`, `${String(o[k])} does not match the layout (${want[k]})`);
  // The workload (absent from an older source: the whole guest, unbounded).
  if (o["workingPages"] !== undefined) {
    const w = int("workingPages");
    if (w < 1 || w > want.pagesPerVcpu)
      throw einval("config.workingPages", `${w} is not in 1..${want.pagesPerVcpu}`);
    want.workingPages = w;
  }
  if (o["dirtyRate"] !== undefined) {
    const r = o["dirtyRate"];
    if (typeof r !== "number" || !Number.isFinite(r) || r < 0)
      throw einval("config.dirtyRate", `bad value ${JSON.stringify(r)}`);
    want.dirtyRate = r;
  }
  return want;
}

export interface GuestVm {
  vm: Vm;
  layout: GuestLayout;
  /** The guest's control words (throttle); the host writes them. */
  ctl: Int32Array;
}

export function createGuestVm(
  layout: GuestLayout,
  o: {
    /** A registered design (src/mmu/design.ts). */
    wp: DesignName;
    mode?: MmuModeName;
    logged: boolean;
    prepare?: (vm: Vm) => void;
    /** A post-copy destination: no huge host pages (as QEMU's MADV_NOHUGEPAGE), slot 0 under userfaultfd. */
    postcopy?: boolean;
  },
): GuestVm {
  const vm = Vm.create({
    memory: layout.memoryBytes + HOST_SPARE,
    // Vm.create checks the name against the designs it runs.
    wp: o.wp,
    mode: o.mode ?? "tdp",
    maxVcpus: Math.max(layout.vcpus, 1),
  });
  // The log interface is chosen before the logged slot and the vCPUs exist (the ring must be).
  o.prepare?.(vm);
  // A 2 MiB mapping would let one fault map pages that have not arrived.
  const hva = vm.mmap(layout.memoryBytes, { thp: !o.postcopy });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: o.logged ? KVM_MEM_LOG_DIRTY_PAGES : 0,
    guestPhysAddr: 0,
    memorySize: layout.memoryBytes,
    userspaceAddr: hva,
  });
  if (o.postcopy) vm.userfaultRegister(0);
  for (let id = 0; id < layout.vcpus; id++) vm.createVcpu(id);
  return { vm, layout, ctl: new Int32Array(new SharedArrayBuffer(MIG_CTL.WORDS * 4)) };
}

/** Starts the migration-test guest on every vCPU. */
export async function runGuest(g: GuestVm): Promise<void> {
  const args: MigrationGuestArgs = {
    stateGpa: g.layout.stateGpa,
    regionGpa: g.layout.regionGpa,
    pages: g.layout.pagesPerVcpu,
    workingPages: g.layout.workingPages,
    dirtyRate: g.layout.dirtyRate,
    ctl: g.ctl.buffer as SharedArrayBuffer,
  };
  await g.vm.run(() => ({ module: GUEST_MODULE, args }));
}

/** Every vCPU's increment count, from the state page. */
export function guestCounts(g: GuestVm): number[] {
  const b = g.vm.readGuest(g.layout.stateGpa, 4 * g.layout.vcpus);
  return [...new Uint32Array(b.buffer, b.byteOffset, g.layout.vcpus)];
}

/** The invariant on a paused or stopped guest. */
export function checkInvariant(g: GuestVm): InvariantResult {
  const vm = g.vm;
  const page = new Int32Array(PAGE_SIZE / 4);
  return invariantOf(
    (gpa) => vm.readGuestPage(gpa, page)[0] & 255,
    (gpa) => new Uint32Array(vm.readGuest(gpa, 4).buffer)[0],
    {
      stateGpa: g.layout.stateGpa,
      regionGpa: g.layout.regionGpa,
      pages: g.layout.pagesPerVcpu,
      workingPages: g.layout.workingPages,
      vcpus: g.layout.vcpus,
    },
  );
}

/** SHA-256 of every page of the slot, concatenated (32 bytes per page, in gpa order). */
export function pageHashes(vm: Vm, layout: GuestLayout): Buffer {
  const pages = layout.memoryBytes / PAGE_SIZE;
  const out = Buffer.alloc(pages * 32);
  const buf = new Int32Array(PAGE_SIZE / 4);
  const bytes = new Uint8Array(buf.buffer);
  for (let p = 0; p < pages; p++) {
    vm.readGuestPage(p * PAGE_SIZE, buf);
    pageHashInto(bytes, out, p);
  }
  return out;
}

/** The SHA-256 of one page's bytes, into its 32-byte place (page p) of a per-page hash table. */
export function pageHashInto(bytes: Uint8Array, out: Buffer, p: number): void {
  createHash("sha256")
    .update(bytes)
    .digest()
    .copy(out, p * 32);
}

/**
 * The count by which every page the guest still rewrites has advanced since count `c`: the rest
 * of the fill pass (if any), then one more than the working set (the page at `next` included).
 */
export function stepsToAdvance(l: GuestLayout, c: number): number {
  return Math.max(c, l.pagesPerVcpu) + l.workingPages + 1;
}

/**
 * Waits until every vCPU is past its fill pass (`--working-set`: the guest first fills all its
 * memory); at once when the working set is the whole guest. EIO past `timeoutMs`.
 */
export async function waitFilled(g: GuestVm, timeoutMs = 60_000): Promise<void> {
  if (g.layout.workingPages >= g.layout.pagesPerVcpu) return;
  const end = Date.now() + timeoutMs;
  for (;;) {
    g.vm.throwIfFailed();
    if (guestCounts(g).every((c) => c >= g.layout.pagesPerVcpu)) return;
    if (Date.now() > end) throw new KvmError("EIO", `the guest did not fill its memory in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Lets the guest run until every vCPU has gone over its whole region once more (every page's
 * byte advanced), then pauses it and checks the invariant. Leaves the vCPUs paused.
 */
export async function runAndCheck(
  g: GuestVm,
  timeoutMs = 20_000,
  /** Called at each poll: the dirty ring's reap, so that a vCPU with a full ring goes on. */
  onPoll?: () => void,
): Promise<{ ok: boolean; before: number[]; after: number[]; problems: string[] }> {
  const before = guestCounts(g);
  const end = Date.now() + timeoutMs;
  const problems: string[] = [];
  for (;;) {
    g.vm.throwIfFailed();
    const now = guestCounts(g);
    if (now.every((c, i) => c >= stepsToAdvance(g.layout, before[i]))) break;
    if (Date.now() > end) {
      problems.push(
        `the guest did not advance every page in ${timeoutMs} ms (counts ${before.join(",")} -> ${now.join(",")})`,
      );
      break;
    }
    await new Promise((r) => setTimeout(r, 5));
    onPoll?.();
  }
  Atomics.notify(g.ctl, 1);
  await g.vm.pause();
  const inv = checkInvariant(g);
  return {
    ok: problems.length === 0 && inv.ok,
    before,
    after: inv.counts,
    problems: [...problems, ...inv.problems],
  };
}

/**
 * The VM a migration moves: one dirty-logged memslot at gpa 0 holding the migration-test guest
 * (state page, then one region per vCPU), and the checks made on it (page hashes, invariant).
 */
import { createHash } from "node:crypto";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../kvm_host.js";
import { einval } from "../errors.js";
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
}

/** Host memory beyond the slot: spare frames the engine may migrate pages into. */
const HOST_SPARE = 2 << 20;
export const MAX_GUEST_MEMORY = 4 * 2 ** 30;

export function layoutFor(memoryBytes: number, vcpus: number): GuestLayout {
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes % PAGE_SIZE !== 0 || memoryBytes <= 0)
    throw einval("memory", `must be a positive multiple of ${PAGE_SIZE} bytes, got ${String(memoryBytes)}`);
  if (memoryBytes > MAX_GUEST_MEMORY) throw einval("memory", `at most ${MAX_GUEST_MEMORY} bytes`);
  if (!Number.isSafeInteger(vcpus) || vcpus < 1 || vcpus > 64) throw einval("vcpus", "must be 1..64");
  const pagesPerVcpu = Math.floor((memoryBytes / PAGE_SIZE - 1) / vcpus);
  if (pagesPerVcpu < 1) throw einval("memory", `too small for ${vcpus} vCPUs`);
  return { memoryBytes, vcpus, stateGpa: 0, regionGpa: PAGE_SIZE, pagesPerVcpu };
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
    if (now.every((c, i) => c - before[i] >= g.layout.pagesPerVcpu + 1)) break;
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

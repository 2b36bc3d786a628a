/**
 * The conformance table: ioctl-level cases, each with the answer KVM gives (read from
 * virt/kvm/kvm_main.c and dirty_ring.c of current Linux, x86-64 with SMM, no PML-dependent
 * sizes): an errno name, "ok", "ok: N" for a count, or "bits ..." / "gfns ..." for the pages
 * a log reports. `intended` names a model answer that differs on purpose, and why
 * (docs/conformance.md lists them).
 */
import { KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY } from "../kvm_host.js";
import type { ConfVm } from "./conformance_targets.js";

const LOG = KVM_MEM_LOG_DIRTY_PAGES;
/** The test slots sit at 4 GiB (the kernel backend's guests keep below it for themselves). */
export const TEST_GFN = 2 ** 20;
const P = 4096;
/** 130 pages: not a multiple of 64, so every bitmap has a tail. */
export const NPAGES = 130;

export interface ConfCase {
  readonly name: string;
  readonly expected: string;
  /** A model answer that differs from KVM's on purpose, and why. */
  readonly intended?: { readonly answer: string; readonly why: string };
  run(t: ConfVm): Promise<string | void> | string | void;
}

/** Set bits of a bitmap as ranges: "bits 0-1,63,129" or "bits none". */
export function bits(b: Uint32Array): string {
  const set: number[] = [];
  for (let i = 0; i < b.length * 32; i++) if ((b[i >>> 5] >>> (i & 31)) & 1) set.push(i);
  return `bits ${ranges(set)}`;
}

function ranges(xs: readonly number[]): string {
  if (xs.length === 0) return "none";
  const out: string[] = [];
  let a = xs[0];
  let p = a;
  for (const x of [...xs.slice(1), NaN]) {
    if (x === p + 1) {
      p = x;
      continue;
    }
    out.push(a === p ? `${a}` : `${a}-${p}`);
    a = p = x;
  }
  return out.join(",");
}

/** A bitmap of `n` pages with bits `set` (32-bit words; 64-bit aligned length). */
export function bitmapOf(n: number, set: readonly number[]): Uint32Array {
  const b = new Uint32Array(Math.ceil(n / 64) * 2);
  for (const i of set) b[i >>> 5] |= 1 << (i & 31);
  return b;
}

/** Slot `slot` of `pages` pages at 4 GiB + `offPages`, flags `flags`. */
function slot(t: ConfVm, id: number, flags: number, pages = NPAGES, offPages = 0): void {
  const hva = t.mmap(pages * P);
  t.setUserMemoryRegion({
    slot: id,
    flags,
    guestPhysAddr: (TEST_GFN + offPages) * P,
    memorySize: pages * P,
    userspaceAddr: hva,
  });
}

const W = [0, 1, 63, 64, 129];
const WB = "bits 0-1,63-64,129";
const gfns = (pages: readonly number[]): number[] => pages.map((p) => TEST_GFN + p);
const all = "bits 0-129";

const noMove = "the model has no KVM_MR_MOVE: a slot's range changes only by delete and create";
const noSmm = "the model has one address space (no SMM): slot ids with as_id 1 are out of range";

export const CASES: readonly ConfCase[] = [
  // --- KVM_SET_USER_MEMORY_REGION ---
  { name: "set: slot id 32767 (past KVM_USER_MEM_SLOTS)", expected: "EINVAL", run: (t) => slot(t, 32767, 0) },
  {
    name: "set: slot id 32 (KVM has 32764 user slots on x86)",
    expected: "ok",
    intended: { answer: "EINVAL", why: "the model's memslot table has 32 entries (KVM_USER_MEM_SLOTS = 32)" },
    run: (t) => slot(t, 32, 0),
  },
  {
    name: "set: address space 1 (slot 1 | 1 << 16, SMM)",
    expected: "ok",
    intended: { answer: "EINVAL", why: noSmm },
    run: (t) => slot(t, 1 | (1 << 16), 0),
  },
  {
    name: "set: address space 2 (slot 1 | 2 << 16)",
    expected: "EINVAL",
    run: (t) => slot(t, 1 | (2 << 16), 0),
  },
  {
    name: "set: guest_phys_addr not page-aligned",
    expected: "EINVAL",
    run: (t) =>
      t.setUserMemoryRegion({
        slot: 1,
        flags: 0,
        guestPhysAddr: TEST_GFN * P + 0x800,
        memorySize: 16 * P,
        userspaceAddr: t.mmap(16 * P),
      }),
  },
  {
    name: "set: memory_size not page-aligned",
    expected: "EINVAL",
    run: (t) =>
      t.setUserMemoryRegion({
        slot: 1,
        flags: 0,
        guestPhysAddr: TEST_GFN * P,
        memorySize: 16 * P + 0x100,
        userspaceAddr: t.mmap(17 * P),
      }),
  },
  {
    name: "set: userspace_addr not page-aligned",
    expected: "EINVAL",
    run: (t) =>
      t.setUserMemoryRegion({
        slot: 1,
        flags: 0,
        guestPhysAddr: TEST_GFN * P,
        memorySize: 16 * P,
        userspaceAddr: t.mmap(17 * P) + 8,
      }),
  },
  { name: "set: unknown flag (1 << 4)", expected: "EINVAL", run: (t) => slot(t, 1, 1 << 4) },
  {
    name: "set: range overlapping another slot",
    expected: "EEXIST",
    run: (t) => {
      slot(t, 1, 0, 64);
      slot(t, 2, 0, 64, 32);
    },
  },
  {
    name: "set: two adjacent slots",
    expected: "ok",
    run: (t) => {
      slot(t, 1, 0, 64);
      slot(t, 2, 0, 64, 64);
    },
  },
  {
    name: "set: existing slot, flags change only",
    expected: "ok",
    run: (t) => {
      const hva = t.mmap(64 * P);
      const m = { slot: 1, flags: 0, guestPhysAddr: TEST_GFN * P, memorySize: 64 * P, userspaceAddr: hva };
      t.setUserMemoryRegion(m);
      t.setUserMemoryRegion({ ...m, flags: LOG });
    },
  },
  {
    name: "set: existing slot moved to another guest_phys_addr",
    expected: "ok",
    intended: { answer: "EINVAL", why: noMove },
    run: (t) => {
      const hva = t.mmap(64 * P);
      const m = { slot: 1, flags: 0, guestPhysAddr: TEST_GFN * P, memorySize: 64 * P, userspaceAddr: hva };
      t.setUserMemoryRegion(m);
      t.setUserMemoryRegion({ ...m, guestPhysAddr: (TEST_GFN + 512) * P });
    },
  },
  {
    name: "set: existing slot resized",
    expected: "EINVAL",
    run: (t) => {
      const hva = t.mmap(128 * P);
      const m = { slot: 1, flags: 0, guestPhysAddr: TEST_GFN * P, memorySize: 64 * P, userspaceAddr: hva };
      t.setUserMemoryRegion(m);
      t.setUserMemoryRegion({ ...m, memorySize: 128 * P });
    },
  },
  {
    name: "set: KVM_MEM_READONLY toggled on an existing slot",
    expected: "EINVAL",
    run: (t) => {
      const hva = t.mmap(64 * P);
      const m = { slot: 1, flags: 0, guestPhysAddr: TEST_GFN * P, memorySize: 64 * P, userspaceAddr: hva };
      t.setUserMemoryRegion(m);
      t.setUserMemoryRegion({ ...m, flags: KVM_MEM_READONLY });
    },
  },
  {
    name: "set: delete (size 0) of a slot that does not exist",
    expected: "EINVAL",
    run: (t) =>
      t.setUserMemoryRegion({
        slot: 3,
        flags: 0,
        guestPhysAddr: TEST_GFN * P,
        memorySize: 0,
        userspaceAddr: 0,
      }),
  },
  {
    name: "set: userspace range not mapped",
    expected: "ok",
    intended: {
      answer: "EFAULT",
      why: "the model checks the backing when the slot is made; KVM only at the first fault",
    },
    run: (t) =>
      t.setUserMemoryRegion({
        slot: 1,
        flags: 0,
        guestPhysAddr: TEST_GFN * P,
        memorySize: 16 * P,
        userspaceAddr: 1 << 30,
      }),
  },
  // --- KVM_GET_DIRTY_LOG ---
  { name: "get: slot id 32767", expected: "EINVAL", run: (t) => void t.getDirtyLog(32767) },
  { name: "get: slot that does not exist", expected: "ENOENT", run: (t) => void t.getDirtyLog(5) },
  {
    name: "get: slot without dirty logging",
    expected: "ENOENT",
    run: (t) => {
      slot(t, 1, 0);
      t.getDirtyLog(1);
    },
  },
  {
    name: "get: buffer shorter than the bitmap",
    expected: "EFAULT",
    run: (t) => {
      slot(t, 1, LOG);
      t.getDirtyLog(1, 2);
    },
  },
  {
    name: "get: logging on, nothing written",
    expected: "bits none",
    run: (t) => {
      slot(t, 1, LOG);
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: exact bits after writes to pages 0,1,63,64,129 (vCPU parked)",
    expected: WB,
    run: async (t) => {
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: second GET without writes is empty (GET clears)",
    expected: "bits none",
    run: async (t) => {
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.getDirtyLog(1);
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: a page written again after GET is reported again (re-protected)",
    expected: "bits 64",
    run: async (t) => {
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.getDirtyLog(1);
      await t.writePages(gfns([64]));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: writes before logging is turned on are not reported",
    expected: "bits 5",
    run: async (t) => {
      const hva = t.mmap(NPAGES * P);
      const m = {
        slot: 1,
        flags: 0,
        guestPhysAddr: TEST_GFN * P,
        memorySize: NPAGES * P,
        userspaceAddr: hva,
      };
      t.setUserMemoryRegion(m);
      await t.writePages(gfns(W));
      t.setUserMemoryRegion({ ...m, flags: LOG });
      await t.writePages(gfns([5]));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: flags re-set to the same value keep the bitmap",
    expected: WB,
    run: async (t) => {
      const hva = t.mmap(NPAGES * P);
      const m = {
        slot: 1,
        flags: LOG,
        guestPhysAddr: TEST_GFN * P,
        memorySize: NPAGES * P,
        userspaceAddr: hva,
      };
      t.setUserMemoryRegion(m);
      await t.writePages(gfns(W));
      t.setUserMemoryRegion(m);
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: logging turned off then on again starts a clean bitmap",
    expected: "bits none",
    run: async (t) => {
      const hva = t.mmap(NPAGES * P);
      const m = {
        slot: 1,
        flags: LOG,
        guestPhysAddr: TEST_GFN * P,
        memorySize: NPAGES * P,
        userspaceAddr: hva,
      };
      t.setUserMemoryRegion(m);
      await t.writePages(gfns(W));
      t.setUserMemoryRegion({ ...m, flags: 0 });
      t.setUserMemoryRegion(m);
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: after logging is turned off",
    expected: "ENOENT",
    run: async (t) => {
      const hva = t.mmap(NPAGES * P);
      const m = {
        slot: 1,
        flags: LOG,
        guestPhysAddr: TEST_GFN * P,
        memorySize: NPAGES * P,
        userspaceAddr: hva,
      };
      t.setUserMemoryRegion(m);
      await t.writePages(gfns(W));
      t.setUserMemoryRegion({ ...m, flags: 0 });
      t.getDirtyLog(1);
    },
  },
  {
    name: "get: manual protect: two GETs without CLEAR return the same bits",
    expected: WB,
    run: async (t) => {
      t.enableManualDirtyLogProtect(1);
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.getDirtyLog(1);
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "get: with the dirty ring enabled",
    expected: "ENXIO",
    run: (t) => {
      t.enableDirtyRing(1024);
      slot(t, 1, LOG);
      t.getDirtyLog(1);
    },
  },
  // --- KVM_CLEAR_DIRTY_LOG ---
  {
    name: "clear: slot id 32767",
    expected: "EINVAL",
    run: (t) => t.clearDirtyLog(32767, 0, 64, bitmapOf(64, [])),
  },
  ...clearRangeCases(),
  {
    name: "clear: slot without dirty logging",
    expected: "ENOENT",
    run: (t) => {
      t.enableManualDirtyLogProtect(1);
      slot(t, 1, 0);
      t.clearDirtyLog(1, 0, 64, bitmapOf(64, []));
    },
  },
  {
    name: "clear: bitmap shorter than num_pages",
    expected: "EFAULT",
    run: (t) => {
      t.enableManualDirtyLogProtect(1);
      slot(t, 1, LOG);
      t.clearDirtyLog(1, 0, 128, new Uint32Array(2));
    },
  },
  {
    name: "clear: clears only the bits it is given",
    expected: "bits 0,63-64,129",
    run: async (t) => {
      t.enableManualDirtyLogProtect(1);
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.clearDirtyLog(1, 0, NPAGES, bitmapOf(NPAGES, [1]));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "clear: without manual protect it still clears (KVM does not check)",
    expected: "bits none",
    run: async (t) => {
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.clearDirtyLog(1, 0, NPAGES, bitmapOf(NPAGES, W));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "clear: a cleared page written again is reported again",
    expected: "bits 1",
    run: async (t) => {
      t.enableManualDirtyLogProtect(1);
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.clearDirtyLog(1, 0, NPAGES, t.getDirtyLog(1));
      await t.writePages(gfns([1]));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "clear: with the dirty ring enabled",
    expected: "ENXIO",
    run: (t) => {
      t.enableDirtyRing(1024);
      slot(t, 1, LOG);
      t.clearDirtyLog(1, 0, 64, bitmapOf(64, []));
    },
  },
  // --- KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and INITIALLY_SET ---
  {
    name: "cap: MANUAL_PROTECT2 with INITIALLY_SET alone (2)",
    expected: "EINVAL",
    run: (t) => t.enableManualDirtyLogProtect(2),
  },
  {
    name: "cap: MANUAL_PROTECT2 with an unknown bit (5)",
    expected: "EINVAL",
    run: (t) => t.enableManualDirtyLogProtect(5),
  },
  { name: "cap: MANUAL_PROTECT2 off (0)", expected: "ok", run: (t) => t.enableManualDirtyLogProtect(0) },
  {
    name: "initially-set: first GET reports every page, tail bits clear",
    expected: all,
    run: (t) => {
      t.enableManualDirtyLogProtect(3);
      slot(t, 1, LOG);
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "initially-set: logging turned on later: first GET reports every page",
    expected: all,
    run: (t) => {
      t.enableManualDirtyLogProtect(3);
      const hva = t.mmap(NPAGES * P);
      const m = {
        slot: 1,
        flags: 0,
        guestPhysAddr: TEST_GFN * P,
        memorySize: NPAGES * P,
        userspaceAddr: hva,
      };
      t.setUserMemoryRegion(m);
      t.setUserMemoryRegion({ ...m, flags: LOG });
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "initially-set: after the first CLEAR of everything, GET is empty",
    expected: "bits none",
    run: (t) => {
      t.enableManualDirtyLogProtect(3);
      slot(t, 1, LOG);
      t.clearDirtyLog(1, 0, NPAGES, t.getDirtyLog(1));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "initially-set: writes after the first CLEAR are reported exactly",
    expected: WB,
    run: async (t) => {
      t.enableManualDirtyLogProtect(3);
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.clearDirtyLog(1, 0, NPAGES, t.getDirtyLog(1));
      await t.writePages(gfns(W));
      return bits(t.getDirtyLog(1));
    },
  },
  {
    name: "initially-set: a partial first CLEAR leaves the other pages set",
    expected: "bits 64-129",
    run: (t) => {
      t.enableManualDirtyLogProtect(3);
      slot(t, 1, LOG);
      t.clearDirtyLog(
        1,
        0,
        64,
        bitmapOf(
          64,
          Array.from({ length: 64 }, (_, i) => i),
        ),
      );
      return bits(t.getDirtyLog(1));
    },
  },
  // --- the dirty ring ---
  { name: "ring: size 0", expected: "EINVAL", run: (t) => t.enableDirtyRing(0) },
  {
    name: "ring: 3000 entries (not a power of two)",
    expected: "EINVAL",
    run: (t) => t.enableDirtyRing(3000),
  },
  { name: "ring: 128 entries (2 KiB, under a page)", expected: "EINVAL", run: (t) => t.enableDirtyRing(128) },
  {
    name: "ring: 131072 entries (over KVM_DIRTY_RING_MAX_ENTRIES)",
    expected: "E2BIG",
    run: (t) => t.enableDirtyRing(131072),
  },
  { name: "ring: 1024 entries", expected: "ok", run: (t) => t.enableDirtyRing(1024) },
  {
    name: "ring: enabled twice",
    expected: "EINVAL",
    run: (t) => {
      t.enableDirtyRing(1024);
      t.enableDirtyRing(1024);
    },
  },
  {
    name: "ring: enabled after a vCPU exists",
    expected: "EINVAL",
    run: (t) => {
      t.createVcpu(0);
      t.enableDirtyRing(1024);
    },
  },
  {
    name: "ring: WITH_BITMAP (x86 does not offer it)",
    expected: "EINVAL",
    intended: {
      answer: "ok",
      why: "the model offers arm64's ring-with-bitmap on x86, for writes made without a vCPU",
    },
    run: (t) => t.enableDirtyRing(1024, { withBitmap: true }),
  },
  { name: "ring: reset without a ring", expected: "EINVAL", run: (t) => `ok: ${t.resetDirtyRings()}` },
  {
    name: "ring: reset with nothing harvested",
    expected: "ok: 0",
    run: (t) => {
      t.enableDirtyRing(1024);
      t.createVcpu(0);
      return `ok: ${t.resetDirtyRings()}`;
    },
  },
  {
    name: "ring: entries after writes to pages 0,1,63,64,129, then reset",
    expected: "gfns 1:0-1,63-64,129; reset 5",
    run: async (t) => {
      t.enableDirtyRing(1024);
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      const e = t.harvestDirtyRing(0);
      const sl = [...new Set(e.map((x) => x.slot))].join(",");
      return `gfns ${sl}:${ranges(e.map((x) => x.offset))}; reset ${t.resetDirtyRings()}`;
    },
  },
  {
    name: "ring: a page written again after reset is pushed again",
    expected: "gfns 64",
    run: async (t) => {
      t.enableDirtyRing(1024);
      slot(t, 1, LOG);
      await t.writePages(gfns(W));
      t.harvestDirtyRing(0);
      t.resetDirtyRings();
      await t.writePages(gfns([64]));
      return `gfns ${ranges(t.harvestDirtyRing(0).map((x) => x.offset))}`;
    },
  },
];

/** KVM_CLEAR_DIRTY_LOG's range checks on a 130-page slot, manual protect on. */
function clearRangeCases(): ConfCase[] {
  const c = (name: string, first: number, num: number, expected: string): ConfCase => ({
    name: `clear: ${name} (first_page ${first}, num_pages ${num})`,
    expected,
    run: (t) => {
      t.enableManualDirtyLogProtect(1);
      slot(t, 1, LOG);
      t.clearDirtyLog(1, first, num, bitmapOf(Math.max(num, 64), []));
    },
  });
  return [
    c("first_page not a multiple of 64", 1, 64, "EINVAL"),
    c("num_pages not a multiple of 64, not to the end", 64, 63, "EINVAL"),
    c("num_pages not a multiple of 64, to the end of the slot", 64, 66, "ok"),
    c("first_page past the end", 192, 0, "EINVAL"),
    c("range past the end", 128, 64, "EINVAL"),
    c("num_pages 0", 64, 0, "ok"),
  ];
}

/**
 * QEMU's calc-dirty-rate (migration/dirtyrate.c): how fast a running guest dirties its memory,
 * in MB/s (QEMU's MB: 2^20 bytes, whole MB/s), measured over a calculation time in one of three
 * modes:
 *
 * - page-sampling: hash a random sample of pages (512 per GiB by default), wait, hash them again;
 *   the share that changed, times the guest's size, over the time. Needs no dirty logging, so it
 *   misses a page rewritten with the same bytes and counts a page once however often it changed.
 * - dirty-bitmap: clear the dirty log (KVM_GET_DIRTY_LOG), wait, get it again: the pages dirtied.
 * - dirty-ring: reap the rings, wait, reap again: each vCPU's entries (QEMU's cpu->dirty_pages)
 *   give a rate per vCPU, and their sum the VM's. A ring that fills meanwhile is reaped at once.
 *
 * The guest and its VM are the caller's (guest_vm.ts): built with dirty logging for the bitmap
 * mode, with the ring (DirtyRingLog.prepare) for the ring mode.
 */
import { crc32 } from "node:zlib";
import { PAGE_SIZE } from "../kvm_host.js";
import { einval } from "../errors.js";
import { bitmap_weight } from "../dirty_bitmap.js";
import { ParkMiller } from "../workload/rng.js";
import type { MmuModeName } from "../vm.js";
import { DesignName, designInfo } from "../mmu/design.js";
import { createGuestVm, GuestVm, layoutFor, runGuest } from "./guest_vm.js";
import { DirtyRingLog, RING_ENTRIES } from "./log_sync.js";
import { DirtyLimit, dirtyRateMBps } from "./dirtylimit.js";

export const DIRTY_RATE_MODES = ["page-sampling", "dirty-bitmap", "dirty-ring"] as const;
export type DirtyRateMode = (typeof DIRTY_RATE_MODES)[number];

/** QEMU's DIRTYRATE_DEFAULT_SAMPLE_PAGES and its bounds (pages per GiB). */
export const DIRTYRATE_DEFAULT_SAMPLE_PAGES = 512;
export const MIN_SAMPLE_PAGE_COUNT = 128;
export const MAX_SAMPLE_PAGE_COUNT = 16384;
/** QEMU's MIN_CALC_TIME_MS and MAX_CALC_TIME_MS. */
export const MIN_CALC_TIME_MS = 50;
export const MAX_CALC_TIME_MS = 60_000;

export interface DirtyRateOptions {
  mode?: DirtyRateMode;
  /** The calculation time, ms (QEMU's calc-time with calc-time-unit ms; default 1000). */
  calcTimeMs?: number;
  /** page-sampling: pages sampled per GiB of guest memory (default 512). */
  samplePagesPerGiB?: number;
  /** page-sampling: the sample's seed (default: a random one). */
  seed?: number;
  /**
   * The calculation window: resolves when it is over (default: a timer of calcTimeMs). A test
   * passes its own to measure exactly what its guest did in between.
   */
  window?: () => Promise<void>;
}

export interface DirtyRateVcpu {
  id: number;
  "dirty-rate": number;
  /** Ring entries reaped from this vCPU in the window (QEMU's cpu->dirty_pages delta). */
  pages: number;
}

/** As QEMU's query-dirty-rate (DirtyRateInfo), plus the counts behind the rate. */
export interface DirtyRateResult {
  mode: DirtyRateMode;
  /** MB/s. */
  "dirty-rate": number;
  /** The window as measured, ms. */
  "calc-time-ms": number;
  /** page-sampling: pages per GiB asked for, pages sampled and how many of them changed. */
  "sample-pages": number;
  sampled?: number;
  dirtySamples?: number;
  /** dirty-bitmap and dirty-ring: pages found dirty in the window (the ring: entries). */
  dirtyPages?: number;
  /** dirty-ring only: per vCPU. */
  "vcpu-dirty-rate"?: DirtyRateVcpu[];
}

interface Resolved {
  mode: DirtyRateMode;
  calcTimeMs: number;
  samplePagesPerGiB: number;
}

export function checkDirtyRateOptions(o: DirtyRateOptions): Resolved {
  const mode = o.mode ?? "page-sampling";
  if (!(DIRTY_RATE_MODES as readonly string[]).includes(mode))
    throw einval("mode", `"${String(mode)}" is not one of ${DIRTY_RATE_MODES.join(", ")}`);
  const calcTimeMs = o.calcTimeMs ?? 1000;
  if (!Number.isSafeInteger(calcTimeMs) || calcTimeMs < MIN_CALC_TIME_MS || calcTimeMs > MAX_CALC_TIME_MS)
    throw einval(
      "calcTimeMs",
      `must be an integer ${MIN_CALC_TIME_MS}..${MAX_CALC_TIME_MS}, got ${String(calcTimeMs)}`,
    );
  const samplePagesPerGiB = o.samplePagesPerGiB ?? DIRTYRATE_DEFAULT_SAMPLE_PAGES;
  if (
    !Number.isSafeInteger(samplePagesPerGiB) ||
    samplePagesPerGiB < MIN_SAMPLE_PAGE_COUNT ||
    samplePagesPerGiB > MAX_SAMPLE_PAGE_COUNT
  )
    throw einval(
      "samplePagesPerGiB",
      `must be an integer ${MIN_SAMPLE_PAGE_COUNT}..${MAX_SAMPLE_PAGE_COUNT}, got ${String(samplePagesPerGiB)}`,
    );
  if (o.seed !== undefined && !Number.isSafeInteger(o.seed)) throw einval("seed", "must be an integer");
  if (o.window !== undefined && typeof o.window !== "function") throw einval("window", "must be a function");
  return { mode, calcTimeMs, samplePagesPerGiB };
}

/** compute_page_hash's part: a 32-bit hash of one page (CRC32 here, xxHash in QEMU). */
function pageHash(g: GuestVm, page: number, buf: Int32Array): number {
  g.vm.readGuestPage(page * PAGE_SIZE, buf);
  return crc32(new Uint8Array(buf.buffer));
}

/** The window, timed. */
async function timedWindow(o: DirtyRateOptions, r: Resolved): Promise<number> {
  const t0 = performance.now();
  await (o.window ? o.window() : new Promise((res) => setTimeout(res, r.calcTimeMs)));
  return Math.max(performance.now() - t0, 1e-3);
}

/** page-sampling: record_ramblock_hash_info, the wait, compare_page_hash_info, update_dirtyrate. */
async function pageSampling(g: GuestVm, o: DirtyRateOptions, r: Resolved): Promise<DirtyRateResult> {
  const pages = g.layout.memoryBytes / PAGE_SIZE;
  const count = Math.floor((g.layout.memoryBytes * r.samplePagesPerGiB) / 2 ** 30);
  if (count < 1)
    throw einval(
      "samplePagesPerGiB",
      `${r.samplePagesPerGiB} per GiB samples no page of a ${g.layout.memoryBytes}-byte guest`,
    );
  const rng = new ParkMiller(o.seed ?? Math.floor(Math.random() * 2 ** 31));
  const vfn = new Array<number>(count);
  const hash = new Array<number>(count);
  const buf = new Int32Array(PAGE_SIZE / 4);
  for (let i = 0; i < count; i++) {
    vfn[i] = rng.next() % pages;
    hash[i] = pageHash(g, vfn[i], buf);
  }
  const ms = await timedWindow(o, r);
  let dirty = 0;
  for (let i = 0; i < count; i++) if (pageHash(g, vfn[i], buf) !== hash[i]) dirty++;
  const totalMB = Math.floor(g.layout.memoryBytes / 2 ** 20);
  return {
    mode: "page-sampling",
    "dirty-rate": Math.floor((dirty * totalMB * 1000) / (count * ms)),
    "calc-time-ms": ms,
    "sample-pages": r.samplePagesPerGiB,
    sampled: count,
    dirtySamples: dirty,
  };
}

/** dirty-bitmap: calculate_dirtyrate_dirty_bitmap (the first GET clears, the second counts). */
async function dirtyBitmap(g: GuestVm, o: DirtyRateOptions, r: Resolved): Promise<DirtyRateResult> {
  const bitmap = new Uint32Array(Math.ceil(g.layout.memoryBytes / PAGE_SIZE / 32));
  g.vm.getDirtyLog(0, bitmap);
  const ms = await timedWindow(o, r);
  g.vm.getDirtyLog(0, bitmap);
  const n = bitmap_weight(bitmap);
  return {
    mode: "dirty-bitmap",
    "dirty-rate": dirtyRateMBps(n, ms),
    "calc-time-ms": ms,
    "sample-pages": 0,
    dirtyPages: n,
  };
}

/** dirty-ring: vcpu_calculate_dirtyrate (each vCPU's reaped entries over the window). */
async function dirtyRing(
  g: GuestVm,
  log: DirtyRingLog,
  o: DirtyRateOptions,
  r: Resolved,
): Promise<DirtyRateResult> {
  const n = g.layout.vcpus;
  log.reap(g);
  const start = Array.from(log.dirtyPages.subarray(0, n));
  // A ring that fills in the window is reaped at once: the vCPU is not held up by the measure.
  const reaper = new DirtyLimit(g, log, null);
  reaper.run();
  let ms: number;
  try {
    ms = await timedWindow(o, r);
  } finally {
    await reaper.stop();
  }
  if (reaper.error) throw reaper.error;
  log.reap(g);
  const vcpus: DirtyRateVcpu[] = [];
  for (let id = 0; id < n; id++) {
    const pages = log.dirtyPages[id] - start[id];
    vcpus.push({ id, "dirty-rate": dirtyRateMBps(pages, ms), pages });
  }
  return {
    mode: "dirty-ring",
    "dirty-rate": vcpus.reduce((a, v) => a + v["dirty-rate"], 0),
    "calc-time-ms": ms,
    "sample-pages": 0,
    dirtyPages: vcpus.reduce((a, v) => a + v.pages, 0),
    "vcpu-dirty-rate": vcpus,
  };
}

/**
 * calc-dirty-rate on a running guest. `log`: the VM's DirtyRingLog (dirty-ring mode only; its
 * VM made with it). The bitmap mode needs slot 0 dirty-logged. Bad options: EINVAL, nothing done.
 */
export async function calcDirtyRate(
  g: GuestVm,
  o: DirtyRateOptions = {},
  log?: DirtyRingLog,
): Promise<DirtyRateResult> {
  const r = checkDirtyRateOptions(o);
  if (r.mode === "dirty-ring") {
    if (!(log instanceof DirtyRingLog)) throw einval("log", "dirty-ring mode needs the VM's DirtyRingLog");
    return dirtyRing(g, log, o, r);
  }
  return r.mode === "dirty-bitmap" ? dirtyBitmap(g, o, r) : pageSampling(g, o, r);
}

export interface GuestDirtyRateOptions extends DirtyRateOptions {
  /** The design (default lockless), MMU mode, guest size (32 MiB) and vCPUs (1). */
  wp?: DesignName;
  guestMode?: MmuModeName;
  memoryBytes?: number;
  vcpus?: number;
  /** The guest runs this long before the window (default 200 ms). */
  warmupMs?: number;
  /** dirty-ring: entries per vCPU ring (default 4096). */
  dirtyRingSize?: number;
}

/**
 * What `kvmmu dirty-rate` runs: builds the migration-test guest (guest.ts: every vCPU rewrites
 * its pages, page after page), lets it run warmupMs, measures, stops the VM. Options are
 * checked (EINVAL) before anything is built.
 */
export async function guestDirtyRate(
  o: GuestDirtyRateOptions = {},
): Promise<DirtyRateResult & { wp: DesignName; guestMode: MmuModeName; memoryBytes: number; vcpus: number }> {
  const r = checkDirtyRateOptions(o);
  const wp = o.wp ?? "lockless";
  designInfo(wp);
  const guestMode = o.guestMode ?? "tdp";
  if (guestMode !== "tdp" && guestMode !== "shadow")
    throw einval("guestMode", `must be "tdp" or "shadow", got ${String(guestMode)}`);
  const warmupMs = o.warmupMs ?? 200;
  if (!Number.isSafeInteger(warmupMs) || warmupMs < 0) throw einval("warmupMs", "must be an integer >= 0");
  const layout = layoutFor(o.memoryBytes ?? 32 << 20, o.vcpus ?? 1);
  const ring = r.mode === "dirty-ring";
  const entries = o.dirtyRingSize ?? RING_ENTRIES;
  if (o.dirtyRingSize !== undefined && !ring) throw einval("dirtyRingSize", "needs mode dirty-ring");
  if (!Number.isSafeInteger(entries) || entries < 256 || entries > 65536 || (entries & (entries - 1)) !== 0)
    throw einval("dirtyRingSize", `must be a power of two 256..65536, got ${String(entries)}`);
  const log = ring ? new DirtyRingLog(entries) : undefined;
  const g = createGuestVm(layout, {
    wp,
    mode: guestMode,
    logged: r.mode !== "page-sampling",
    prepare: log ? (vm) => log.prepare(vm) : undefined,
  });
  try {
    await runGuest(g);
    await new Promise((res) => setTimeout(res, warmupMs));
    const res = await calcDirtyRate(g, o, log);
    return { ...res, wp, guestMode, memoryBytes: layout.memoryBytes, vcpus: layout.vcpus };
  } finally {
    await g.vm.stop();
  }
}

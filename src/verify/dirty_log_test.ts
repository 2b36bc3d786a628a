/**
 * dirty-log-test: KVM's dirty_log_test (tools/testing/selftests/kvm/dirty_log_test.c, current generation) run
 * against this engine's KVM_GET_DIRTY_LOG, for each write-protect strategy, with two oracles.
 *
 * `kvm` (the selftest's guest and check): the vCPUs store the iteration number into random pages. One iteration:
 * publish the iteration, let the vCPUs run for the interval (and at least 256 stores), collect
 * bmap0 once at a random point while they write, park them at the sync point, pause the host
 * thread, collect bmap1, then check every page of the slot exactly:
 *
 *     dirty (bmap0 | bmap1)  =>  value == iteration     (else a stale or spurious report)
 *     clean                  =>  value <  iteration     (else a lost dirty bit)
 *
 * Modes (`modes`, the selftest's -M), each checked with this oracle and exactly its exceptions:
 *   dirty-log   destructive GET (mid-run once, then final); no exception.
 *   clear-log   manual protect with INITIALLY_SET: GET then CLEAR of what it reported. In
 *               iteration 1 a page dirty only in bmap0 may hold 0 (every bit starts set).
 *   dirty-ring  a ring per vCPU; collected mid-run only after a ring-full exit, and at the end
 *               (harvest every ring, then reset). The last page of the previous iteration's
 *               collection may hold iteration - 1, and the last page of the current one may
 *               hold less than iteration (its entry is pushed before the write retires).
 *
 * `qemu`: live migration as QEMU does it with the same ioctl. The vCPUs increment words of
 * every page of their region, pass after pass. The first harvest is followed by a copy of every
 * page into a destination buffer; each later round harvests and copies the pages reported
 * dirty, while the vCPUs keep writing. Then the vCPUs are parked and the host thread paused; a
 * final harvest and copy must leave the destination equal to guest memory, page for page.
 *
 * Both run with a host thread that migrates guest pages and invalidates 2 MiB ranges through
 * the MMU notifier (churn), and with THP-backed memory, unless turned off. The slot is created
 * with KVM_MEM_LOG_DIRTY_PAGES already set, and is a few pages longer than the vCPU regions
 * (3 by default, as KVM's 2^18 + 3) so the bitmap's tail word is partial; the extra pages belong
 * to the last vCPU.
 */
import { MmuModeName, Vm, WpName } from "../vm.js";
import { BugName, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../kvm_host.js";
import { einval, KvmError } from "../errors.js";
import { designNames } from "../mmu/design.js";
import { ParkMiller } from "../workload/rng.js";
import { tablesFor } from "../workload/guest_paging.js";
import { DLG, DLG_VCPU, dlgCtlWords } from "../workload/dirty_log_guest.js";
import { waitAsyncAlive } from "../sync/atomic.js";

export type OracleName = "kvm" | "qemu";
/** The selftest's -M: how the kvm oracle collects dirty pages. */
export type DirtyLogMode = "dirty-log" | "clear-log" | "dirty-ring";
export const MODES: readonly DirtyLogMode[] = ["dirty-log", "clear-log", "dirty-ring"];
export const ORACLES: readonly OracleName[] = ["kvm", "qemu"];
/** The registered designs (src/mmu/design.ts). */
export const STRATEGIES: readonly WpName[] = designNames();

/** Which harvest a bitmap came from (for harvestFilter). */
export type HarvestPhase = "mid-run" | "final" | "live-round";

export interface DirtyLogTestOptions {
  /** Iterations per (strategy, oracle) run. Ignored when `seconds` is set. */
  iterations: number;
  /** Wall-clock budget for the whole test, split evenly over the runs; overrides iterations. */
  seconds?: number;
  /** Interval per iteration (kvm) or per live round (qemu), ms. */
  intervalMs: number;
  vcpus: number;
  /** Guest memory per vCPU, bytes (a multiple of 4 KiB). */
  bytesPerVcpu: number;
  wp: WpName[];
  oracles: OracleName[];
  thp: boolean;
  /** MMU-notifier churn: page migrations and 2 MiB invalidations per second; 0 and 0 = off. */
  migrateRate: number;
  invalidateRate: number;
  /**
   * NUMA balancing run by the vCPUs (Vm.setNumaBalancing): a scan every this many ms (0 or
   * absent: off) of `numaScanBytes` (default 256 MiB: the whole slot here).
   */
  numaScanPeriodMs?: number;
  numaScanBytes?: number;
  seed: number;
  /** Pages added to the slot beyond the vCPU regions (default 3). */
  extraPages?: number;
  /** Live harvest-and-copy rounds per check, qemu oracle (default 3). */
  qemuRounds?: number;
  /** Guest-physical address of the test slot (default: the top of a 40-bit space, 2 MiB aligned). */
  gpa?: number;
  /** Designs with D-bit logging (tdp-mmu): PML (default true) or write protection. */
  pml?: boolean;
  /** tdp-mmu: eager page splitting when logging starts (default true). */
  eagerPageSplit?: boolean;
  /** Bugs of the catalog to switch on in the engine (src/kvm_host.ts BUG). */
  bugs?: BugName[];
  /**
   * "tdp" (default) or "shadow": EPT off; each vCPU builds page tables (in a second slot) that
   * map its region at a guest virtual address, and stores through them.
   */
  mode?: MmuModeName;
  /** Collection modes of the kvm oracle (default ["dirty-log"]); the qemu oracle uses dirty-log. */
  modes?: DirtyLogMode[];
  /** dirty-ring: entries per vCPU ring (default: 65536, or fewer for small slots; >= 256). */
  ringEntries?: number;
  /** Violations whose details are kept, per strategy and oracle (default 5). */
  maxViolationDetails?: number;
  /**
   * Test-only: called on every bitmap getDirtyLog returns, before the oracle uses it. A filter
   * that clears bits plays a broken harvester (negative controls).
   */
  harvestFilter?: (bitmap: Uint32Array, phase: HarvestPhase) => void;
  progress?: (msg: string) => void;
  /** Checked between iterations: once aborted, the result covers what was checked. */
  signal?: AbortSignal;
}

export interface Violation {
  wp: WpName;
  oracle: OracleName;
  mode?: DirtyLogMode;
  iteration: number;
  /** Slot-relative page. */
  page: number;
  gpa: string;
  what: string;
}

export interface OracleResult {
  iterations: number;
  pagesChecked: number;
  violations: number;
  /** kvm: pages reported dirty, summed over iterations; qemu: pages copied after the bulk copy. */
  dirtyPages: number;
  /** kvm: pages reported clean; qemu: pages whose copy matched the source at a check. */
  cleanPages: number;
  guestWrites: number;
  harvests: number;
  /** dirty-ring: ring-full exits of the vCPUs. */
  ringFullExits?: number;
  host: { migrations: number; invalidations: number };
  /** NUMA balancing scans the vCPUs ran (DirtyLogTestOptions.numaScanPeriodMs). */
  numa?: { scans: number; pagesScanned: number };
  durationMs: number;
  /** Time spent reading guest memory and checking it. */
  verifyMs: number;
  pagesCheckedPerSec: number;
}

export interface ModeResult {
  mode: DirtyLogMode;
  wp: WpName;
  iterations: number;
  pagesChecked: number;
  violations: number;
  dirtyPages: number;
  ringFullExits: number;
}

export interface DirtyLogTestResult {
  iterations: number;
  pagesChecked: number;
  violations: number;
  pagesCheckedPerSec: number;
  durationMs: number;
  slotPages: number;
  slotGpa: string;
  options: Omit<DirtyLogTestOptions, "harvestFilter" | "progress">;
  /** Per strategy and oracle; the kvm entry is its dirty-log run (or its first mode's). */
  results: Partial<Record<WpName, Partial<Record<OracleName, OracleResult>>>>;
  /** Every kvm-oracle run, one per mode and strategy. */
  modes: ModeResult[];
  firstViolations: Violation[];
  machine: { cpus: number; node: string };
}

const TEST_SLOT = 1;
/** Shadow mode: the guest's page tables (its "kernel area") and where it maps vCPU 0's region. */
const PT_SLOT = 0;
const PT_GPA = 1 << 20;
const REGION_VPN = 1 << 27;
/** The selftest's floor on guest writes per iteration. */
const MIN_WRITES = 256;
const PARK_TIMEOUT_MS = 30_000;
const TWO_MIB = 2 << 20;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function validateDirtyLogTestOptions(o: DirtyLogTestOptions): void {
  const int = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x);
  if (!int(o.iterations) || o.iterations < 1)
    throw einval("iterations", `must be >= 1, got ${String(o.iterations)}`);
  if (
    o.seconds !== undefined &&
    !(typeof o.seconds === "number" && o.seconds > 0 && Number.isFinite(o.seconds))
  )
    throw einval("seconds", `must be > 0, got ${String(o.seconds)}`);
  if (!int(o.intervalMs) || o.intervalMs < 1 || o.intervalMs > 60_000)
    throw einval("intervalMs", `must be 1..60000, got ${String(o.intervalMs)}`);
  if (!int(o.vcpus) || o.vcpus < 1 || o.vcpus > 64)
    throw einval("vcpus", `must be 1..64, got ${String(o.vcpus)}`);
  if (!int(o.bytesPerVcpu) || o.bytesPerVcpu < PAGE_SIZE || o.bytesPerVcpu % PAGE_SIZE !== 0)
    throw einval(
      "bytesPerVcpu",
      `must be a positive multiple of ${PAGE_SIZE}, got ${String(o.bytesPerVcpu)}`,
    );
  if (o.vcpus * o.bytesPerVcpu > 16 * 2 ** 30)
    throw einval("bytesPerVcpu", "vcpus x bytesPerVcpu is over 16 GiB");
  if (!Array.isArray(o.wp) || o.wp.length === 0 || o.wp.some((w) => !STRATEGIES.includes(w)))
    throw einval("wp", `must be a non-empty list of ${STRATEGIES.join(", ")}`);
  if (!Array.isArray(o.oracles) || o.oracles.length === 0 || o.oracles.some((w) => !ORACLES.includes(w)))
    throw einval("oracles", `must be a non-empty list of ${ORACLES.join(", ")}`);
  for (const k of ["migrateRate", "invalidateRate"] as const)
    if (typeof o[k] !== "number" || !(o[k] >= 0) || !Number.isFinite(o[k]))
      throw einval(k, `must be a rate >= 0, got ${String(o[k])}`);
  if (!int(o.seed) || o.seed < 0 || o.seed > 2 ** 31 - 2) throw einval("seed", `must be 0..${2 ** 31 - 2}`);
  const extra = o.extraPages ?? 3;
  if (!int(extra) || extra < 0 || extra > 511) throw einval("extraPages", "must be 0..511");
  const rounds = o.qemuRounds ?? 3;
  if (!int(rounds) || rounds < 0 || rounds > 1000) throw einval("qemuRounds", "must be 0..1000");
  if (o.maxViolationDetails !== undefined && (!int(o.maxViolationDetails) || o.maxViolationDetails < 0))
    throw einval("maxViolationDetails", "must be >= 0");
  if (
    o.modes !== undefined &&
    (!Array.isArray(o.modes) || o.modes.length === 0 || o.modes.some((m) => !MODES.includes(m)))
  )
    throw einval("modes", `must be a non-empty list of ${MODES.join(", ")}`);
  if (
    o.ringEntries !== undefined &&
    (!int(o.ringEntries) ||
      o.ringEntries < 256 ||
      o.ringEntries > 65536 ||
      (o.ringEntries & (o.ringEntries - 1)) !== 0)
  )
    throw einval("ringEntries", `must be a power of two in 256..65536, got ${String(o.ringEntries)}`);
  if (o.mode !== undefined && o.mode !== "tdp" && o.mode !== "shadow")
    throw einval("mode", `must be "tdp" or "shadow", got ${String(o.mode)}`);
  if (o.gpa !== undefined) {
    const slotBytes = o.vcpus * o.bytesPerVcpu + extra * PAGE_SIZE;
    if (!int(o.gpa) || o.gpa < 0 || o.gpa % PAGE_SIZE !== 0 || o.gpa + slotBytes > 2 ** 40)
      throw einval("gpa", "must be page-aligned, with the slot below 2^40");
  }
}

/** One VM with the test slot and parked vCPUs running a dirty-log guest. */
class Harness {
  readonly vm: Vm;
  readonly ctl: Int32Array;
  readonly npages: number;
  readonly gpa: number;
  readonly bitmapWords: number;
  readonly vcpus: number;
  private readonly churn: boolean;
  private hostRunning = false;
  /** How this harness collects: the kvm oracle's mode (the qemu oracle: dirty-log). */
  mode: DirtyLogMode = "dirty-log";
  /** dirty-ring: ring-full exits already answered by a collection. */
  private fullSeen = 0;
  /** dirty-ring: the last page of each vCPU's latest collection that found entries. */
  lastRingPage: number[] = [];

  private constructor(vm: Vm, ctl: Int32Array, npages: number, gpa: number, vcpus: number, churn: boolean) {
    this.vm = vm;
    this.ctl = ctl;
    this.npages = npages;
    this.gpa = gpa;
    this.vcpus = vcpus;
    this.bitmapWords = Math.ceil(npages / 32);
    this.churn = churn;
  }

  static async create(
    wp: WpName,
    oracle: OracleName,
    o: DirtyLogTestOptions,
    seed: number,
    mode: DirtyLogMode = "dirty-log",
  ): Promise<Harness> {
    const pagesPer = o.bytesPerVcpu / PAGE_SIZE;
    const extra = o.extraPages ?? 3;
    const npages = o.vcpus * pagesPer + extra;
    const gpa = o.gpa ?? slotGpa(npages);
    const slotBytes = npages * PAGE_SIZE;
    // Spare frames: alignment of the huge mappings, and page migration.
    const shadow = o.mode === "shadow";
    // Shadow: each vCPU's page-table pool, in a slot of its own below the test slot.
    const pool = shadow ? tablesFor(pagesPer + extra) + tablesFor(o.vcpus * 4096) + 8 : 0;
    const ptPages = shadow ? Math.ceil((o.vcpus * pool) / 512) * 512 : 0;
    const memory = Math.ceil(slotBytes / TWO_MIB) * TWO_MIB + 4 * TWO_MIB + ptPages * PAGE_SIZE;
    const vm = Vm.create({
      memory,
      wp,
      mode: o.mode ?? "tdp",
      bugs: o.bugs ?? [],
      maxVcpus: o.vcpus,
      maxSlotPages: npages + ptPages,
      pml: o.pml,
      eager_page_split: o.eagerPageSplit,
    });
    const ctl = new Int32Array(new SharedArrayBuffer(dlgCtlWords(o.vcpus) * 4));
    const churn = o.migrateRate > 0 || o.invalidateRate > 0;
    const h = new Harness(vm, ctl, npages, gpa, o.vcpus, churn);
    h.mode = mode;
    h.lastRingPage = new Array<number>(o.vcpus).fill(-1);
    try {
      // As the selftest: clear-log enables MANUAL_PROTECT_ENABLE | INITIALLY_SET, dirty-ring
      // its ring, both before the slot and the vCPUs exist.
      if (mode === "clear-log") vm.enableManualDirtyLogProtect(3);
      if (mode === "dirty-ring") vm.enableDirtyRing(o.ringEntries ?? ringEntriesFor(npages));
      const hva = vm.mmap(slotBytes, { thp: o.thp });
      // As KVM's test: the slot is created with dirty logging already on; nothing is populated.
      vm.setUserMemoryRegion({
        slot: TEST_SLOT,
        flags: KVM_MEM_LOG_DIRTY_PAGES,
        guestPhysAddr: gpa,
        memorySize: slotBytes,
        userspaceAddr: hva,
      });
      const kernel = { baseGfn: PT_GPA / PAGE_SIZE, pages: ptPages };
      if (shadow)
        vm.setUserMemoryRegion({
          slot: PT_SLOT,
          flags: 0,
          guestPhysAddr: PT_GPA,
          memorySize: ptPages * PAGE_SIZE,
          userspaceAddr: vm.mmap(ptPages * PAGE_SIZE, { thp: o.thp }),
        });
      for (let i = 0; i < o.vcpus; i++) vm.createVcpu(i);
      Atomics.store(ctl, DLG.stop, 1); // the vCPUs start parked (sem_vcpu_cont)
      const baseGfn = gpa / PAGE_SIZE;
      await vm.run((id) => {
        const pages = pagesPer + (id === o.vcpus - 1 ? extra : 0);
        const regionGfn = baseGfn + id * pagesPer;
        const paging = shadow
          ? { kernel, poolGfn: kernel.baseGfn + id * pool, poolPages: pool, vpn: REGION_VPN + id * pagesPer }
          : undefined;
        return oracle === "kvm"
          ? { kind: "dirty_log", ctl: ctl.buffer, baseGfn: regionGfn, pages, seed, paging }
          : { kind: "dirty_log_incr", ctl: ctl.buffer, baseGfn: regionGfn, pages, paging };
      });
      await h.waitParked();
      if ((o.numaScanPeriodMs ?? 0) > 0)
        vm.setNumaBalancing({ scanPeriodMs: o.numaScanPeriodMs, scanBytes: o.numaScanBytes });
      if (churn) {
        await vm.startHostThread({ migrateRate: o.migrateRate, invalidateRate: o.invalidateRate, seed });
        await vm.pauseHostThread();
      }
    } catch (e) {
      await vm.stop();
      throw e;
    }
    return h;
  }

  /** Σ stores published by the vCPUs (wrapping counters: compare differences). */
  writes(): number {
    let n = 0;
    for (let id = 0; id < this.vcpus; id++) n = (n + Atomics.load(this.ctl, DLG_VCPU.writes(id))) | 0;
    return n;
  }

  /** Publishes the stamp, then lets the vCPUs (and the host thread) run. */
  resume(iteration: number): void {
    Atomics.store(this.ctl, DLG.iteration, iteration);
    if (this.churn && !this.hostRunning) {
      this.vm.resumeHostThread();
      this.hostRunning = true;
    }
    Atomics.store(this.ctl, DLG.stop, 0);
    Atomics.notify(this.ctl, DLG.stop);
  }

  /**
   * vcpu_stop = true; wait until every vCPU is parked at the sync point; pause the host thread.
   * `service` runs while waiting (a vCPU blocked in a ring-full exit parks only after a reset).
   */
  async quiesce(service?: () => void): Promise<void> {
    Atomics.store(this.ctl, DLG.stop, 1);
    await this.waitParked(service);
    if (this.hostRunning) {
      await this.vm.pauseHostThread();
      this.hostRunning = false;
    }
    this.vm.throwIfFailed();
  }

  private async waitParked(service?: () => void): Promise<void> {
    const t0 = Date.now();
    for (let id = 0; id < this.vcpus; id++) {
      const i = DLG_VCPU.parked(id);
      while (Atomics.load(this.ctl, i) !== 1) {
        this.vm.throwIfFailed();
        service?.();
        if (Date.now() - t0 > PARK_TIMEOUT_MS)
          throw new KvmError(
            "ETIMEDOUT",
            `vcpu ${id}: did not reach the sync point in ${PARK_TIMEOUT_MS} ms`,
          );
        await waitAsyncAlive(this.ctl, i, 0, 20);
      }
    }
  }

  harvest(out: Uint32Array, phase: HarvestPhase, o: DirtyLogTestOptions): Uint32Array {
    this.vm.throwIfFailed();
    const bm = this.vm.getDirtyLog(TEST_SLOT, out);
    o.harvestFilter?.(bm, phase);
    // clear-log: GET only copied; clear (and re-protect) what was reported, the whole slot.
    if (this.mode === "clear-log") this.vm.clearDirtyLog(TEST_SLOT, 0, this.npages, bm);
    return bm;
  }

  /** dirty-ring: a vCPU exited on a full ring since the last collection. */
  ringFull(): boolean {
    return this.vm.dirtyRingStats().fullExits > this.fullSeen;
  }

  /**
   * dirty-ring collection (the selftest's dirty_ring_collect_dirty_pages): harvest every vCPU's
   * ring into `into` (or-ed in), then reset. Every entry must name the test slot and a page in
   * it, and the reset must free exactly what was harvested; `bad` gets anything else.
   */
  collectRing(
    into: Uint32Array,
    phase: HarvestPhase,
    o: DirtyLogTestOptions,
    bad: (what: string) => void,
  ): number {
    this.vm.throwIfFailed();
    this.fullSeen = this.vm.dirtyRingStats().fullExits;
    const bm = new Uint32Array(into.length);
    let count = 0;
    for (let id = 0; id < this.vcpus; id++) {
      const got = this.vm.harvestDirtyRing(id);
      for (const e of got) {
        if (e.slot !== TEST_SLOT || e.offset >= this.npages) {
          bad(`ring entry of vcpu ${id}: slot ${e.slot} offset ${e.offset} outside the test slot`);
          continue;
        }
        bm[e.offset >>> 5] |= 1 << (e.offset & 31);
      }
      if (got.length) this.lastRingPage[id] = got[got.length - 1].offset;
      count += got.length;
    }
    const cleared = this.vm.resetDirtyRings();
    if (cleared !== count) bad(`reset freed ${cleared} entries, ${count} were harvested`);
    o.harvestFilter?.(bm, phase);
    for (let i = 0; i < bm.length; i++) into[i] |= bm[i];
    return count;
  }

  async close(): Promise<void> {
    await this.vm.stop();
  }
}

/** The selftest's ring size: 65536 entries, fewer for a small slot, never below 256. */
function ringEntriesFor(npages: number): number {
  let n = 65536;
  while (n > 256 && n > npages) n >>= 1;
  return n;
}

/** KVM puts the test slot at the top of guest-physical space; here: below 2^40, 2 MiB aligned. */
function slotGpa(npages: number): number {
  const bytes = npages * PAGE_SIZE;
  return Math.floor((2 ** 40 - bytes) / TWO_MIB) * TWO_MIB;
}

function testBit(bm: Uint32Array, p: number): boolean {
  return ((bm[p >>> 5] >>> (p & 31)) & 1) !== 0;
}

/** Violations of one run; the first `max` of them are kept (in the test's shared list). */
class Tally {
  violations = 0;
  private readonly details: Violation[];
  private readonly max: number;
  constructor(details: Violation[], max: number) {
    this.details = details;
    this.max = max;
  }
  fail(v: Violation): void {
    if (this.violations++ < this.max) this.details.push(v);
  }
}

/** Bits past the end of the slot must be clear. Returns the number set. */
function tailBits(bm: Uint32Array, npages: number): number {
  const r = npages & 31;
  if (r === 0) return 0;
  let x = bm[npages >>> 5] >>> r;
  let n = 0;
  while (x !== 0) {
    n += x & 1;
    x >>>= 1;
  }
  return n;
}

interface RunCtx {
  wp: WpName;
  mode: DirtyLogMode;
  o: DirtyLogTestOptions;
  deadline: number; // ms timestamp, or Infinity
  tally: Tally;
  say: (msg: string) => void;
  rng: ParkMiller;
}

function more(it: number, c: RunCtx): boolean {
  if (c.o.signal?.aborted) return false;
  if (c.deadline !== Infinity) return it === 0 || Date.now() < c.deadline;
  return it < c.o.iterations;
}

function hex(x: number): string {
  return `0x${x.toString(16)}`;
}

async function runKvmOracle(c: RunCtx): Promise<OracleResult> {
  const { o, wp, tally, mode } = c;
  const t0 = performance.now();
  const h = await Harness.create(wp, "kvm", o, o.seed, mode);
  const r: OracleResult = emptyResult();
  const ring = mode === "dirty-ring";
  const bad = (iteration: number) => (what: string) =>
    tally.fail({ wp, oracle: "kvm", mode, iteration, page: -1, gpa: hex(h.gpa), what });
  try {
    const bmap0 = new Uint32Array(h.bitmapWords);
    const bmap1 = new Uint32Array(h.bitmapWords);
    // dirty-ring: the last page of each vCPU's collection in the previous iteration.
    let prevLast: number[] = [];
    for (let iteration = 1; more(iteration - 1, c); iteration++) {
      const reapAt = c.rng.next() % o.intervalMs;
      const w0 = h.writes();
      bmap0.fill(0);
      bmap1.fill(0);
      h.resume(iteration);
      let writes = 0;
      for (let i = 0; i < o.intervalMs || writes < MIN_WRITES; i++) {
        await sleep(1);
        h.vm.throwIfFailed();
        writes = (h.writes() - w0) | 0;
        if (ring) {
          // The ring is collected mid-run only once it has been full.
          if (h.ringFull()) {
            h.collectRing(bmap0, "mid-run", o, bad(iteration));
            r.harvests++;
          }
        } else if (i === reapAt) {
          // GET is destructive (and so is GET + CLEAR): reap once, while the vCPUs write.
          h.harvest(bmap0, "mid-run", o);
          r.harvests++;
        }
      }
      if (ring)
        await h.quiesce(() => {
          if (h.ringFull()) h.collectRing(bmap1, "final", o, bad(iteration));
        });
      else await h.quiesce();
      writes = (h.writes() - w0) | 0;
      if (ring) h.collectRing(bmap1, "final", o, bad(iteration));
      else h.harvest(bmap1, "final", o);
      r.harvests++;
      const curLast = ring ? h.lastRingPage.slice() : [];
      const tv = performance.now();
      let dirty = 0;
      let clean = 0;
      for (const [name, bm] of [
        ["bmap0", bmap0],
        ["bmap1", bmap1],
      ] as const) {
        const n = tailBits(bm, h.npages);
        if (n !== 0)
          tally.fail({
            wp,
            oracle: "kvm",
            mode,
            iteration,
            page: h.npages,
            gpa: hex(h.gpa + h.npages * PAGE_SIZE),
            what: `${name}: ${n} bits set past the end of the slot`,
          });
      }
      for (let p = 0; p < h.npages; p++) {
        const [lo, hi] = h.vm.readGuestU64(h.gpa + p * PAGE_SIZE);
        const val = (hi >>> 0) * 2 ** 32 + (lo >>> 0);
        const d0 = testBit(bmap0, p);
        const d1 = testBit(bmap1, p);
        if (d0 || d1) {
          dirty++;
          // The selftest's exceptions, per mode.
          const allowed =
            val === iteration ||
            (ring && val === iteration - 1 && prevLast.includes(p)) ||
            (ring && val < iteration && curLast.includes(p)) ||
            (mode === "clear-log" && val === 0 && iteration === 1 && d0 && !d1);
          if (!allowed)
            tally.fail({
              wp,
              oracle: "kvm",
              mode,
              iteration,
              page: p,
              gpa: hex(h.gpa + p * PAGE_SIZE),
              what: `dirty page (${d0 ? "bmap0" : ""}${d0 && d1 ? "+" : ""}${d1 ? "bmap1" : ""}) value ${val} != iteration ${iteration}`,
            });
        } else {
          clean++;
          if (val >= iteration)
            tally.fail({
              wp,
              oracle: "kvm",
              mode,
              iteration,
              page: p,
              gpa: hex(h.gpa + p * PAGE_SIZE),
              what: `clean page value ${val} >= iteration ${iteration}: a lost dirty bit`,
            });
        }
      }
      r.verifyMs += performance.now() - tv;
      r.iterations++;
      r.pagesChecked += h.npages;
      r.dirtyPages += dirty;
      r.cleanPages += clean;
      r.guestWrites += writes;
      prevLast = curLast;
      c.say(
        `[${wp}] ${mode} iteration ${String(iteration).padStart(2)}: ${ring ? `ring-full exits ${h.vm.dirtyRingStats().fullExits}` : `reaped after ${reapAt} ms`}, dirty: ${dirty} clean: ${clean} writes: ${writes}`,
      );
    }
    r.host = h.vm.hostThreadCounters();
    r.numa = h.vm.numaBalancingStats();
    if (ring) r.ringFullExits = h.vm.dirtyRingStats().fullExits;
  } finally {
    await h.close();
  }
  return finish(r, t0, tally.violations);
}

/** A destination "VM": chunks of 2^16 pages, so 1 GiB regions need no single huge buffer. */
class Destination {
  private readonly chunks: Int32Array[] = [];
  constructor(npages: number) {
    for (let p = 0; p < npages; p += 1 << 16)
      this.chunks.push(new Int32Array(Math.min(1 << 16, npages - p) * (PAGE_SIZE / 4)));
  }
  page(p: number): Int32Array {
    const o = (p & 0xffff) * (PAGE_SIZE / 4);
    return this.chunks[p >>> 16].subarray(o, o + PAGE_SIZE / 4);
  }
}

async function runQemuOracle(c: RunCtx): Promise<OracleResult> {
  const { o, wp, tally } = c;
  const t0 = performance.now();
  const h = await Harness.create(wp, "qemu", o, o.seed);
  const r: OracleResult = emptyResult();
  const rounds = o.qemuRounds ?? 3;
  const dest = new Destination(h.npages);
  const src = new Int32Array(PAGE_SIZE / 4);
  const srcBytes = new Uint8Array(src.buffer);
  const bm = new Uint32Array(h.bitmapWords);
  const copyDirty = (iteration: number, phase: HarvestPhase): number => {
    h.harvest(bm, phase, o);
    r.harvests++;
    const n = tailBits(bm, h.npages);
    if (n !== 0)
      tally.fail({
        wp,
        oracle: "qemu",
        iteration,
        page: h.npages,
        gpa: hex(h.gpa + h.npages * PAGE_SIZE),
        what: `${n} bits set past the end of the slot`,
      });
    let copied = 0;
    for (let i = 0; i < bm.length; i++) {
      let m = bm[i];
      while (m !== 0) {
        const p = i * 32 + (31 - Math.clz32(m & -m));
        m &= m - 1;
        if (p >= h.npages) continue;
        h.vm.readGuestPage(h.gpa + p * PAGE_SIZE, dest.page(p));
        copied++;
      }
    }
    return copied;
  };
  const runFor = async (ms: number): Promise<void> => {
    const w0 = h.writes();
    for (let i = 0; i < ms || ((h.writes() - w0) | 0) < MIN_WRITES; i++) {
      await sleep(1);
      h.vm.throwIfFailed();
    }
  };
  try {
    for (let iteration = 1; more(iteration - 1, c); iteration++) {
      const w0 = h.writes();
      h.resume(iteration);
      let copied = 0;
      if (iteration === 1) {
        // Migration setup: the first sync clears the log; the bulk stage copies everything.
        await runFor(1 + (c.rng.next() % o.intervalMs));
        h.harvest(bm, "live-round", o);
        r.harvests++;
        for (let p = 0; p < h.npages; p++) h.vm.readGuestPage(h.gpa + p * PAGE_SIZE, dest.page(p));
      }
      for (let k = 0; k < rounds; k++) {
        await runFor(1 + (c.rng.next() % o.intervalMs));
        copied += copyDirty(iteration, "live-round");
      }
      await h.quiesce();
      const writes = (h.writes() - w0) | 0;
      copied += copyDirty(iteration, "final");
      const tv = performance.now();
      let bad = 0;
      for (let p = 0; p < h.npages; p++) {
        h.vm.readGuestPage(h.gpa + p * PAGE_SIZE, src);
        const d = dest.page(p);
        if (Buffer.compare(srcBytes, new Uint8Array(d.buffer, d.byteOffset, PAGE_SIZE)) === 0) continue;
        bad++;
        let w = 0;
        while (src[w] === d[w]) w++;
        tally.fail({
          wp,
          oracle: "qemu",
          iteration,
          page: p,
          gpa: hex(h.gpa + p * PAGE_SIZE),
          what: `destination differs from source at byte ${w * 4} (${d[w]} != ${src[w]}): a change was not reported`,
        });
      }
      r.verifyMs += performance.now() - tv;
      r.iterations++;
      r.pagesChecked += h.npages;
      r.dirtyPages += copied;
      r.cleanPages += h.npages - bad;
      r.guestWrites += writes;
      c.say(
        `[${wp}] qemu check ${String(iteration).padStart(2)}: ${rounds} live rounds + final, pages copied ${copied}, writes ${writes}, mismatches ${bad}`,
      );
    }
    r.host = h.vm.hostThreadCounters();
    r.numa = h.vm.numaBalancingStats();
  } finally {
    await h.close();
  }
  return finish(r, t0, tally.violations);
}

function emptyResult(): OracleResult {
  return {
    iterations: 0,
    pagesChecked: 0,
    violations: 0,
    dirtyPages: 0,
    cleanPages: 0,
    guestWrites: 0,
    harvests: 0,
    host: { migrations: 0, invalidations: 0 },
    durationMs: 0,
    verifyMs: 0,
    pagesCheckedPerSec: 0,
  };
}

function finish(r: OracleResult, t0: number, violations: number): OracleResult {
  r.durationMs = performance.now() - t0;
  r.violations = violations;
  r.pagesCheckedPerSec = r.durationMs > 0 ? r.pagesChecked / (r.durationMs / 1000) : 0;
  return r;
}

export async function dirtyLogTest(o: DirtyLogTestOptions): Promise<DirtyLogTestResult> {
  validateDirtyLogTestOptions(o);
  const say = o.progress ?? (() => {});
  const t0 = performance.now();
  const details: Violation[] = [];
  const modes = o.modes ?? ["dirty-log"];
  const runs = o.wp.length * o.oracles.reduce((n, x) => n + (x === "kvm" ? modes.length : 1), 0);
  const budgetMs = o.seconds !== undefined ? (o.seconds * 1000) / runs : Infinity;
  const results: DirtyLogTestResult["results"] = {};
  const npages = (o.vcpus * o.bytesPerVcpu) / PAGE_SIZE + (o.extraPages ?? 3);
  say(
    `dirty-log-test: seed ${o.seed}, slot of ${npages} pages at guest-physical ${hex(o.gpa ?? slotGpa(npages))}`,
  );
  let k = 0;
  const modeResults: ModeResult[] = [];
  let iterations = 0;
  let pagesChecked = 0;
  let violations = 0;
  for (const wp of o.wp) {
    const per: Partial<Record<OracleName, OracleResult>> = {};
    for (const oracle of o.oracles) {
      for (const mode of oracle === "kvm" ? modes : (["dirty-log"] as const)) {
        if (o.signal?.aborted) break;
        const tally = new Tally(details, o.maxViolationDetails ?? 5);
        // Each run its own reap-delay stream, so runs are independent of their order.
        const c: RunCtx = {
          wp,
          mode,
          o,
          deadline: Date.now() + budgetMs,
          tally,
          say,
          rng: new ParkMiller(o.seed * 31 + ++k),
        };
        const r = oracle === "kvm" ? await runKvmOracle(c) : await runQemuOracle(c);
        iterations += r.iterations;
        pagesChecked += r.pagesChecked;
        violations += r.violations;
        if (oracle === "kvm") {
          modeResults.push({
            mode,
            wp,
            iterations: r.iterations,
            pagesChecked: r.pagesChecked,
            violations: r.violations,
            dirtyPages: r.dirtyPages,
            ringFullExits: r.ringFullExits ?? 0,
          });
          if (per.kvm === undefined || mode === "dirty-log") per.kvm = r;
        } else per[oracle] = r;
      }
    }
    results[wp] = per;
  }
  const durationMs = performance.now() - t0;
  const { harvestFilter: _f, progress: _p, signal: _s, ...options } = o;
  void _f;
  void _p;
  void _s;
  return {
    iterations,
    pagesChecked,
    violations,
    pagesCheckedPerSec: pagesChecked / (durationMs / 1000),
    durationMs,
    slotPages: npages,
    slotGpa: hex(o.gpa ?? slotGpa(npages)),
    options,
    results,
    modes: modeResults,
    firstViolations: details,
    machine: { cpus: (await import("node:os")).availableParallelism(), node: process.version },
  };
}

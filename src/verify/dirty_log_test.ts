/**
 * dirty-log-test: KVM's dirty_log_test (tools/testing/selftests/kvm/dirty_log_test.c, current generation) run
 * against this engine's KVM_GET_DIRTY_LOG, for each write-protect design (src/mmu/design.ts), with two oracles.
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
import { PAGE_SIZE } from "../kvm_host.js";
import { ParkMiller } from "../workload/rng.js";
import type { DesignName } from "../mmu/design.js";
import {
  DirtyLogTestOptions,
  DirtyLogTestResult,
  ModeResult,
  OracleName,
  OracleResult,
  validateDirtyLogTestOptions,
  Violation,
} from "./dirty_log_test_options.js";
import type { DirtyLogMode, HarvestPhase } from "./dirty_log_test_options.js";
import { Harness, MIN_WRITES, sleep, slotGpa } from "./dirty_log_harness.js";

export { MODES, ORACLES, validateDirtyLogTestOptions } from "./dirty_log_test_options.js";
export type {
  DirtyLogMode,
  DirtyLogTestOptions,
  DirtyLogTestResult,
  HarvestPhase,
  ModeResult,
  OracleName,
  OracleResult,
  Violation,
} from "./dirty_log_test_options.js";

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
  wp: DesignName;
  mode: DirtyLogMode;
  o: DirtyLogTestOptions;
  /** This run's share of `seconds`, ms (Infinity: count iterations). */
  budgetMs: number;
  /** When the run stops: set once its VM is up, so that building it does not eat the budget. */
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
  c.deadline = Date.now() + c.budgetMs;
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
      const { dirty, clean } = checkKvm(c, h, iteration, [bmap0, bmap1], prevLast, curLast);
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

/**
 * The selftest's check of one iteration (vcpus parked): no bit past the slot's end; a dirty page
 * holds the iteration, a clean one less, with each mode's exceptions (module comment).
 */
function checkKvm(
  c: RunCtx,
  h: Harness,
  iteration: number,
  [bmap0, bmap1]: [Uint32Array, Uint32Array],
  prevLast: number[],
  curLast: number[],
): { dirty: number; clean: number } {
  const { wp, tally, mode } = c;
  const ring = mode === "dirty-ring";
  const failAt = (page: number, what: string): void =>
    tally.fail({ wp, oracle: "kvm", mode, iteration, page, gpa: hex(h.gpa + page * PAGE_SIZE), what });
  let dirty = 0;
  let clean = 0;
  for (const [name, bm] of [
    ["bmap0", bmap0],
    ["bmap1", bmap1],
  ] as const) {
    const n = tailBits(bm, h.npages);
    if (n !== 0) failAt(h.npages, `${name}: ${n} bits set past the end of the slot`);
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
        failAt(
          p,
          `dirty page (${d0 ? "bmap0" : ""}${d0 && d1 ? "+" : ""}${d1 ? "bmap1" : ""}) value ${val} != iteration ${iteration}`,
        );
    } else {
      clean++;
      if (val >= iteration) failAt(p, `clean page value ${val} >= iteration ${iteration}: a lost dirty bit`);
    }
  }
  return { dirty, clean };
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

/** The qemu oracle's check: every page of the destination equals the source's. Returns mismatches. */
function compareQemu(c: RunCtx, h: Harness, iteration: number, dest: Destination): number {
  const src = new Int32Array(PAGE_SIZE / 4);
  const srcBytes = new Uint8Array(src.buffer);
  let bad = 0;
  for (let p = 0; p < h.npages; p++) {
    h.vm.readGuestPage(h.gpa + p * PAGE_SIZE, src);
    const d = dest.page(p);
    if (Buffer.compare(srcBytes, new Uint8Array(d.buffer, d.byteOffset, PAGE_SIZE)) === 0) continue;
    bad++;
    let w = 0;
    while (src[w] === d[w]) w++;
    c.tally.fail({
      wp: c.wp,
      oracle: "qemu",
      iteration,
      page: p,
      gpa: hex(h.gpa + p * PAGE_SIZE),
      what: `destination differs from source at byte ${w * 4} (${d[w]} != ${src[w]}): a change was not reported`,
    });
  }
  return bad;
}

async function runQemuOracle(c: RunCtx): Promise<OracleResult> {
  const { o, wp, tally } = c;
  const t0 = performance.now();
  const h = await Harness.create(wp, "qemu", o, o.seed);
  c.deadline = Date.now() + c.budgetMs;
  const r: OracleResult = emptyResult();
  const rounds = o.qemuRounds ?? 3;
  const dest = new Destination(h.npages);
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
      const bad = compareQemu(c, h, iteration, dest);
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

/** One kvm-oracle run's line of the per-mode table. */
function modeResult(wp: DesignName, mode: DirtyLogMode, r: OracleResult): ModeResult {
  return {
    mode,
    wp,
    iterations: r.iterations,
    pagesChecked: r.pagesChecked,
    violations: r.violations,
    dirtyPages: r.dirtyPages,
    ringFullExits: r.ringFullExits ?? 0,
  };
}

/** The status of one run: which run of how many, the time left under --seconds, pages checked. */
function runStatus(
  o: DirtyLogTestOptions,
  say: (msg: string) => void,
  run: string,
  t0: number,
  checkedBefore: () => number,
): (msg: string) => void {
  return (msg) => {
    const left =
      o.seconds === undefined
        ? ""
        : `, ${Math.max(0, Math.ceil(o.seconds - (performance.now() - t0) / 1000))} s left`;
    say(`${run}${left}, ${checkedBefore()} pages checked before this run: ${msg}`);
  };
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
  const notRun: string[] = [];
  const modeResults: ModeResult[] = [];
  let iterations = 0;
  let pagesChecked = 0;
  let violations = 0;
  for (const wp of o.wp) {
    const per: Partial<Record<OracleName, OracleResult>> = {};
    for (const oracle of o.oracles) {
      for (const mode of oracle === "kvm" ? modes : (["dirty-log"] as const)) {
        const label = `${wp} ${oracle}${oracle === "kvm" && mode !== "dirty-log" ? ` -M ${mode}` : ""}`;
        if (o.signal?.aborted) {
          notRun.push(label);
          continue;
        }
        const tally = new Tally(details, o.maxViolationDetails ?? 5);
        // Each run its own reap-delay stream, so runs are independent of their order.
        const c: RunCtx = {
          wp,
          mode,
          o,
          budgetMs,
          deadline: Infinity,
          tally,
          say: runStatus(o, say, `${label}, run ${k + 1}/${runs}`, t0, () => pagesChecked),
          rng: new ParkMiller(o.seed * 31 + ++k),
        };
        const r = oracle === "kvm" ? await runKvmOracle(c) : await runQemuOracle(c);
        iterations += r.iterations;
        pagesChecked += r.pagesChecked;
        violations += r.violations;
        if (oracle === "kvm") {
          modeResults.push(modeResult(wp, mode, r));
          if (per.kvm === undefined || mode === "dirty-log") per.kvm = r;
        } else per[oracle] = r;
      }
    }
    results[wp] = per;
  }
  const durationMs = performance.now() - t0;
  const { harvestFilter: _f, progress: _p, signal: _s, onVm: _v, ...options } = o;
  void _v;
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
    interrupted: o.signal?.aborted === true,
    notRun,
    machine: { cpus: (await import("node:os")).availableParallelism(), node: process.version },
  };
}

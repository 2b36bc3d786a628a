/**
 * Pre-copy live migration, as QEMU does it, over any duplex stream.
 *
 * Source: a bulk round over every page, then rounds driven by dirty-log syncs; bandwidth is
 * measured in ~100 ms windows and the source switches over once the expected downtime (the last
 * sync's time plus the dirty bytes left over the measured bandwidth) fits the downtime limit. It
 * then pauses the vCPUs, sends the last dirty pages (not rate-limited, as QEMU's completion
 * stage), the vCPU state and the stream digest, checks the destination's page hashes against its
 * own paused memory, and tells the destination to run the guest. Until that "go" the source owns
 * the guest: any failure resumes it there with nothing lost.
 *
 * Destination: builds the VM the config section describes and starts its vCPUs held (they touch
 * no memory until released, as QEMU's destination process is up before switch-over), applies
 * pages, checks the digest, answers with its page hashes, and on "go" releases the guest and
 * checks its invariant.
 *
 * Downtime is QEMU's: from the source's vCPU stop to the guest running on the destination, less
 * the page-hash verification (a check of this model that a real migration does not make), which
 * is reported apart as verifyMs.
 */
import type { Duplex } from "node:stream";
import { KVM_DIRTY_LOG_INITIALLY_SET, KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE, PAGE_SIZE } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import type { MmuModeName, Vm, WpName } from "../vm.js";
import { for_each_set_bit, harvestDirtyRingsInto, hweight32 } from "../dirty_bitmap.js";
import { MIG_CTL } from "./guest.js";
import {
  checkLayout,
  createGuestVm,
  GuestLayout,
  GuestVm,
  guestCounts,
  MAX_GUEST_MEMORY,
  pageHashes,
  runAndCheck,
  runGuest,
} from "./guest_vm.js";
import {
  ByteReader,
  checkStreamDigest,
  decodeRam,
  encodeHeader,
  jsonPayload,
  MIG_VERSION,
  MigErrno,
  MigrationError,
  RamBuilder,
  readHeader,
  readSection,
  Sec,
  Section,
  SectionWriter,
  sectionName,
} from "./stream.js";
import { applyDiscard, postcopyIncoming, postcopySource, PostcopyStats } from "./postcopy.js";

/** How dirty pages are collected: the classic bitmap, GET + CLEAR with manual protect, or the ring. */
export interface DirtyLogStrategy {
  readonly name: LogMode;
  /** Sets the VM up for this interface: before its logged slot and its vCPUs exist. */
  prepare(vm: Vm): void;
  /** Harvests slot 0's dirty pages into `out` (bit n = page n) and re-arms logging for them. */
  sync(g: GuestVm, out: Uint32Array): void;
}

export const LOG_MODES = ["dirty-log", "clear-log", "dirty-ring"] as const;
export type LogMode = (typeof LOG_MODES)[number];

/** Ring entries per vCPU in dirty-ring mode: a vCPU that fills it waits for the next sync. */
const RING_ENTRIES = 4096;

const STRATEGIES: Record<LogMode, DirtyLogStrategy> = {
  // KVM_GET_DIRTY_LOG: clears and re-protects in one call.
  "dirty-log": { name: "dirty-log", prepare: () => {}, sync: (g, out) => void g.vm.getDirtyLog(0, out) },
  // As QEMU with KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET copies, CLEAR re-protects what was copied.
  "clear-log": {
    name: "clear-log",
    prepare: (vm) =>
      vm.enableManualDirtyLogProtect(KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | KVM_DIRTY_LOG_INITIALLY_SET),
    sync: (g, out) => {
      g.vm.getDirtyLog(0, out);
      g.vm.clearDirtyLog(0, 0, g.layout.memoryBytes / PAGE_SIZE, out);
    },
  },
  // As QEMU's ring reaper: harvest every vCPU's ring, then reset (which re-protects) before reading.
  "dirty-ring": {
    name: "dirty-ring",
    prepare: (vm) => vm.enableDirtyRing(RING_ENTRIES),
    sync: (g, out) => {
      out.fill(0);
      harvestDirtyRingsInto(g.vm, 0, out);
      g.vm.resetDirtyRings();
    },
  },
};

export function logStrategy(mode: string): DirtyLogStrategy {
  if ((LOG_MODES as readonly string[]).includes(mode)) return STRATEGIES[mode as LogMode];
  throw new MigrationError("EINVAL", `log-mode: "${mode}" is not one of ${LOG_MODES.join(", ")}`);
}

export const FAULTS = [
  "truncate",
  "flip",
  "bad-section",
  "bad-flag",
  "bad-version",
  "kill-destination",
] as const;
export type FaultKind = (typeof FAULTS)[number];

/** One round, shaped like QEMU's query-migrate (MigrationStats plus the timing fields). */
export interface RoundRecord {
  round: number;
  "time-ms": number;
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  "normal-bytes": number;
  "dirty-pages-rate": number;
  mbps: number;
  "dirty-sync-count": number;
  "expected-downtime": number;
  "cpu-throttle-percentage": number;
}

export interface SourceOptions {
  /** Most the guest may stay stopped at switch-over, in ms (QEMU's downtime-limit; 300). */
  downtimeLimitMs?: number;
  /** Bytes per second; 0 or absent: no limit. */
  maxBandwidth?: number;
  /** Throttle the guest when it dirties faster than the link sends (20%, +10% a step, <= 99%). */
  autoConverge?: boolean;
  /** Rounds (the bulk round counts) before switch-over is allowed (1). */
  minRounds?: number;
  /** Cancel (the source keeps running) past this many ms of iteration (60000). */
  maxTimeMs?: number;
  log?: DirtyLogStrategy;
  /** Stream damage to inject (tests); kill-destination is the caller's to do (see onRound). */
  fault?: FaultKind;
  /** Called after each sync with that round's record. */
  onRound?: (r: RoundRecord) => void;
  /** Switch to post-copy (postcopy.ts) instead of converging: after postcopyAfter rounds (1: the bulk round). */
  postcopy?: boolean;
  postcopyAfter?: number;
  /** Post-copy: called once the destination owns the guest (failure injection). */
  onPostcopyRun?: () => void;
}

export type MigrationStatus = "completed" | "failed" | "cancelled";

/** Where the stop went: pause, final sync, final send, destination load, verify, release. */
export interface SwitchoverTimes {
  /** Parking the source's vCPUs. */
  pauseMs: number;
  /** The last dirty-log sync (with the vCPUs parked). */
  syncMs: number;
  /** Writing the last pages, the vCPU state and EOF. */
  sendMs: number;
  /** EOF written to the destination's page hashes received, less its hashing. */
  loadMs: number;
  /** "go" written to "running" received: the destination releases its started vCPUs. */
  startMs: number;
  /** Guest stopped to running on the destination, verification included (downtimeMs + verifyMs). */
  stopMs: number;
}

export interface MigrationReport {
  status: MigrationStatus;
  mode: "precopy" | "postcopy";
  logMode: string;
  rounds: RoundRecord[];
  /** Source vCPU stop to guest running on the destination, verification left out (QEMU's). */
  downtimeMs: number;
  /** The expected downtime of the round that decided the switch-over (0 before it). */
  expectedDowntimeMs: number;
  /** Page-hash verification: the destination's hashing plus the source's hashing and compare. */
  verifyMs: number;
  switchover?: SwitchoverTimes;
  /** Guest increments per second (all vCPUs) from the start of the migration to the stop. */
  guestRate: number;
  setupTimeMs: number;
  totalTimeMs: number;
  transferredBytes: number;
  throttlePercentage: number;
  verify: { pagesCompared: number; mismatches: number; guestInvariant: boolean | null; problems: string[] };
  /** The guest's increment counts at switch-over (the work it had done). */
  countsAtSwitchover?: number[];
  /**
   * The source gave the guest away ("go" or postcopy-run was sent): whatever the status, the
   * source must not run it again (two running copies would diverge). False: it runs on here.
   */
  switchedOver: boolean;
  /** Post-copy failed after postcopy-run: neither side holds the whole guest (the source stays paused). */
  guestLost?: boolean;
  /** Post-copy only: blocktime and requests (QEMU's names). */
  postcopy?: PostcopyStats;
  error?: { code: string; message: string };
}

const WINDOW_MS = 100;
const RAM_SECTION_PAGES = 64;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Reads the return path: remembers the first error the destination sends, queues the rest. */
class ReturnPath {
  private queue: Section[] = [];
  private wake: (() => void) | null = null;
  failure: MigrationError | null = null;
  /** Post-copy: where page requests go (any other time one is a protocol error). */
  onPageRequest: ((payload: Buffer, id: number) => void) | null = null;
  private nextId = 1;
  constructor(private readonly r: ByteReader) {
    void this.pump();
  }
  private async pump(): Promise<void> {
    try {
      for (;;) {
        const s = await readSection(this.r, this.nextId++, [
          Sec.Loaded,
          Sec.Running,
          Sec.Verified,
          Sec.PageReq,
          Sec.Error,
        ]);
        if (s.type === Sec.PageReq) {
          if (!this.onPageRequest)
            throw new MigrationError("EPROTO", `section ${s.id} (page-request) outside post-copy`);
          this.onPageRequest(s.payload, s.id);
          continue;
        }
        if (s.type === Sec.Error) {
          const e = JSON.parse(s.payload.toString()) as { code: MigErrno; message: string };
          this.failure = new MigrationError(e.code, `destination: ${e.message.replace(/^[A-Z]+: /, "")}`);
          break;
        }
        this.queue.push(s);
        this.kick();
      }
    } catch (e) {
      this.failure ??=
        e instanceof MigrationError && (e.code === "ENODATA" || e.code === "ECONNRESET")
          ? new MigrationError("ECONNRESET", "the destination went away (its connection closed)")
          : (e as MigrationError);
    }
    this.kick();
  }
  private kick(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }
  async expect(type: number, timeoutMs: number): Promise<Section> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = this.queue.shift();
      if (s) {
        if (s.type !== type)
          throw new MigrationError(
            "EPROTO",
            `destination sent ${sectionName(s.type)} where ${sectionName(type)} was expected`,
          );
        return s;
      }
      if (this.failure) throw this.failure;
      const left = end - Date.now();
      if (left <= 0)
        throw new MigrationError(
          "ETIMEDOUT",
          `no ${sectionName(type)} answer from the destination in ${timeoutMs} ms`,
        );
      await Promise.race([new Promise<void>((r) => (this.wake = r)), sleep(Math.min(left, 200))]);
    }
  }
  /** The next queued section if it has this type, else null (never waits). */
  take(type: number): Section | null {
    return this.queue[0]?.type === type ? this.queue.shift()! : null;
  }
  /** The destination's own error, if it sends one within `ms`. */
  async settle(ms: number): Promise<MigrationError | null> {
    const end = Date.now() + ms;
    while (!this.failure && Date.now() < end) await sleep(10);
    return this.failure;
  }
}

/** The `hashMs` of a "running" payload; 0 when absent or unreadable (an older destination). */
function peerHashMs(payload: Buffer): number {
  try {
    const x = Number((JSON.parse(payload.toString()) as { hashMs?: unknown }).hashMs);
    return Number.isFinite(x) ? x : 0;
  } catch {
    return 0;
  }
}

function toMigError(e: unknown): MigrationError {
  if (e instanceof MigrationError) return e;
  if (e instanceof KvmError) return new MigrationError(e.code, e.message.replace(/^[A-Z]+: /, ""));
  return new MigrationError("EIO", (e as Error).message ?? String(e));
}

export class MigrationSource {
  private readonly o: Required<
    Omit<SourceOptions, "fault" | "onRound" | "log" | "postcopy" | "postcopyAfter" | "onPostcopyRun">
  > &
    SourceOptions;
  private readonly log: DirtyLogStrategy;

  constructor(
    readonly g: GuestVm,
    opts: SourceOptions = {},
  ) {
    this.o = {
      downtimeLimitMs: 300,
      maxBandwidth: 0,
      autoConverge: false,
      minRounds: 1,
      maxTimeMs: 60_000,
      ...opts,
    };
    this.log = opts.log ?? logStrategy("dirty-log");
    const o = this.o;
    if (!(o.downtimeLimitMs > 0)) throw new MigrationError("EINVAL", "downtimeLimitMs: must be > 0");
    if (!(o.maxBandwidth >= 0)) throw new MigrationError("EINVAL", "maxBandwidth: must be >= 0");
    if (!Number.isSafeInteger(o.minRounds) || o.minRounds < 1)
      throw new MigrationError("EINVAL", "minRounds: must be >= 1");
    if (!(o.maxTimeMs > 0)) throw new MigrationError("EINVAL", "maxTimeMs: must be > 0");
    const pa = o.postcopyAfter ?? 1;
    if (!Number.isSafeInteger(pa) || pa < 1)
      throw new MigrationError("EINVAL", "postcopyAfter: must be >= 1");
  }

  /**
   * Migrates the running guest over `stream` (already authenticated; `reader` reads its other
   * direction). Never throws for a migration failure: the report says what happened. On
   * "completed" the source vCPUs are left paused (the caller stops the VM); otherwise they run.
   */
  async migrate(stream: Duplex, reader: ByteReader): Promise<MigrationReport> {
    const g = this.g;
    const o = this.o;
    const layout = g.layout;
    const pages = layout.memoryBytes / PAGE_SIZE;
    const t0 = performance.now();
    const w = new SectionWriter(stream);
    const ret = new ReturnPath(reader);
    const rounds: RoundRecord[] = [];
    const report: MigrationReport = {
      status: "failed",
      switchedOver: false,
      mode: o.postcopy ? "postcopy" : "precopy",
      logMode: this.log.name,
      rounds,
      downtimeMs: 0,
      expectedDowntimeMs: 0,
      verifyMs: 0,
      guestRate: 0,
      setupTimeMs: 0,
      totalTimeMs: 0,
      transferredBytes: 0,
      throttlePercentage: 0,
      verify: { pagesCompared: 0, mismatches: 0, guestInvariant: null, problems: [] },
    };
    const pending = new Uint32Array(Math.ceil(pages / 32));
    const harvest = new Uint32Array(pending.length);
    const page32 = new Int32Array(PAGE_SIZE / 4);
    const page8 = new Uint8Array(page32.buffer);
    const ram = new RamBuilder(RAM_SECTION_PAGES);
    let duplicate = 0;
    let normal = 0;
    let syncs = 0;
    // Bandwidth: bytes sent in the current ~100 ms window, and the last full window's rate.
    let winStart = performance.now();
    let winBytes = 0;
    let bwBytesPerMs = 0;
    let paused = false;
    let committed = false;
    // The completion stage is not rate-limited (QEMU's neither): the guest is stopped.
    let limited = true;
    let fault = o.fault;
    const countsAtStart = guestCounts(g);

    const account = async (n: number): Promise<void> => {
      winBytes += n;
      let now = performance.now();
      if (o.maxBandwidth > 0 && limited) {
        // Wait until the window's bytes fit the rate: a section bigger than a window's share
        // spreads over several windows (waits under a millisecond add up to the next one).
        const due = winStart + (winBytes * 1000) / o.maxBandwidth;
        if (due - now >= 1) {
          await sleep(due - now);
          now = performance.now();
        }
      }
      if (now - winStart >= WINDOW_MS) {
        bwBytesPerMs = winBytes / (now - winStart);
        winStart = now;
        winBytes = 0;
      }
    };
    const flushRam = async (): Promise<void> => {
      if (ram.pages === 0) return;
      const before = w.bytes;
      await w.section(Sec.Ram, ram.take());
      await account(w.bytes - before);
    };
    /** Sends every page set in `pending` and clears it. */
    const sendPending = async (): Promise<void> => {
      const list: number[] = [];
      for_each_set_bit(pending, (p) => list.push(p));
      pending.fill(0);
      for (const p of list) {
        const gpa = p * PAGE_SIZE;
        g.vm.readGuestPage(gpa, page32);
        if (ram.add(gpa, page8)) duplicate++;
        else normal++;
        if (ram.full) await flushRam();
      }
      await flushRam();
    };
    const dirtyCount = (): number => {
      let n = 0;
      for (let i = 0; i < pending.length; i++) n += hweight32(pending[i]);
      return n;
    };
    let lastSync = performance.now();
    let sentAtSync = 0;
    let overshoots = 0;
    let syncMs = 0;
    const sync = (): RoundRecord => {
      const ts = performance.now();
      this.log.sync(g, harvest);
      syncMs = performance.now() - ts;
      syncs++;
      let fresh = 0;
      for (let i = 0; i < pending.length; i++) {
        fresh += hweight32(harvest[i]);
        pending[i] |= harvest[i];
      }
      const now = performance.now();
      const remaining = dirtyCount() * PAGE_SIZE;
      const sentSince = w.bytes - sentAtSync;
      const dt = Math.max(now - lastSync, 1e-3);
      // Auto-converge: the guest dirtied more than half what was sent, twice in a row.
      if (o.autoConverge && syncs > 1) {
        if (fresh * PAGE_SIZE > sentSince / 2) overshoots++;
        else overshoots = 0;
        if (overshoots >= 2) {
          const cur = Atomics.load(g.ctl, MIG_CTL.throttle);
          Atomics.store(g.ctl, MIG_CTL.throttle, cur === 0 ? 20 : Math.min(99, cur + 10));
          overshoots = 0;
        }
      }
      const bw = bwBytesPerMs > 0 ? bwBytesPerMs : sentSince / dt;
      lastSync = now;
      sentAtSync = w.bytes;
      const rec: RoundRecord = {
        round: rounds.length + 1,
        "time-ms": Math.round(now - t0),
        transferred: w.bytes,
        remaining,
        total: layout.memoryBytes,
        duplicate,
        normal,
        "normal-bytes": normal * PAGE_SIZE,
        "dirty-pages-rate": Math.round((fresh * 1000) / dt),
        mbps: Number(((bw * 1000 * 8) / 1e6).toFixed(2)),
        "dirty-sync-count": syncs,
        // The stop costs one more sync (the harvest with the vCPUs parked) and the send.
        "expected-downtime": bw > 0 ? Math.round(syncMs + remaining / bw) : 0,
        "cpu-throttle-percentage": Atomics.load(g.ctl, MIG_CTL.throttle),
      };
      rounds.push(rec);
      o.onRound?.(rec);
      return rec;
    };

    // Failure injection on the last stage's stream (after the vCPUs stopped: the resume is tested).
    const arm = (): void => {
      if (fault === "flip" || fault === "truncate" || fault === "bad-flag") {
        w.mangle = (frame, type) => {
          if (type !== Sec.Ram) return frame;
          w.mangle = null;
          if (fault === "flip") frame[Math.floor(frame.length / 2)] ^= 0x20;
          if (fault === "truncate") {
            stream.write(frame.subarray(0, Math.floor(frame.length / 2)));
            stream.end();
            return null;
          }
          return frame;
        };
      }
    };

    try {
      w.startDigest();
      await w.raw(encodeHeader(fault === "bad-version" ? MIG_VERSION + 98 : MIG_VERSION));
      await w.section(
        Sec.Config,
        jsonPayload({ version: MIG_VERSION, layout, ...(o.postcopy ? { postcopy: true } : {}) }),
      );
      report.setupTimeMs = performance.now() - t0;

      // Bulk round: clear the log, then send every page (a write after the clear is logged).
      this.log.sync(g, harvest);
      syncs++;
      pending.fill(0xffffffff);
      if (pages % 32 !== 0) pending[pending.length - 1] = 2 ** (pages % 32) - 1;
      await sendPending();
      for (;;) {
        const rec = sync();
        // Post-copy: stop iterating after the rounds asked for, whatever is still dirty.
        if (o.postcopy && rounds.length >= (o.postcopyAfter ?? 1)) break;
        const bw = bwBytesPerMs > 0 ? bwBytesPerMs : rec.mbps * 125;
        if (
          !o.postcopy &&
          rounds.length >= o.minRounds &&
          bw > 0 &&
          syncMs + rec.remaining / bw <= o.downtimeLimitMs
        ) {
          report.expectedDowntimeMs = syncMs + rec.remaining / bw;
          break;
        }
        if (ret.failure) throw ret.failure;
        if (performance.now() - t0 > o.maxTimeMs) {
          await w.section(Sec.Cancel, jsonPayload({ reason: `no convergence in ${o.maxTimeMs} ms` }));
          stream.end();
          Atomics.store(g.ctl, MIG_CTL.throttle, 0);
          report.status = "cancelled";
          report.totalTimeMs = performance.now() - t0;
          report.transferredBytes = w.bytes;
          report.error = {
            code: "ECANCELED",
            message: `did not converge in ${o.maxTimeMs} ms (${rec.remaining} bytes still dirty); the source keeps running`,
          };
          return report;
        }
        await sendPending();
      }

      // Switch-over.
      const tPause = performance.now();
      // Ask for the park first, then wake a throttled guest from its sleep: it parks on waking
      // instead of running (and dirtying) one more slice. pause() asks before its first await.
      const parking = g.vm.pause();
      Atomics.notify(g.ctl, MIG_CTL.sleep);
      await parking;
      paused = true;
      const tPaused = performance.now();
      // The vCPUs are parked: their state (the guest's counters) no longer changes.
      const counts = guestCounts(g);
      report.countsAtSwitchover = counts;
      const done = counts.reduce((a, c, i) => a + ((c - countsAtStart[i]) >>> 0), 0);
      report.guestRate = (done * 1000) / Math.max(tPause - t0, 1e-3);
      sync();
      if (o.postcopy) {
        const pc = await postcopySource({
          g,
          w,
          ret,
          pending,
          counts,
          tPause,
          maxBandwidth: o.maxBandwidth,
          commit: () => {
            committed = true;
            report.switchedOver = true;
          },
          onRun: o.onPostcopyRun,
        });
        report.downtimeMs = pc.downtimeMs;
        report.verify = {
          pagesCompared: pc.pagesCompared,
          mismatches: pc.mismatches,
          guestInvariant: pc.guestInvariant,
          problems: pc.problems,
        };
        report.postcopy = pc.stats;
        report.totalTimeMs = performance.now() - t0;
        report.transferredBytes = w.bytes;
        report.throttlePercentage = Atomics.load(g.ctl, MIG_CTL.throttle);
        report.status = pc.mismatches === 0 ? "completed" : "failed";
        if (pc.mismatches > 0) {
          report.error = {
            code: "EBADMSG",
            message: `${pc.mismatches} of ${pc.pagesCompared} pages differ on the destination (the guest runs there: not resumed here)`,
          };
          report.guestLost = true;
        }
        stream.end();
        return report;
      }
      const tSynced = performance.now();
      limited = false;
      arm();
      if (fault === "bad-flag") {
        ram.addRaw(PAGE_SIZE, 0x40);
        await flushRam();
      }
      await sendPending();
      if (fault === "bad-section") await w.section(0x7e, jsonPayload({ what: "a section nobody knows" }));
      await w.section(Sec.Vcpu, jsonPayload({ vcpus: counts.map((counter, id) => ({ id, counter })) }));
      const digest = w.digest();
      await w.section(Sec.Eof, digest);
      const tEof = performance.now();
      report.transferredBytes = w.bytes;
      fault = undefined;

      // The destination loaded everything: compare against our paused memory.
      const loaded = await ret.expect(Sec.Loaded, 30_000);
      const tLoaded = performance.now();
      const mine = pageHashes(g.vm, layout);
      let mismatches = 0;
      const n = Math.min(pages, loaded.payload.length / 32);
      for (let p = 0; p < pages; p++)
        if (
          p >= n ||
          !mine.subarray(p * 32, p * 32 + 32).equals(loaded.payload.subarray(p * 32, p * 32 + 32))
        )
          mismatches++;
      report.verify.pagesCompared = pages;
      report.verify.mismatches = mismatches;
      if (mismatches > 0) {
        await w.section(Sec.Abort, jsonPayload({ mismatches }));
        throw new MigrationError("EBADMSG", `${mismatches} of ${pages} pages differ on the destination`);
      }
      const tGo = performance.now();
      await w.section(Sec.Go, Buffer.alloc(0));
      committed = true;
      report.switchedOver = true;
      const running = await ret.expect(Sec.Running, 30_000);
      const tRunning = performance.now();
      // The destination says how long it hashed its pages (before "loaded"): a peer's word, so
      // bounded by the time we waited for "loaded" (nothing else may leave the downtime).
      const theirHashMs = Math.min(Math.max(0, peerHashMs(running.payload)), tLoaded - tEof);
      report.verifyMs = theirHashMs + (tGo - tLoaded);
      report.downtimeMs = tRunning - tPause - report.verifyMs;
      report.switchover = {
        pauseMs: tPaused - tPause,
        syncMs: tSynced - tPaused,
        sendMs: tEof - tSynced,
        loadMs: tLoaded - tEof - theirHashMs,
        startMs: tRunning - tGo,
        stopMs: tRunning - tPause,
      };
      report.totalTimeMs = performance.now() - t0;
      report.transferredBytes = w.bytes;
      report.throttlePercentage = Atomics.load(g.ctl, MIG_CTL.throttle);
      const ver = JSON.parse((await ret.expect(Sec.Verified, 60_000)).payload.toString()) as {
        ok: boolean;
        problems: string[];
      };
      report.verify.guestInvariant = ver.ok;
      report.verify.problems = ver.problems;
      report.status = "completed";
      stream.end();
      return report;
    } catch (e) {
      report.switchedOver = committed;
      let err = toMigError(e);
      // A local write error usually means the destination hung up: prefer what it said.
      const theirs = await ret.settle(1000);
      if (theirs && err.code !== "EBADMSG") err = theirs;
      report.error = { code: err.code, message: err.message };
      report.status = "failed";
      report.totalTimeMs = performance.now() - t0;
      report.transferredBytes = w.bytes;
      stream.destroy();
      if (committed && o.postcopy) {
        // Neither side holds the whole guest any more: it is lost (no postcopy-paused recovery).
        report.error.message +=
          " (during post-copy: the guest's memory is split between both sides, the guest is lost)";
        report.guestLost = true;
      } else if (committed) {
        // After "go" the guest belongs to the destination: the source must not run it too.
        report.error.message += " (after switch-over: the guest is the destination's)";
      } else if (paused) {
        Atomics.store(g.ctl, MIG_CTL.throttle, 0);
        g.vm.resume();
      } else Atomics.store(g.ctl, MIG_CTL.throttle, 0);
      return report;
    }
  }
}

export interface DestinationOptions {
  wp: WpName;
  mode?: MmuModeName;
  /** Largest guest this destination accepts, in bytes (default 4 GiB). */
  maxMemory?: number;
  /** ms to wait for each section before giving up (default 60000). */
  idleTimeoutMs?: number;
}

export interface DestinationReport {
  status: "completed" | "failed" | "cancelled";
  sections: number;
  pagesApplied: number;
  receivedBytes: number;
  /** Hashing the loaded pages for the source's check (before the vCPUs are released). */
  hashMs: number;
  guestInvariant: boolean | null;
  problems: string[];
  /** Post-copy only: pages that arrived after the guest started here, and the vCPUs' waits. */
  postcopy?: {
    discardedPages: number;
    pagesPlaced: number;
    requests: number;
    vcpus: { id: number; blockedMs: number; maxBlockedMs: number; faults: number }[];
  };
  error?: { code: string; message: string };
}

const SOURCE_TYPES = [
  Sec.Config,
  Sec.Ram,
  Sec.Vcpu,
  Sec.Cancel,
  Sec.Eof,
  Sec.Go,
  Sec.Abort,
  Sec.Discard,
  Sec.Postcopy,
];

export class MigrationDestination {
  /** The VM, once the config section built it; running the guest after a completed migration. */
  guest: GuestVm | null = null;

  constructor(private readonly o: DestinationOptions) {}

  /**
   * Receives one migration. On success the guest runs here (verified: paused, checked, resumed)
   * and `guest` holds it; on failure the VM is stopped and the error goes back to the source.
   */
  async receive(stream: Duplex, r: ByteReader): Promise<DestinationReport> {
    const rep: DestinationReport = {
      status: "failed",
      sections: 0,
      pagesApplied: 0,
      receivedBytes: 0,
      hashMs: 0,
      guestInvariant: null,
      problems: [],
    };
    const back = new SectionWriter(stream);
    let layout: GuestLayout | null = null;
    let postcopy = false;
    try {
      r.hash = (await import("node:crypto")).createHash("sha256");
      await readHeader(r);
      const maxMem = this.o.maxMemory ?? MAX_GUEST_MEMORY;
      let vcpuState: { id: number; counter: number }[] | null = null;
      for (let id = 1; ; id++) {
        const before = r.hash.copy();
        const s = await this.withIdle(readSection(r, id, SOURCE_TYPES), id);
        rep.sections++;
        if (s.type !== Sec.Config && !layout)
          throw new MigrationError(
            "EPROTO",
            `section ${id} (${sectionName(s.type)}) before the config section`,
          );
        if (s.type === Sec.Config) {
          if (layout) throw new MigrationError("EPROTO", `section ${id}: a second config section`);
          const cfg = JSON.parse(s.payload.toString()) as { layout?: unknown; postcopy?: unknown };
          layout = checkLayout(cfg.layout, maxMem);
          postcopy = cfg.postcopy === true;
          this.guest = createGuestVm(layout, { wp: this.o.wp, mode: this.o.mode, logged: false, postcopy });
          // Pre-copy: start the vCPUs now, held, so "go" only has to release them. Post-copy
          // starts them at postcopy-run, after the discarded pages are marked missing (which
          // needs the vCPUs stopped).
          if (!postcopy) {
            Atomics.store(this.guest.ctl, MIG_CTL.hold, 1);
            await runGuest(this.guest);
          }
        } else if (s.type === Sec.Ram) {
          const end = layout!.memoryBytes;
          const recs = decodeRam(s.payload, id, (gpa) => gpa + PAGE_SIZE <= end);
          const zero = new Uint8Array(PAGE_SIZE);
          for (const rec of recs) this.guest!.vm.writeGuest(rec.gpa, rec.data ?? zero);
          rep.pagesApplied += recs.length;
        } else if (s.type === Sec.Vcpu) {
          vcpuState = (JSON.parse(s.payload.toString()) as { vcpus: { id: number; counter: number }[] })
            .vcpus;
        } else if (s.type === Sec.Discard && postcopy) {
          applyDiscard(this.guest!, s.payload, id);
        } else if (s.type === Sec.Postcopy && postcopy) {
          const pc = await postcopyIncoming({
            g: this.guest!,
            r,
            back,
            nextId: id + 1,
            vcpuState,
            read: (n) => this.withIdle(readSection(r, n, SOURCE_TYPES), n),
          });
          rep.sections += pc.sections;
          rep.pagesApplied += pc.pagesPlaced;
          rep.receivedBytes = r.consumed;
          rep.guestInvariant = pc.guestInvariant;
          rep.problems = pc.problems;
          rep.postcopy = {
            discardedPages: pc.discardedPages,
            pagesPlaced: pc.pagesPlaced,
            requests: pc.requests,
            vcpus: pc.vcpus,
          };
          rep.status = "completed";
          stream.end();
          return rep;
        } else if (s.type === Sec.Cancel) {
          rep.status = "cancelled";
          throw new MigrationError("ECANCELED", "the source cancelled the migration");
        } else if (s.type === Sec.Eof) {
          checkStreamDigest(r, before, s.payload);
          break;
        } else
          throw new MigrationError(
            "EPROTO",
            `section ${id} (${sectionName(s.type)}) before the end of the stream`,
          );
      }
      const g = this.guest!;
      if (!vcpuState || vcpuState.length !== layout!.vcpus)
        throw new MigrationError(
          "EPROTO",
          `vcpu state: ${vcpuState?.length ?? 0} vCPUs, the config has ${layout!.vcpus}`,
        );
      const counts = guestCounts(g);
      vcpuState.forEach((v, i) => {
        if (v.id !== i || v.counter !== counts[i])
          throw new MigrationError(
            "EBADMSG",
            `vcpu ${i}: state says count ${v.counter}, memory holds ${counts[i]}`,
          );
      });
      rep.receivedBytes = r.consumed;
      const th = performance.now();
      const hashes = pageHashes(g.vm, layout!);
      rep.hashMs = performance.now() - th;
      await back.section(Sec.Loaded, hashes);
      const go = await this.withIdle(readSection(r, rep.sections + 1, SOURCE_TYPES), rep.sections + 1);
      rep.sections++;
      if (go.type === Sec.Abort)
        throw new MigrationError("ECANCELED", "the source aborted after comparing pages");
      if (go.type !== Sec.Go)
        throw new MigrationError("EPROTO", `${sectionName(go.type)} where go was expected`);
      Atomics.store(g.ctl, MIG_CTL.hold, 0);
      Atomics.notify(g.ctl, MIG_CTL.hold);
      await back.section(Sec.Running, jsonPayload({ hashMs: rep.hashMs }));
      const chk = await runAndCheck(g);
      g.vm.resume();
      rep.guestInvariant = chk.ok;
      rep.problems = chk.problems;
      await back.section(
        Sec.Verified,
        jsonPayload({ ok: chk.ok, problems: chk.problems, before: chk.before, after: chk.after }),
      );
      rep.status = "completed";
      // Our half of the connection is done; the source closes its half after reading this.
      stream.end();
      return rep;
    } catch (e) {
      const err = toMigError(e);
      if (rep.status !== "cancelled") rep.status = "failed";
      rep.error = { code: err.code, message: err.message };
      rep.receivedBytes = r.consumed;
      try {
        if (!stream.destroyed && !stream.writableEnded)
          await back.section(Sec.Error, jsonPayload({ code: err.code, message: err.message }));
        stream.end();
      } catch {
        // The source is gone: nothing to tell it.
      }
      if (this.guest) {
        await this.guest.vm.stop();
        this.guest = null;
      }
      return rep;
    }
  }

  private withIdle<T>(p: Promise<T>, id: number): Promise<T> {
    const ms = this.o.idleTimeoutMs ?? 60_000;
    let t: NodeJS.Timeout | undefined;
    return Promise.race([
      p,
      new Promise<T>((_, rej) => {
        t = setTimeout(
          () => rej(new MigrationError("ETIMEDOUT", `no section ${id} from the source in ${ms} ms`)),
          ms,
        );
      }),
    ]).finally(() => clearTimeout(t));
  }
}

/**
 * The source of a live migration, as QEMU's migration thread drives it, over any duplex stream.
 *
 * The state machine (state.ts) goes setup -> active -> device (or postcopy-active) -> completed,
 * or to failed / cancelled. Setup sends the stream header and the config section and clears the
 * dirty log. While active, the RAM handler (ram.ts) sends what is pending under the rate limiter
 * (rate_limit.ts) and syncs the dirty log each round; auto-converge's throttle (throttle.ts)
 * slows a guest that dirties faster than the link sends. The source switches over once the
 * expected downtime (the last sync's time plus the dirty bytes left over the measured bandwidth)
 * fits the downtime limit; past maxTimeMs it cancels and the guest runs on here.
 *
 * At switch-over ("device") the vCPUs are paused and the last dirty pages (not rate-limited, as
 * QEMU's completion stage), the vCPU state and the stream digest go over; the destination's page
 * hashes are checked against this paused memory, and "go" tells the destination to run the guest.
 * Until that "go" the source owns the guest: any failure resumes it here with nothing lost.
 * Post-copy (postcopy.ts) takes over at switch-over instead when asked.
 *
 * Downtime is QEMU's: from the source's vCPU stop to the guest running on the destination, less
 * the page-hash verification (a check of this model that a real migration does not make), which
 * is reported apart as verifyMs.
 */
import type { Duplex } from "node:stream";
import { randomBytes } from "node:crypto";
import { PAGE_SIZE } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { GuestVm, guestCounts, pageHashes } from "./guest_vm.js";
import { DirtyLogStrategy, DirtyRingLog, logStrategy, needsDirtyRing } from "./log_sync.js";
import { checkDirtyLimit, DirtyLimit } from "./dirtylimit.js";
import { FaultInjector, FaultKind } from "./fault.js";
import { MigrationState, MigrationStateError, MigrationStatus } from "./state.js";
import { RateLimiter } from "./rate_limit.js";
import { CpuThrottle } from "./throttle.js";
import { RamSaveState } from "./ram.js";
import { ReturnPath } from "./return_path.js";
import type { MigrationReport, RoundRecord } from "./report.js";
import {
  ByteReader,
  encodeHeader,
  jsonPayload,
  MIG_VERSION,
  MigrationError,
  Sec,
  SectionWriter,
} from "./stream.js";
import { postcopySource } from "./postcopy.js";
import { ChannelCredentials, checkChannels, MultifdSend, parseAnnounce, peerHost } from "./multifd.js";
import type { RecoverConnection } from "./recover.js";

export interface SourceOptions {
  /** Most the guest may stay stopped at switch-over, in ms (QEMU's downtime-limit; 300). */
  downtimeLimitMs?: number;
  /** Bytes per second; 0 or absent: no limit. */
  maxBandwidth?: number;
  /** Throttle the guest when it dirties faster than the link sends (20%, +10% a step, <= 99%). */
  autoConverge?: boolean;
  /**
   * dirty-limit (dirtylimit.ts): once the guest dirties faster than the link sends (auto-converge's
   * trigger), each vCPU is held to this many MB/s by sleeping in its ring-full exits. Needs the
   * dirty-ring log; not with autoConverge (QEMU refuses both too).
   */
  dirtyLimit?: number;
  /** dirty-limit's measurement period, ms (QEMU's x-vcpu-dirty-limit-period, 1000). */
  dirtyLimitPeriodMs?: number;
  /**
   * Dirty ring only: reap the rings at each ring-full exit, as QEMU's vCPU threads do, so a vCPU
   * with a full ring goes on at once (default: with dirtyLimit only; otherwise a vCPU with a
   * full ring waits for the next sync, which throttles it by itself).
   */
  dirtyRingReaper?: boolean;
  /** Rounds (the bulk round counts) before switch-over is allowed (1). */
  minRounds?: number;
  /** Cancel (the source keeps running) past this many ms of iteration (60000). */
  maxTimeMs?: number;
  log?: DirtyLogStrategy;
  /** Stream damage to inject (fault.ts); kill-destination is the caller's to do (see onRound). */
  fault?: FaultKind;
  /** Called after each sync with that round's record. */
  onRound?: (r: RoundRecord) => void;
  /** Called after each state transition. */
  onStateChange?: (to: MigrationStatus, from: MigrationStatus) => void;
  /** Switch to post-copy (postcopy.ts) instead of converging: after postcopyAfter rounds (1: the bulk round). */
  postcopy?: boolean;
  postcopyAfter?: number;
  /** Post-copy: called once the destination owns the guest (failure injection). */
  onPostcopyRun?: () => void;
  /**
   * Post-copy recovery (QEMU's `migrate -r`): when the link drops during post-copy, the source
   * pauses (postcopy-paused, its vCPUs stopped, its pages kept) and asks this for a new
   * connection to the destination, authenticated as the first; then the recover handshake
   * (recover.ts) and post-copy goes on. It rejects, typed, when there will be none: the guest
   * is then lost. Absent: a dropped link during post-copy loses the guest.
   */
  postcopyRecover?: RecoverConnection;
  /** `fault` is injected into this many connections (default 1): drop-link and recovery. */
  faultRepeat?: number;
  /**
   * multifd (multifd.ts): pages over this many extra connections, a worker each (1..16; 1, the
   * default: the main stream only). Pre-copy only. Needs channelCredentials.
   */
  channels?: number;
  /** The main connection's key and security mode, which each channel uses again. */
  channelCredentials?: ChannelCredentials;
}

/**
 * How long a failed source waits for the destination's error when its own is a consequence
 * (it comes at once from a destination that failed; only a wedged one makes the wait last).
 * The main connection stays open meanwhile, so its end cannot reach the destination before
 * the channel failure that explains it (a loaded destination thread may notice that late).
 */
const SETTLE_MS = 15_000;

/** The channel faults are the channel workers' (multifd_send_worker.ts), not the main stream's. */
const CHANNEL_FAULTS: readonly string[] = ["channel-auth", "drop-channel"];

type Resolved = Required<
  Pick<SourceOptions, "downtimeLimitMs" | "maxBandwidth" | "autoConverge" | "minRounds" | "maxTimeMs">
> &
  SourceOptions & { postcopyAfter: number };

/** The `hashMs` of a "running" payload; 0 when absent or unreadable (an older destination). */
function peerHashMs(payload: Buffer): number {
  try {
    const x = Number((JSON.parse(payload.toString()) as { hashMs?: unknown }).hashMs);
    return Number.isFinite(x) ? x : 0;
  } catch {
    return 0;
  }
}

export function toMigError(e: unknown): MigrationError {
  if (e instanceof MigrationError) return e;
  if (e instanceof KvmError) return new MigrationError(e.code, e.message.replace(/^[A-Z]+: /, ""));
  return new MigrationError("EIO", (e as Error).message ?? String(e));
}

export class MigrationSource {
  private readonly o: Resolved;
  private readonly log: DirtyLogStrategy;

  constructor(
    readonly g: GuestVm,
    opts: SourceOptions = {},
  ) {
    const o: Resolved = {
      downtimeLimitMs: 300,
      maxBandwidth: 0,
      autoConverge: false,
      minRounds: 1,
      maxTimeMs: 60_000,
      ...opts,
      postcopyAfter: opts.postcopyAfter ?? 1,
    };
    this.o = o;
    this.log = opts.log ?? logStrategy("dirty-log");
    if (!(o.downtimeLimitMs > 0)) throw new MigrationError("EINVAL", "downtimeLimitMs: must be > 0");
    if (!(o.maxBandwidth >= 0)) throw new MigrationError("EINVAL", "maxBandwidth: must be >= 0");
    if (!Number.isSafeInteger(o.minRounds) || o.minRounds < 1)
      throw new MigrationError("EINVAL", "minRounds: must be >= 1");
    if (!(o.maxTimeMs > 0)) throw new MigrationError("EINVAL", "maxTimeMs: must be > 0");
    if (!Number.isSafeInteger(o.postcopyAfter) || o.postcopyAfter < 1)
      throw new MigrationError("EINVAL", "postcopyAfter: must be >= 1");
    const rep = o.faultRepeat ?? 1;
    if (!Number.isSafeInteger(rep) || rep < 1 || rep > 1000)
      throw new MigrationError("EINVAL", "faultRepeat: must be an integer 1..1000");
    if (o.postcopyRecover !== undefined && typeof o.postcopyRecover !== "function")
      throw new MigrationError("EINVAL", "postcopyRecover: must be a function returning a connection");
    // A MigrationSource made directly (not through migrate.ts) gets the same check.
    const ring = this.log instanceof DirtyRingLog ? "dirty-ring" : this.log.name;
    if (o.dirtyRingReaper) needsDirtyRing("dirtyRingReaper", ring);
    const ch = checkChannels(o.channels ?? 1);
    if (ch > 1 && o.postcopy)
      throw new MigrationError(
        "EINVAL",
        "channels: not with postcopy (post-copy over multifd channels is not built)",
      );
    if (ch > 1 && !o.channelCredentials)
      throw new MigrationError(
        "EINVAL",
        "channelCredentials: channels > 1 needs the main connection's key and security",
      );
    if (o.fault !== undefined && CHANNEL_FAULTS.includes(o.fault) && ch < 2)
      throw new MigrationError("EINVAL", `fault: ${o.fault} needs channels > 1`);
    if (o.dirtyLimit !== undefined) {
      checkDirtyLimit(o.dirtyLimit, o.dirtyLimitPeriodMs);
      needsDirtyRing("dirtyLimit", ring);
      if (o.autoConverge) throw new MigrationError("EINVAL", "dirtyLimit: not with autoConverge");
    }
  }

  /**
   * Migrates the running guest over `stream` (already authenticated; `reader` reads its other
   * direction). Never throws for a migration failure: the report says what happened. On
   * "completed" the source vCPUs are left paused (the caller stops the VM); otherwise they run.
   * Throws MigrationStateError only for a bug (an illegal state transition).
   */
  migrate(stream: Duplex, reader: ByteReader): Promise<MigrationReport> {
    return new SourceRun(this.g, this.o, this.log, stream, reader).run();
  }
}

/** One migration's source side: the migration thread's state, its handlers and its report. */
class SourceRun {
  readonly state: MigrationState;
  /** The connection: replaced by a post-copy recovery (attach). */
  private out!: Duplex;
  private w!: SectionWriter;
  private ret!: ReturnPath;
  /** Bytes written on connections before the current one. */
  private bytesBefore = 0;
  /** Where the destination is: the channels connect there. */
  private readonly peer: string;
  /** Connections the fault is still to be injected into; the current one's injector. */
  private faultsLeft: number;
  private inj: FaultInjector | null = null;
  /** Names this migration to the destination (a recovering source must be the same). */
  private readonly migrationId = randomBytes(16).toString("hex");
  private readonly limiter: RateLimiter;
  private readonly throttle: CpuThrottle;
  private readonly dirtyLimit: DirtyLimit | null;
  private readonly ram: RamSaveState;
  private readonly report: MigrationReport;
  private readonly t0 = performance.now();
  private readonly countsAtStart: number[];
  private lastSync = this.t0;
  private sentAtSync = 0;
  /** The vCPUs are parked for switch-over; committed: the guest was handed over. */
  private paused = false;
  private committed = false;
  private counts: number[] = [];
  private tPause = 0;
  private tPaused = 0;

  constructor(
    private readonly g: GuestVm,
    private readonly o: Resolved,
    log: DirtyLogStrategy,
    stream: Duplex,
    reader: ByteReader,
  ) {
    this.faultsLeft = o.faultRepeat ?? 1;
    this.peer = peerHost(stream);
    this.state = new MigrationState((to, from) => {
      if (to === "device") this.inj?.arm();
      o.onStateChange?.(to, from);
    });
    this.attach(stream, reader);
    this.limiter = new RateLimiter(o.maxBandwidth);
    this.throttle = new CpuThrottle(g.ctl);
    this.dirtyLimit =
      o.dirtyLimit !== undefined || o.dirtyRingReaper
        ? new DirtyLimit(
            g,
            log as DirtyRingLog,
            o.dirtyLimit !== undefined ? { quotaMBps: o.dirtyLimit, periodMs: o.dirtyLimitPeriodMs } : null,
          )
        : null;
    this.ram = new RamSaveState(g, this.w, this.limiter, log);
    this.countsAtStart = guestCounts(g);
    this.report = {
      status: "failed",
      switchedOver: false,
      mode: o.postcopy ? "postcopy" : "precopy",
      logMode: log.name,
      rounds: [],
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
  }

  /** A connection: its writer (through the fault injector, while faults are left) and return path. */
  private attach(stream: Duplex, reader: ByteReader): void {
    // kill-destination is the caller's (it owns the destination): nothing to wrap for it.
    const f = this.o.fault;
    const wraps = f && f !== "kill-destination" && !CHANNEL_FAULTS.includes(f);
    this.inj = wraps && this.faultsLeft-- > 0 ? new FaultInjector(stream, f) : null;
    this.out = this.inj ?? stream;
    this.w = new SectionWriter(this.out);
    // A fault injector may hold a frame past its write: frames are reused only without one.
    this.w.reuseFrames = this.inj === null;
    this.w.sessionKey = reader.sessionKey;
    this.ret = new ReturnPath(reader);
  }

  /** Post-copy recovery: the dropped connection closed, a new one from postcopyRecover. */
  private async reconnect(pausedAt: number): Promise<{ w: SectionWriter; ret: ReturnPath }> {
    this.out.destroy();
    const conn = await this.o.postcopyRecover!(pausedAt);
    this.bytesBefore += this.w.bytes;
    this.w.stopDigest();
    this.attach(conn.stream, conn.reader);
    return { w: this.w, ret: this.ret };
  }

  private get bytes(): number {
    return this.bytesBefore + this.sent;
  }

  /** Bytes of this connection: the main stream's and, with multifd, the channels'. */
  private get sent(): number {
    return this.w.bytes + (this.ram.multifd?.bytes ?? 0);
  }

  async run(): Promise<MigrationReport> {
    try {
      await this.setup();
      if (!(await this.iterate())) return this.report;
      await this.stopGuest();
      if (this.o.postcopy) await this.completePostcopy();
      else await this.completePrecopy();
      this.g.vm.traceEvent("migration_switchover", "E", this.w.bytes);
      return this.report;
    } catch (e) {
      if (e instanceof MigrationStateError) throw e;
      return await this.fail(e);
    }
  }

  /** QEMU's qemu_savevm_state_setup: header, config, and the RAM handler's setup. */
  private async setup(): Promise<void> {
    this.state.set("setup");
    this.w.startDigest();
    await this.w.raw(encodeHeader(MIG_VERSION));
    const layout = this.g.layout;
    await this.w.section(
      Sec.Config,
      jsonPayload({
        version: MIG_VERSION,
        layout,
        ...(this.o.postcopy ? { postcopy: true, migrationId: this.migrationId } : {}),
        ...((this.o.channels ?? 1) > 1 ? { channels: this.o.channels } : {}),
      }),
    );
    if ((this.o.channels ?? 1) > 1) await this.startChannels();
    this.report.setupTimeMs = performance.now() - this.t0;
    this.ram.save_setup();
    this.dirtyLimit?.run();
    this.state.set("active");
  }

  /** multifd: the destination's listeners (on the return path), a connected worker each. */
  private async startChannels(): Promise<void> {
    // The destination builds (and first-touches) its memory before it listens: seconds for a
    // large guest on a loaded machine. The migration's own time bounds the wait.
    const s = await this.ret.expect(Sec.MultifdChannels, this.o.maxTimeMs);
    const n = this.o.channels!;
    const announce = parseAnnounce(s.payload, n);
    if (!this.w.sessionKey)
      throw new MigrationError(
        "EINVAL",
        "channels: the main connection was not authenticated (no session key)",
      );
    this.ram.multifd = await MultifdSend.start({
      g: this.g,
      host: this.o.channelCredentials!.host ?? this.peer,
      announce,
      creds: this.o.channelCredentials!,
      sessionKey: this.w.sessionKey,
      maxBandwidth: this.o.maxBandwidth,
      fault: CHANNEL_FAULTS.includes(this.o.fault ?? "")
        ? (this.o.fault as "channel-auth" | "drop-channel")
        : undefined,
    });
    this.report.channels = n;
  }

  /** The active state's rounds; true: switch over now, false: cancelled. */
  private async iterate(): Promise<boolean> {
    const o = this.o;
    this.g.vm.traceEvent("migration_round", "B", 1);
    await this.ram.save_live_iterate(); // the bulk round
    for (;;) {
      const rec = this.syncRound();
      // Post-copy: stop iterating after the rounds asked for, whatever is still dirty.
      if (o.postcopy && this.report.rounds.length >= o.postcopyAfter) return true;
      const bw = this.limiter.bandwidth > 0 ? this.limiter.bandwidth : rec.mbps * 125;
      const expected = this.ram.syncMs + rec.remaining / bw;
      if (
        !o.postcopy &&
        this.report.rounds.length >= o.minRounds &&
        bw > 0 &&
        expected <= o.downtimeLimitMs
      ) {
        this.report.expectedDowntimeMs = expected;
        return true;
      }
      if (this.ret.failure) throw this.ret.failure;
      if (this.dirtyLimit?.error) throw this.dirtyLimit.error;
      if (performance.now() - this.t0 > o.maxTimeMs) {
        await this.cancel(rec);
        return false;
      }
      await this.ram.save_live_iterate();
    }
  }

  /** A dirty-log sync and its round record (QEMU's query-migrate fields). */
  private syncRound(): RoundRecord {
    const { ram } = this;
    const remaining = ram.state_pending_exact();
    const now = performance.now();
    const sent = this.sent;
    const sentSince = sent - this.sentAtSync;
    const dt = Math.max(now - this.lastSync, 1e-3);
    const limit = this.o.dirtyLimit !== undefined;
    if ((this.o.autoConverge || limit) && ram.syncs > 1 && !this.paused)
      if (this.throttle.triggered(ram.freshPages * PAGE_SIZE, sentSince)) {
        // migration_trigger_throttle: auto-converge steps the CPU throttle, dirty-limit starts.
        if (limit) this.dirtyLimit?.start();
        else this.throttle.guestDown();
      }
    const bw = this.limiter.bandwidth > 0 ? this.limiter.bandwidth : sentSince / dt;
    this.lastSync = now;
    this.sentAtSync = sent;
    const rec: RoundRecord = {
      round: this.report.rounds.length + 1,
      "time-ms": Math.round(now - this.t0),
      transferred: sent,
      remaining,
      total: this.g.layout.memoryBytes,
      duplicate: ram.duplicate,
      normal: ram.normal,
      "normal-bytes": ram.normal * PAGE_SIZE,
      "dirty-pages-rate": Math.round((ram.freshPages * 1000) / dt),
      mbps: Number(((bw * 1000 * 8) / 1e6).toFixed(2)),
      "dirty-sync-count": ram.syncs,
      // The stop costs one more sync (the harvest with the vCPUs parked) and the send.
      "expected-downtime": bw > 0 ? Math.round(ram.syncMs + remaining / bw) : 0,
      "cpu-throttle-percentage": this.throttle.percentage,
    };
    const dl = this.dirtyLimit;
    if (dl && this.o.dirtyLimit !== undefined) {
      rec["dirty-limit-throttle-time-per-round"] = dl.active ? dl.throttleTimePerRound : 0;
      rec["dirty-limit-ring-full-time"] = dl.active ? dl.ringFullTime : 0;
    }
    this.report.rounds.push(rec);
    // The round ends at its sync; the next begins unless this was switch-over's sync.
    this.g.vm.traceEvent("migration_round", "E", ram.normal, sent);
    if (!this.paused) this.g.vm.traceEvent("migration_round", "B", rec.round + 1);
    this.o.onRound?.(rec);
    return rec;
  }

  /** No convergence in maxTimeMs: tell the destination, and the guest runs on here. */
  private async cancel(rec: RoundRecord): Promise<void> {
    const o = this.o;
    this.state.set("cancelling");
    await this.w.section(Sec.Cancel, jsonPayload({ reason: `no convergence in ${o.maxTimeMs} ms` }));
    this.out.end();
    this.w.stopDigest();
    // The channels close once the destination has read the cancel (it answers, or closes):
    // a channel's end must not reach it first and pass for the cause.
    if (this.ram.multifd) await this.ret.settle(SETTLE_MS);
    this.ram.multifd?.close();
    this.throttle.stop();
    await this.stopDirtyLimit();
    this.report.totalTimeMs = performance.now() - this.t0;
    this.report.transferredBytes = this.bytes;
    this.report.error = new MigrationError(
      "ECANCELED",
      `did not converge in ${o.maxTimeMs} ms (${rec.remaining} bytes still dirty); the source keeps running`,
    ).report();
    this.state.set("cancelled");
    this.report.status = "cancelled";
  }

  /** Switch-over: pause the vCPUs, take their state, and make the last sync. */
  private async stopGuest(): Promise<void> {
    const g = this.g;
    this.state.set(this.o.postcopy ? "postcopy-active" : "device");
    // The vCPUs stop now: no more sleeps (at most one poll of the limiter's loop, before the stop).
    await this.stopDirtyLimit();
    this.tPause = performance.now();
    g.vm.traceEvent("migration_round", "E", this.ram.normal, this.w.bytes);
    g.vm.traceEvent("migration_switchover", "B", this.report.rounds.at(-1)?.remaining ?? 0);
    // Ask for the park first, then wake a throttled guest from its sleep: it parks on waking
    // instead of running (and dirtying) one more slice. pause() asks before its first await.
    const parking = g.vm.pause();
    this.throttle.wake();
    await parking;
    this.paused = true;
    this.tPaused = performance.now();
    // The vCPUs are parked: their state (the guest's counters) no longer changes.
    const counts = guestCounts(g);
    this.counts = counts;
    this.report.countsAtSwitchover = counts;
    const done = counts.reduce((a, c, i) => a + ((c - this.countsAtStart[i]) >>> 0), 0);
    this.report.guestRate = (done * 1000) / Math.max(this.tPause - this.t0, 1e-3);
    this.syncRound();
  }

  /** QEMU's migration_completion for pre-copy: last pages, vCPU state, verify, "go". */
  private async completePrecopy(): Promise<void> {
    const { w, ret, report } = this;
    const tSynced = performance.now();
    await this.ram.save_live_complete_precopy();
    await this.finishChannels();
    await w.section(Sec.Vcpu, jsonPayload({ vcpus: this.counts.map((counter, id) => ({ id, counter })) }));
    await w.section(Sec.Eof, await w.digest());
    const tEof = performance.now();
    report.transferredBytes = this.sent;

    // The destination loaded everything: compare against our paused memory.
    const loaded = await ret.expect(Sec.Loaded, 30_000);
    const tLoaded = performance.now();
    await this.comparePages(loaded.payload);
    const tGo = performance.now();
    await w.section(Sec.Go, Buffer.alloc(0));
    this.committed = true;
    report.switchedOver = true;
    const running = await ret.expect(Sec.Running, 30_000);
    const tRunning = performance.now();
    // The destination says how long it hashed its pages (before "loaded"): a peer's word, so
    // bounded by the time we waited for "loaded" (nothing else may leave the downtime).
    const theirHashMs = Math.min(Math.max(0, peerHashMs(running.payload)), tLoaded - tEof);
    report.verifyMs = theirHashMs + (tGo - tLoaded);
    report.downtimeMs = tRunning - this.tPause - report.verifyMs;
    report.switchover = {
      pauseMs: this.tPaused - this.tPause,
      syncMs: tSynced - this.tPaused,
      sendMs: tEof - tSynced,
      loadMs: tLoaded - tEof - theirHashMs,
      startMs: tRunning - tGo,
      stopMs: tRunning - this.tPause,
    };
    report.totalTimeMs = performance.now() - this.t0;
    report.transferredBytes = this.sent;
    report.throttlePercentage = this.throttle.percentage;
    const ver = JSON.parse((await ret.expect(Sec.Verified, 60_000)).payload.toString()) as {
      ok: boolean;
      problems: string[];
    };
    report.verify.guestInvariant = ver.ok;
    report.verify.problems = ver.problems;
    this.state.set("completed");
    report.status = "completed";
    this.out.end();
  }

  /** multifd: every channel's EOF (its keyed digest); the bytes of each. */
  private async finishChannels(): Promise<void> {
    const mf = this.ram.multifd;
    if (!mf) return;
    await mf.finish();
    this.report.channelBytes = [...mf.channelBytes];
  }

  /** The destination's page hashes against our paused memory; a mismatch aborts (EBADMSG). */
  private async comparePages(theirs: Buffer): Promise<void> {
    const pages = this.ram.pages;
    const mine = pageHashes(this.g.vm, this.g.layout);
    let mismatches = 0;
    const n = Math.min(pages, theirs.length / 32);
    for (let p = 0; p < pages; p++)
      if (p >= n || !mine.subarray(p * 32, p * 32 + 32).equals(theirs.subarray(p * 32, p * 32 + 32)))
        mismatches++;
    this.report.verify.pagesCompared = pages;
    this.report.verify.mismatches = mismatches;
    if (mismatches > 0) {
      await this.w.section(Sec.Abort, jsonPayload({ mismatches }));
      throw new MigrationError("EBADMSG", `${mismatches} of ${pages} pages differ on the destination`);
    }
  }

  /** Ends dirty-limit (the vCPUs sleep no more) and reports what it did. */
  private async stopDirtyLimit(): Promise<void> {
    const dl = this.dirtyLimit;
    if (!dl || dl.ended) return;
    const throttleUs = [...dl.throttleUs];
    const started = dl.active;
    await dl.stop();
    if (this.o.dirtyLimit === undefined) return;
    this.report.dirtyLimit = {
      "vcpu-dirty-limit": dl.quota,
      periodMs: dl.periodMs,
      started,
      throttleUsPerFull: throttleUs,
      rates: [...dl.rates],
      ringFullReaps: dl.reaps,
      periods: dl.periods,
    };
  }

  /** Post-copy from switch-over on (postcopy.ts): the destination runs the guest and pulls pages. */
  private async completePostcopy(): Promise<void> {
    const report = this.report;
    const tSynced = performance.now();
    const pc = await postcopySource({
      g: this.g,
      w: this.w,
      ret: this.ret,
      pending: this.ram.pending,
      counts: this.counts,
      tPause: this.tPause,
      maxBandwidth: this.o.maxBandwidth,
      commit: () => {
        this.committed = true;
        report.switchedOver = true;
      },
      onRun: this.o.onPostcopyRun,
      reconnect: this.o.postcopyRecover ? (t) => this.reconnect(t) : undefined,
      migrationId: this.migrationId,
      setState: (to) => this.state.set(to),
    });
    report.downtimeMs = pc.downtimeMs;
    // startMs: the destination checks the vCPU state, hashes the few pages it holds, releases
    // its started vCPUs. verifyMs stays 0: those hashes are in the downtime.
    report.switchover = {
      pauseMs: this.tPaused - this.tPause,
      syncMs: tSynced - this.tPaused,
      sendMs: pc.tRun - tSynced,
      loadMs: 0,
      startMs: pc.tRunning - pc.tRun,
      stopMs: pc.downtimeMs,
    };
    report.verify = {
      pagesCompared: pc.pagesCompared,
      mismatches: pc.mismatches,
      guestInvariant: pc.guestInvariant,
      problems: pc.problems,
    };
    report.postcopy = pc.stats;
    report.totalTimeMs = performance.now() - this.t0;
    report.transferredBytes = this.bytes;
    report.throttlePercentage = this.throttle.percentage;
    if (pc.mismatches > 0) {
      report.error = new MigrationError(
        "EBADMSG",
        `${pc.mismatches} of ${pc.pagesCompared} pages differ on the destination (the guest runs there: not resumed here)`,
      ).report();
      report.guestLost = true;
    }
    this.state.set(pc.mismatches === 0 ? "completed" : "failed");
    report.status = this.state.outcome();
    this.out.end();
  }

  /** Any failure: the report says what; the guest resumes here unless it was handed over. */
  private async fail(e: unknown): Promise<MigrationReport> {
    const report = this.report;
    report.switchedOver = this.committed;
    // The first cause wins: a channel's that failed before this thread did, then ours unless
    // it is a consequence (the destination hung up) and the destination names a cause.
    let err = toMigError(e);
    if (this.ram.multifd) err = await this.ram.multifd.firstCause(err);
    err = await this.ret.reported(err, SETTLE_MS);
    report.error = err.report();
    if (!this.state.final) this.state.set("failed");
    report.status = "failed";
    report.totalTimeMs = performance.now() - this.t0;
    report.transferredBytes = this.bytes;
    this.w.stopDigest();
    this.ram.multifd?.close();
    this.out.destroy();
    if (this.committed && this.o.postcopy) {
      // Neither side holds the whole guest any more: it is lost (or its recovery failed).
      report.error.message +=
        " (during post-copy: the guest's memory is split between both sides, the guest is lost)";
      report.guestLost = true;
    } else if (this.committed) {
      // After "go" the guest belongs to the destination: the source must not run it too.
      report.error.message += " (after switch-over: the guest is the destination's)";
    } else {
      this.throttle.stop();
      await this.stopDirtyLimit().catch(() => {});
      if (this.paused) this.g.vm.resume();
    }
    return report;
  }
}

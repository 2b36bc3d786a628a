/**
 * The destination of a live migration (QEMU's incoming side): builds the VM the config section
 * describes and starts its vCPUs held (they touch no memory until released, as QEMU's
 * destination process is up before switch-over), loads RAM sections through the RAM handler,
 * checks the digest, answers with its page hashes, and on "go" releases the guest and checks
 * its invariant. A post-copy stream hands over to postcopy_incoming.ts at "postcopy-run". It goes
 * through the same states as the source (state.ts).
 */
import type { Duplex } from "node:stream";
import type { MmuModeName, Vm } from "../vm.js";
import type { DesignName } from "../mmu/design.js";
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
import { MigrationState, MigrationStateError, MigrationStatus } from "./state.js";
import { RamLoadState } from "./ram.js";
import type { DestinationReport } from "./report.js";
import { toMigError } from "./precopy.js";
import {
  ByteReader,
  checkStreamDigest,
  jsonPayload,
  MigrationError,
  readHeader,
  readSection,
  Sec,
  Section,
  SectionWriter,
  sectionName,
} from "./stream.js";
import { applyDiscard, postcopyIncoming } from "./postcopy_incoming.js";
import type { IncomingLink, RecoverConnection } from "./recover.js";
import { StreamHash } from "./stream_hash.js";
import { ChannelCredentials, checkChannels, localHost, MultifdRecv } from "./multifd.js";

export interface DestinationOptions {
  wp: DesignName;
  mode?: MmuModeName;
  /** Largest guest this destination accepts, in bytes (default 4 GiB). */
  maxMemory?: number;
  /**
   * Idle timeout: ms any read may wait for its next byte before the migration fails with
   * ETIMEDOUT naming the phase (default 30000). It must exceed the source's verification time
   * (hashing its whole guest, ~2.4 s for 256 MiB here) since "go" follows it.
   */
  idleTimeoutMs?: number;
  /**
   * Post-copy recovery: when the link drops during post-copy, the destination pauses
   * (postcopy-paused, its vCPUs waiting on their missing pages) and asks this for the source's
   * new connection, authenticated as the first (migrate-recover). It rejects, typed, when none
   * comes: the guest is then lost. Absent: a dropped link loses the guest at once.
   */
  postcopyRecover?: RecoverConnection;
  /** Called after each state transition (the source's option of the same name). */
  onStateChange?: (to: MigrationStatus, from: MigrationStatus) => void;
  /** Called with the destination's VM before its vCPUs exist (--trace: vm.enableTrace). */
  onVm?: (vm: Vm, name: string) => void;
  /**
   * multifd (multifd.ts): the channels this destination expects (default: as many as the
   * source's config asks, up to 16); a source asking for another count is refused (EPROTO).
   */
  channels?: number;
  /** The main connection's key and security mode, which each channel uses again. */
  channelCredentials?: ChannelCredentials;
}

export const DEFAULT_IDLE_TIMEOUT_MS = 30_000;
/** After a failure: how long the peer may take to read our error and close, before we cut it. */
const CLOSE_GRACE_MS = 2_000;

/**
 * Ends our half of the connection and drops whatever still comes in; the socket is destroyed
 * when the peer closes or after CLOSE_GRACE_MS, whatever the peer does (nothing of ours is left
 * holding the process).
 */
export function closeConnection(stream: Duplex, r: ByteReader): Promise<void> {
  r.drain();
  return new Promise<void>((res) => {
    if (stream.destroyed) {
      res();
      return;
    }
    const t = setTimeout(() => stream.destroy(), CLOSE_GRACE_MS);
    t.unref();
    stream.once("close", () => {
      clearTimeout(t);
      res();
    });
    if (!stream.writableEnded) stream.end();
  });
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
  Sec.MultifdFlush,
];

type VcpuState = { id: number; counter: number }[];

export class MigrationDestination {
  /** The VM, once the config section built it; running the guest after a completed migration. */
  guest: GuestVm | null = null;
  readonly state = new MigrationState((to, from) => this.o.onStateChange?.(to, from));
  /** The connection in use: the first, or the last a post-copy recovery brought. */
  connection: { stream: Duplex; reader: ByteReader } | null = null;
  private migrationId: string | null = null;
  /** The same, as post-copy reads and writes it (set by receive()). */
  private link!: IncomingLink;
  /** multifd: the channels, once the config asked for them. */
  private mf: MultifdRecv | null = null;

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
    this.connection = { stream, reader: r };
    this.link = { stream, r, back, nextId: 1 };
    const idleMs = this.o.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
    r.idle = { ms: idleMs, phase: () => this.state.status };
    try {
      if (!Number.isSafeInteger(idleMs) || idleMs < 1)
        throw new MigrationError("EINVAL", "idleTimeoutMs: must be an integer >= 1");
      this.state.set("setup");
      r.hash = new StreamHash();
      await readHeader(r);
      if ((await this.load(r, back, rep)) === "postcopy") {
        this.state.set("completed");
        rep.status = "completed";
        this.link.stream.end();
        return rep;
      }
      await this.complete(r, back, rep);
      this.state.set("completed");
      rep.status = "completed";
      // Our half of the connection is done; the source closes its half after reading this.
      stream.end();
      return rep;
    } catch (e) {
      // After a post-copy recovery the error goes on the connection in use.
      const l = this.link;
      return await this.fail(e, l.stream, l.back, l.r, rep);
    }
  }

  /** Reads sections up to EOF (or through post-copy); returns the vCPU state, or "postcopy". */
  private async load(
    r: ByteReader,
    back: SectionWriter,
    rep: DestinationReport,
  ): Promise<"precopy" | "postcopy"> {
    let layout: GuestLayout | null = null;
    let ram: RamLoadState | null = null;
    let postcopy = false;
    let vcpuState: VcpuState | null = null;
    for (let id = 1; ; id++) {
      r.hash!.mark();
      const s = await readSection(r, id, SOURCE_TYPES);
      rep.sections++;
      if (s.type !== Sec.Config && !layout)
        throw new MigrationError(
          "EPROTO",
          `section ${id} (${sectionName(s.type)}) before the config section`,
        );
      if (s.type === Sec.Config) {
        if (layout) throw new MigrationError("EPROTO", `section ${id}: a second config section`);
        const cfg = JSON.parse(s.payload.toString()) as {
          layout?: unknown;
          postcopy?: unknown;
          migrationId?: unknown;
          channels?: unknown;
        };
        layout = checkLayout(cfg.layout, this.o.maxMemory ?? MAX_GUEST_MEMORY);
        postcopy = cfg.postcopy === true;
        if (typeof cfg.migrationId === "string") this.migrationId = cfg.migrationId;
        ram = new RamLoadState(await this.build(layout, postcopy));
        await this.startChannels(cfg, postcopy, r, back, rep);
        this.state.set("active");
      } else if (s.type === Sec.Ram) {
        rep.pagesApplied += ram!.load_state(s.payload, id);
      } else if (s.type === Sec.Vcpu) {
        vcpuState = (JSON.parse(s.payload.toString()) as { vcpus: VcpuState }).vcpus;
      } else if (s.type === Sec.Discard && postcopy) {
        await applyDiscard(this.guest!, s.payload, id);
      } else if (s.type === Sec.Postcopy && postcopy) {
        this.state.set("postcopy-active");
        const vm = this.guest!.vm;
        vm.traceEvent("migration_incoming", "E", rep.pagesApplied, r.consumed);
        vm.traceEvent("migration_switchover", "B", 0);
        await this.postcopy(r, back, rep, id, vcpuState);
        vm.traceEvent("migration_switchover", "E", rep.receivedBytes);
        return "postcopy";
      } else if (s.type === Sec.Cancel) {
        this.state.set("cancelling");
        throw new MigrationError("ECANCELED", "the source cancelled the migration");
      } else if (s.type === Sec.MultifdFlush && this.mf) {
        // A round is complete only once every channel has delivered it (multifd_recv_sync_main).
        if (s.payload.length !== 4)
          throw new MigrationError("EPROTO", `section ${id} (multifd-flush): bad length`);
        await this.mf.flush(s.payload.readUInt32BE(0));
      } else if (s.type === Sec.Eof) {
        if (this.mf) await this.finishChannels(rep);
        await checkStreamDigest(r, s.payload);
        // The device state is in: the completion stage (the source's guest is stopped).
        this.state.set("device");
        this.guest!.vm.traceEvent("migration_incoming", "E", rep.pagesApplied, r.consumed);
        this.guest!.vm.traceEvent("migration_switchover", "B", 0);
        this.checkVcpuState(vcpuState, layout);
        return "precopy";
      } else
        throw new MigrationError(
          "EPROTO",
          `section ${id} (${sectionName(s.type)}) before the end of the stream`,
        );
    }
  }

  /** multifd: a listener and worker per channel, announced to the source on the return path. */
  private async startChannels(
    cfg: { channels?: unknown },
    postcopy: boolean,
    r: ByteReader,
    back: SectionWriter,
    rep: DestinationReport,
  ): Promise<void> {
    if (cfg.channels === undefined) return;
    const n = checkChannels(cfg.channels, "config.channels");
    if (this.o.channels !== undefined && n !== this.o.channels)
      throw new MigrationError(
        "EPROTO",
        `config.channels: the source uses ${n} channels, this destination expects ${this.o.channels}`,
      );
    if (n === 1) return;
    if (postcopy)
      throw new MigrationError("EPROTO", "config.channels: multifd channels with post-copy are not built");
    if (!this.o.channelCredentials || !r.sessionKey)
      throw new MigrationError(
        "EPROTO",
        "config.channels: this destination has no session to check channels against",
      );
    this.mf = await MultifdRecv.listen({
      g: this.guest!,
      n,
      host: localHost(this.link.stream),
      creds: this.o.channelCredentials,
      sessionKey: r.sessionKey,
      idleMs: this.o.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
    });
    rep.channels = n;
    // While a round travels over the channels the main stream carries nothing until its flush
    // marker: a channel applying pages counts as the peer being alive.
    const mf = this.mf;
    if (this.link.r.idle) this.link.r.idle.busy = () => mf.progressed();
    // A channel's failure ends the wait on the main stream at once, not at the next marker.
    mf.onFailure((e) => r.poison(e));
    await back.section(Sec.MultifdChannels, jsonPayload(this.mf.announce));
  }

  /** multifd: every channel's EOF and keyed digest, before the main stream's own. */
  private async finishChannels(rep: DestinationReport): Promise<void> {
    const mf = this.mf!;
    await mf.finish();
    rep.channelPages = mf.pages;
    rep.pagesApplied += mf.pages;
    this.channelBytes = mf.bytes;
    this.mf = null;
  }

  /** Bytes the channels carried (receivedBytes counts them). */
  private channelBytes = 0;

  /** The VM the config describes. */
  private async build(layout: GuestLayout, postcopy: boolean): Promise<GuestVm> {
    const onVm = this.o.onVm;
    const g = createGuestVm(layout, {
      wp: this.o.wp,
      mode: this.o.mode,
      logged: false,
      postcopy,
      prepare: onVm && ((vm) => onVm(vm, "migration destination")),
    });
    this.guest = g;
    g.vm.traceEvent("migration_incoming", "B", postcopy ? 1 : 0);
    // Start the vCPUs now, held, so the switch-over only has to release them (pre-copy's "go",
    // post-copy's "postcopy-run"): worker start stays out of the downtime.
    Atomics.store(g.ctl, MIG_CTL.hold, 1);
    await runGuest(g);
    return g;
  }

  private async postcopy(
    r: ByteReader,
    back: SectionWriter,
    rep: DestinationReport,
    id: number,
    vcpuState: VcpuState | null,
  ): Promise<void> {
    this.link = { stream: this.link.stream, r, back, nextId: id + 1 };
    let consumed = 0;
    const pc = await postcopyIncoming({
      g: this.guest!,
      link: this.link,
      vcpuState,
      read: (rd, n) => readSection(rd, n, SOURCE_TYPES),
      // A source without a migration id cannot be told apart from another: no recovery then.
      recover: this.migrationId ? this.o.postcopyRecover : undefined,
      migrationId: this.migrationId,
      idleMs: this.o.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
      setState: (to) => this.state.set(to),
      phase: () => this.state.status,
      onLink: (l) => {
        consumed += this.link.r.consumed;
        this.link = l;
        this.connection = { stream: l.stream, reader: l.r };
      },
    });
    rep.sections += pc.sections;
    rep.pagesApplied += pc.pagesPlaced;
    rep.receivedBytes = consumed + this.link.r.consumed;
    rep.guestInvariant = pc.guestInvariant;
    rep.problems = pc.problems;
    rep.postcopy = {
      discardedPages: pc.discardedPages,
      pagesPlaced: pc.pagesPlaced,
      requests: pc.requests,
      vcpus: pc.vcpus,
      recoveries: pc.recoveries,
      pausedMs: pc.pausedMs,
    };
  }

  private checkVcpuState(vcpuState: VcpuState | null, layout: GuestLayout | null): void {
    if (!vcpuState || vcpuState.length !== layout!.vcpus)
      throw new MigrationError(
        "EPROTO",
        `vcpu state: ${vcpuState?.length ?? 0} vCPUs, the config has ${layout!.vcpus}`,
      );
    const counts = guestCounts(this.guest!);
    vcpuState.forEach((v, i) => {
      if (v.id !== i || v.counter !== counts[i])
        throw new MigrationError(
          "EBADMSG",
          `vcpu ${i}: state says count ${v.counter}, memory holds ${counts[i]}`,
        );
    });
  }

  /** After EOF: page hashes to the source, then "go" releases the guest and it is checked. */
  private async complete(r: ByteReader, back: SectionWriter, rep: DestinationReport): Promise<void> {
    const g = this.guest!;
    rep.receivedBytes = r.consumed + this.channelBytes;
    const th = performance.now();
    const hashes = pageHashes(g.vm, g.layout);
    rep.hashMs = performance.now() - th;
    await back.section(Sec.Loaded, hashes);
    const go: Section = await readSection(r, rep.sections + 1, SOURCE_TYPES);
    rep.sections++;
    if (go.type === Sec.Abort)
      throw new MigrationError("ECANCELED", "the source aborted after comparing pages");
    if (go.type !== Sec.Go)
      throw new MigrationError("EPROTO", `${sectionName(go.type)} where go was expected`);
    Atomics.store(g.ctl, MIG_CTL.hold, 0);
    Atomics.notify(g.ctl, MIG_CTL.hold);
    await back.section(Sec.Running, jsonPayload({ hashMs: rep.hashMs }));
    g.vm.traceEvent("migration_switchover", "E", r.consumed);
    const chk = await runAndCheck(g);
    g.vm.resume();
    rep.guestInvariant = chk.ok;
    rep.problems = chk.problems;
    await back.section(
      Sec.Verified,
      jsonPayload({ ok: chk.ok, problems: chk.problems, before: chk.before, after: chk.after }),
    );
  }

  private async fail(
    e: unknown,
    stream: Duplex,
    back: SectionWriter,
    r: ByteReader,
    rep: DestinationReport,
  ): Promise<DestinationReport> {
    if (e instanceof MigrationStateError) throw e;
    let err = toMigError(e);
    // The first cause wins: a channel's that failed before this thread did (the main stream
    // then closes because the source failed on that channel's account).
    if (this.mf) err = await this.mf.firstCause(err);
    this.mf?.abort();
    this.mf = null;
    const cancelled = this.state.status === "cancelling";
    if (!this.state.final) this.state.set(cancelled ? "cancelled" : "failed");
    rep.status = cancelled ? "cancelled" : "failed";
    rep.error = err.report();
    rep.receivedBytes = r.consumed;
    try {
      if (!stream.destroyed && !stream.writableEnded)
        await back.section(Sec.Error, jsonPayload({ code: err.code, message: err.message }));
    } catch {
      // The source is gone: nothing to tell it.
    }
    // Not awaited: the VM stops meanwhile; the socket is gone within the grace either way.
    void closeConnection(stream, r);
    if (this.guest) {
      await this.guest.vm.stop();
      this.guest = null;
    }
    return rep;
  }
}

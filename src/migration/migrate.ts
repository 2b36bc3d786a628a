/**
 * The migration library's remote pair, what `kvmmu migrate --to` and `kvmmu migrate-incoming`
 * run: migrateTo() starts the migration-test guest, lets it run, and migrates it to a listening
 * destination; migrateIncoming() listens for one authenticated source and runs what it brings.
 * migrateLocal() (local.ts) puts the two together.
 */
import { einval } from "../errors.js";
import { KVM_DIRTY_RING_MAX_ENTRIES, KVM_DIRTY_RING_MIN_ENTRIES } from "../kvm_host.js";
import type { MmuModeName, Vm } from "../vm.js";
import { DesignName, designInfo } from "../mmu/design.js";
import { connectOutgoing, listenIncoming } from "./auth.js";
import { createGuestVm, GuestLayout, layoutFor, runAndCheck, runGuest, waitFilled } from "./guest_vm.js";
import { DirtyRingLog, LogMode, logStrategy, needsDirtyRing } from "./log_sync.js";
import { checkDirtyLimit } from "./dirtylimit.js";
import { FAULTS } from "./fault.js";
import { closeConnection, DEFAULT_IDLE_TIMEOUT_MS, MigrationDestination } from "./destination.js";
import { checkSecurity, MigrationSecurity } from "./tls.js";
import { MigrationSource, SourceOptions } from "./precopy.js";
import { MigrationError } from "./stream.js";
import { checkChannels } from "./multifd.js";
import { RecoverConnection, recoverWithin } from "./recover.js";
import type { DestinationReport, MigrationReport } from "./report.js";

/** The guest a migration moves, and how it is migrated (SourceOptions' knobs). */
export interface GuestMigrationOptions extends Omit<
  SourceOptions,
  "log" | "postcopyRecover" | "channelCredentials"
> {
  /** The design both sides run (src/mmu/design.ts; default "lockless"). */
  wp?: DesignName;
  mode?: MmuModeName;
  /** Guest memory in bytes (default 32 MiB) and vCPUs (default 1). */
  memoryBytes?: number;
  vcpus?: number;
  logMode?: LogMode;
  /** Entries per vCPU ring in dirty-ring mode (QEMU's dirty-ring-size; default 4096). */
  dirtyRingSize?: number;
  /** The guest runs this long before the migration starts (default 200 ms), after its fill pass. */
  warmupMs?: number;
  /**
   * The workload (guest.ts): bytes the guest rewrites after first filling all its memory
   * (default: all of it), and bytes per second it may dirty (default 0: unbounded).
   */
  workingSetBytes?: number;
  dirtyRateBytes?: number;
  /**
   * Post-copy recovery (`--resume`): a link that drops during post-copy pauses the migration
   * (postcopy-paused) instead of losing the guest; the source reconnects, authenticated as the
   * first time, and post-copy resumes. The destination must allow it too (migrateIncoming's
   * `resume`). Each side gives up after resumeTimeoutMs paused (default 60000): guest lost.
   */
  resume?: boolean;
  resumeTimeoutMs?: number;
  /** Called with the source's VM before its vCPUs exist (--trace: vm.enableTrace). */
  onVm?: (vm: Vm, name: string) => void;
}

/** The source's report with the guest it moved. */
export interface MigrationResult extends MigrationReport {
  wp: DesignName;
  guestMode: MmuModeName;
  memoryBytes: number;
  vcpus: number;
}

export interface MigrateToOptions extends GuestMigrationOptions {
  host: string;
  port: number;
  /** The pre-shared key (at least 8 characters). */
  key: string;
  /** How the stream is protected (tls.ts; default TLS-PSK from the key). */
  security?: MigrationSecurity;
  /** With `resume`: where to reconnect (default host:port; QEMU's `migrate -r URI`). */
  resumeTo?: { host: string; port: number };
}

export const DEFAULT_RESUME_TIMEOUT_MS = 60_000;
/** A source's reconnection attempts during postcopy-paused are this far apart. */
const RESUME_RETRY_MS = 100;
/** What a reconnection attempt may meet while the destination has not paused yet, or is away. */
const RESUME_RETRY_CODES: readonly string[] = [
  "ECONNREFUSED",
  "ECONNRESET",
  "EBUSY",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENODATA",
];

export const GUEST_DEFAULTS = {
  wp: "lockless",
  mode: "tdp",
  memoryBytes: 32 << 20,
  vcpus: 1,
  warmupMs: 200,
} as const;

/** Checks the options every migration needs before anything is built (EINVAL naming the option). */
export function checkGuestOptions(o: GuestMigrationOptions): void {
  designInfo(o.wp ?? GUEST_DEFAULTS.wp);
  if (o.mode !== undefined && o.mode !== "tdp" && o.mode !== "shadow")
    throw einval("mode", `must be "tdp" or "shadow", got ${String(o.mode)}`);
  if (o.fault !== undefined && !(FAULTS as readonly string[]).includes(o.fault))
    throw einval("fault", `"${String(o.fault)}" is not one of ${FAULTS.join(", ")}`);
  if (o.fault === "drop-link" && !o.postcopy) throw einval("fault", "drop-link needs postcopy");
  const rep = o.faultRepeat ?? 1;
  if (!Number.isSafeInteger(rep) || rep < 1 || rep > 1000)
    throw einval("faultRepeat", "must be an integer 1..1000");
  const w = o.warmupMs ?? 0;
  if (!Number.isSafeInteger(w) || w < 0) throw einval("warmupMs", "must be an integer >= 0");
  checkResumeTimeout(o.resumeTimeoutMs);
  const ch = o.channels === undefined ? 1 : checkChannelsOption(o.channels);
  if (ch > 1 && o.postcopy)
    throw einval("channels", "not with postcopy (post-copy over multifd channels is not built)");
  if ((o.fault === "channel-auth" || o.fault === "drop-channel") && ch < 2)
    throw einval("fault", `${o.fault} needs channels > 1`);
  layoutOf(o);
  if (o.dirtyRingSize !== undefined) {
    const n = o.dirtyRingSize;
    if (
      !Number.isSafeInteger(n) ||
      n < KVM_DIRTY_RING_MIN_ENTRIES ||
      n > KVM_DIRTY_RING_MAX_ENTRIES ||
      (n & (n - 1)) !== 0
    )
      throw einval(
        "dirtyRingSize",
        `must be a power of two ${KVM_DIRTY_RING_MIN_ENTRIES}..${KVM_DIRTY_RING_MAX_ENTRIES}, got ${String(n)}`,
      );
    needsDirtyRing("dirtyRingSize", o.logMode);
  }
  if (o.dirtyLimit !== undefined || o.dirtyLimitPeriodMs !== undefined) {
    checkDirtyLimit(o.dirtyLimit, o.dirtyLimitPeriodMs);
    needsDirtyRing("dirtyLimit", o.logMode);
    if (o.autoConverge) throw einval("dirtyLimit", "not with autoConverge (one throttle at a time)");
  }
}

/** The channels option (EINVAL naming it), as a KvmError like the other options'. */
function checkChannelsOption(n: unknown): number {
  try {
    return checkChannels(n);
  } catch (e) {
    throw einval("channels", (e as Error).message.replace(/^EINVAL: channels: /, ""));
  }
}

/** The guest layout and workload the options describe (EINVAL naming the option). */
export function layoutOf(o: GuestMigrationOptions): GuestLayout {
  return layoutFor(o.memoryBytes ?? GUEST_DEFAULTS.memoryBytes, o.vcpus ?? GUEST_DEFAULTS.vcpus, {
    workingSetBytes: o.workingSetBytes,
    dirtyRateBytes: o.dirtyRateBytes,
  });
}

function checkResumeTimeout(ms: number | undefined): number {
  const t = ms ?? DEFAULT_RESUME_TIMEOUT_MS;
  if (!Number.isSafeInteger(t) || t < 1) throw einval("resumeTimeoutMs", "must be an integer >= 1");
  return t;
}

/**
 * The source's side of post-copy recovery (`migrate -r`): connects again, as the first time
 * (same key and security), retrying while the destination is unreachable or still busy with the
 * dropped connection; ETIMEDOUT resumeTimeoutMs after the pause began, however many attempts
 * failed their handshake meanwhile. EACCES and the like are final at once.
 */
function reconnector(o: MigrateToOptions): RecoverConnection {
  const timeout = checkResumeTimeout(o.resumeTimeoutMs);
  const to = o.resumeTo ?? { host: o.host, port: o.port };
  return async (pausedAt) => {
    const end = pausedAt + timeout;
    // Asked again after a connection failed its handshake: the same deadline holds.
    let last = "a connection that failed its handshake";
    for (;;) {
      if (performance.now() >= end)
        throw new MigrationError(
          "ETIMEDOUT",
          `post-copy recovery: no destination took the resume at ${to.host}:${to.port} in ${timeout} ms (last: ${last})`,
        );
      try {
        const { sock, reader } = await connectOutgoing({ ...to, key: o.key, security: o.security });
        return { stream: sock, reader };
      } catch (e) {
        if (!(e instanceof MigrationError) || !RESUME_RETRY_CODES.includes(e.code)) throw e;
        last = e.message;
      }
      await new Promise((r) => setTimeout(r, RESUME_RETRY_MS));
    }
  };
}

/**
 * Starts the migration-test guest, lets it run warmupMs, and migrates it to host:port. Never
 * throws for a migration failure (the report says it); a guest that was not handed over runs
 * on and is checked here (its invariant goes in the report). The source VM is stopped at the end.
 */
export async function migrateTo(o: MigrateToOptions): Promise<MigrationResult> {
  checkGuestOptions(o);
  checkSecurity(o.security);
  const wp = o.wp ?? GUEST_DEFAULTS.wp;
  const mode = o.mode ?? GUEST_DEFAULTS.mode;
  const log = logStrategy(o.logMode ?? "dirty-log", { ringEntries: o.dirtyRingSize });
  const layout = layoutOf(o);
  const g = createGuestVm(layout, {
    wp,
    mode,
    logged: true,
    prepare: (vm) => {
      log.prepare(vm);
      o.onVm?.(vm, "migration source");
    },
  });
  let report: MigrationReport;
  try {
    const src = new MigrationSource(g, {
      ...o,
      log,
      channelCredentials: { key: o.key, security: checkSecurity(o.security), host: o.host },
      postcopyRecover: o.resume && o.postcopy ? reconnector(o) : undefined,
    });
    await runGuest(g);
    await waitFilled(g);
    await new Promise((r) => setTimeout(r, o.warmupMs ?? GUEST_DEFAULTS.warmupMs));
    const { sock, reader } = await connectOutgoing(o);
    report = await src.migrate(sock, reader);
    // After "go" (or postcopy-run) the guest is the destination's, or lost: never run it here.
    if (report.status !== "completed" && !report.switchedOver) {
      // Nothing lost: the guest runs on here, every page advancing, invariant intact.
      // The dirty ring still logs: reap it as the guest runs, or its vCPUs block once it fills.
      const chk = await runAndCheck(
        g,
        20_000,
        log instanceof DirtyRingLog ? () => void log.reap(g) : undefined,
      );
      report.verify.guestInvariant = chk.ok;
      report.verify.problems = chk.problems;
    }
  } finally {
    await g.vm.stop();
  }
  return { ...report, wp, guestMode: mode, memoryBytes: layout.memoryBytes, vcpus: layout.vcpus };
}

export interface MigrateIncomingOptions {
  /** Where to listen (default 127.0.0.1); port 0: any. */
  host?: string;
  port: number;
  key: string;
  wp?: DesignName;
  mode?: MmuModeName;
  /** Largest guest accepted, in bytes (default 4 GiB). */
  maxMemory?: number;
  /** Keep running the migrated guest this long, then stop it (default 1000 ms). */
  runAfterMs?: number;
  /** Any read after authentication that waits longer fails with ETIMEDOUT (default 30000 ms). */
  idleTimeoutMs?: number;
  /** How the stream is protected (tls.ts; default TLS-PSK from the key). */
  security?: MigrationSecurity;
  /**
   * Post-copy recovery (`--resume`, QEMU's migrate-recover): a link that drops during post-copy
   * pauses the migration; the listener stays open and the next source to authenticate (the
   * same key and security) and name this migration resumes it. Given up after resumeTimeoutMs
   * (default 60000) without one: the guest is lost.
   */
  resume?: boolean;
  resumeTimeoutMs?: number;
  /** Called once listening, with the port bound. */
  onListening?: (port: number) => void;
  /** Called with the destination's VM before its vCPUs exist (--trace: vm.enableTrace). */
  onVm?: (vm: Vm, name: string) => void;
  /** multifd channels expected (default: as many as the source asks, 1..16). */
  channels?: number;
}

export interface IncomingResult extends DestinationReport {
  /** Peers that failed the handshake, with why. */
  refusedPeers: string[];
}

/**
 * Waits for one authenticated source, receives its guest, runs it runAfterMs, stops it. One
 * source at a time: until this returns, another is told EBUSY. Whatever the peer does, its
 * connection is closed when this returns (at most a short grace after a failure).
 */
export async function migrateIncoming(o: MigrateIncomingOptions): Promise<IncomingResult> {
  const wp = o.wp ?? GUEST_DEFAULTS.wp;
  designInfo(wp);
  const runAfter = o.runAfterMs ?? 1000;
  if (!Number.isSafeInteger(runAfter) || runAfter < 0) throw einval("runAfterMs", "must be an integer >= 0");
  const idle = o.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  if (!Number.isSafeInteger(idle) || idle < 1) throw einval("idleTimeoutMs", "must be an integer >= 1");
  const resumeMs = checkResumeTimeout(o.resumeTimeoutMs);
  if (o.channels !== undefined) checkChannelsOption(o.channels);
  const inc = await listenIncoming({ ...o, keepOpen: o.resume === true });
  try {
    o.onListening?.(inc.port);
    const { sock, reader } = await inc.accepted;
    const dest = new MigrationDestination({
      wp,
      mode: o.mode,
      onVm: o.onVm,
      maxMemory: o.maxMemory,
      idleTimeoutMs: idle,
      channels: o.channels,
      channelCredentials: { key: o.key, security: checkSecurity(o.security) },
      postcopyRecover: o.resume
        ? recoverWithin(resumeMs, (left) =>
            inc.next(left).then(({ sock: s, reader: r }) => ({ stream: s, reader: r })),
          )
        : undefined,
    });
    const rep = await dest.receive(sock, reader);
    if (dest.guest) {
      await new Promise((r) => setTimeout(r, runAfter));
      await dest.guest.vm.stop();
    }
    const conn = dest.connection ?? { stream: sock, reader };
    await closeConnection(conn.stream, conn.reader);
    return { ...rep, refusedPeers: inc.refused };
  } finally {
    inc.close();
  }
}

/**
 * The migration library's remote pair, what `kvmmu migrate --to` and `kvmmu migrate-incoming`
 * run: migrateTo() starts the migration-test guest, lets it run, and migrates it to a listening
 * destination; migrateIncoming() listens for one authenticated source and runs what it brings.
 * migrateLocal() (local.ts) puts the two together.
 */
import { einval } from "../errors.js";
import type { MmuModeName, Vm } from "../vm.js";
import { DesignName, designInfo } from "../mmu/design.js";
import { connectOutgoing, listenIncoming } from "./auth.js";
import { createGuestVm, layoutFor, runAndCheck, runGuest } from "./guest_vm.js";
import { LogMode, logStrategy } from "./log_sync.js";
import { FAULTS } from "./fault.js";
import { closeConnection, DEFAULT_IDLE_TIMEOUT_MS, MigrationDestination } from "./destination.js";
import { checkSecurity, MigrationSecurity } from "./tls.js";
import { MigrationSource, SourceOptions } from "./precopy.js";
import type { DestinationReport, MigrationReport } from "./report.js";

/** The guest a migration moves, and how it is migrated (SourceOptions' knobs). */
export interface GuestMigrationOptions extends Omit<SourceOptions, "log"> {
  /** The design both sides run (src/mmu/design.ts; default "lockless"). */
  wp?: DesignName;
  mode?: MmuModeName;
  /** Guest memory in bytes (default 32 MiB) and vCPUs (default 1). */
  memoryBytes?: number;
  vcpus?: number;
  logMode?: LogMode;
  /** The guest runs this long before the migration starts (default 200 ms). */
  warmupMs?: number;
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
}

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
  const w = o.warmupMs ?? 0;
  if (!Number.isSafeInteger(w) || w < 0) throw einval("warmupMs", "must be an integer >= 0");
  layoutFor(o.memoryBytes ?? GUEST_DEFAULTS.memoryBytes, o.vcpus ?? GUEST_DEFAULTS.vcpus);
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
  const log = logStrategy(o.logMode ?? "dirty-log");
  const layout = layoutFor(o.memoryBytes ?? GUEST_DEFAULTS.memoryBytes, o.vcpus ?? GUEST_DEFAULTS.vcpus);
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
    const src = new MigrationSource(g, { ...o, log });
    await runGuest(g);
    await new Promise((r) => setTimeout(r, o.warmupMs ?? GUEST_DEFAULTS.warmupMs));
    const { sock, reader } = await connectOutgoing(o);
    report = await src.migrate(sock, reader);
    // After "go" (or postcopy-run) the guest is the destination's, or lost: never run it here.
    if (report.status !== "completed" && !report.switchedOver) {
      // Nothing lost: the guest runs on here, every page advancing, invariant intact.
      const chk = await runAndCheck(g);
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
  /** Called once listening, with the port bound. */
  onListening?: (port: number) => void;
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
  const inc = await listenIncoming(o);
  try {
    o.onListening?.(inc.port);
    const { sock, reader } = await inc.accepted;
    const dest = new MigrationDestination({ wp, mode: o.mode, maxMemory: o.maxMemory, idleTimeoutMs: idle });
    const rep = await dest.receive(sock, reader);
    if (dest.guest) {
      await new Promise((r) => setTimeout(r, runAfter));
      await dest.guest.vm.stop();
    }
    await closeConnection(sock, reader);
    return { ...rep, refusedPeers: inc.refused };
  } finally {
    inc.close();
  }
}

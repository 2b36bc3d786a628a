/**
 * migrateLocal(): one whole migration on this machine, source here and the destination either
 * in this process ("inline") or in a fresh process started through child.ts ("process", what
 * `kvmmu migrate --local` does), over loopback with a key made for it. migrateLocalForked()
 * runs the whole of migrateLocal() in a fresh process (so a run inherits no JIT or heap from
 * another; what `kvmmu migrate-perf` does) and returns its result over IPC.
 */
import { fork, ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { einval, KvmError } from "../errors.js";
import { MigrationError } from "./stream.js";
import { checkSecurity, MigrationSecurity } from "./tls.js";
import {
  checkGuestOptions,
  GUEST_DEFAULTS,
  GuestMigrationOptions,
  IncomingResult,
  migrateIncoming,
  MigrateIncomingOptions,
  MigrationResult,
  migrateTo,
} from "./migrate.js";

/** What local.ts asks of child.ts over IPC, and what it answers. */
export type ChildRequest =
  | { role: "incoming"; options: Omit<MigrateIncomingOptions, "onListening"> }
  | { role: "local"; options: ForkableOptions };

export type ChildReply =
  | { type: "listening"; port: number }
  | { type: "incoming"; result: IncomingResult }
  | { type: "local"; result: LocalMigrationResult }
  /** `message` is led by `code` ("ETIMEDOUT: ..."), as a report's error. */
  | { type: "error"; code: string; message: string };

const CHILD = new URL("./child.js", import.meta.url);
const LISTEN_TIMEOUT_MS = 20_000;
/** After the source is done: the destination's process should exit by then, or is killed. */
export const EXIT_TIMEOUT_MS = 20_000;

export interface MigrateLocalOptions extends GuestMigrationOptions {
  /** Where the destination runs (default "process"): a fresh Node process, or this one. */
  destination?: "process" | "inline";
  /** How the stream is protected, both ends (tls.ts; default TLS-PSK from the key made here). */
  security?: MigrationSecurity;
  /**
   * Destination process: ms it has to exit once the source is done, then killed (default
   * EXIT_TIMEOUT_MS); counted from the end of the migration, however long that took.
   */
  exitTimeoutMs?: number;
}

export interface LocalMigrationResult {
  source: MigrationResult;
  /** The destination's report; null when its process died before sending it (kill-destination). */
  destination: IncomingResult | null;
}

/** A destination running somewhere: its port, its report to come, and a way to kill it. */
interface LocalDestination {
  port: number;
  /** Called once the source is done: the report, the process given exitTimeoutMs to end. */
  report(): Promise<IncomingResult | null>;
  kill(): void;
}

export async function migrateLocal(o: MigrateLocalOptions = {}): Promise<LocalMigrationResult> {
  checkGuestOptions(o);
  const where = o.destination ?? "process";
  if (where !== "process" && where !== "inline")
    throw einval("destination", `must be "process" or "inline", got ${String(where)}`);
  if (o.fault === "kill-destination" && where !== "process")
    throw einval("fault", "kill-destination needs a destination process");
  const exitMs = o.exitTimeoutMs ?? EXIT_TIMEOUT_MS;
  if (!Number.isSafeInteger(exitMs) || exitMs < 1) throw einval("exitTimeoutMs", "must be an integer >= 1");
  const key = randomBytes(18).toString("base64");
  const inc: MigrateIncomingOptions = {
    port: 0,
    key,
    wp: o.wp ?? GUEST_DEFAULTS.wp,
    mode: o.mode ?? GUEST_DEFAULTS.mode,
    runAfterMs: 0,
    security: checkSecurity(o.security),
    resume: o.resume === true && o.postcopy === true,
    resumeTimeoutMs: o.resumeTimeoutMs,
    channels: o.channels,
  };
  // A traced run's destination VM joins the caller's trace when it runs here (a process has its own).
  const dst =
    where === "process"
      ? await destinationProcess(inc, exitMs)
      : await destinationInline({ ...inc, onVm: o.onVm });
  const kill = o.fault === "kill-destination";
  let source: MigrationResult;
  try {
    source = await migrateTo({
      ...o,
      host: "127.0.0.1",
      port: dst.port,
      key,
      onRound: (r) => {
        o.onRound?.(r);
        if (kill && !o.postcopy && r.round === 1) dst.kill();
      },
      onPostcopyRun: () => {
        o.onPostcopyRun?.();
        if (kill) dst.kill();
      },
    });
  } catch (e) {
    // No migration to report (refused connection or handshake): no destination left behind.
    dst.kill();
    throw e;
  }
  return { source, destination: await dst.report() };
}

async function destinationInline(o: MigrateIncomingOptions): Promise<LocalDestination> {
  let listening!: (port: number) => void;
  const port = new Promise<number>((r) => (listening = r));
  const report = migrateIncoming({ ...o, onListening: (p) => listening(p) });
  // A failure before listening (a bad option) surfaces here rather than as a hang.
  const p = await Promise.race([port, report.then(() => -1)]);
  if (p < 0) throw new MigrationError("EIO", "the inline destination ended before listening");
  return { port: p, report: () => report, kill: () => {} };
}

/** Forks child.ts as a destination and waits until it listens. */
async function destinationProcess(o: MigrateIncomingOptions, exitMs: number): Promise<LocalDestination> {
  const c = startChild({ role: "incoming", options: o });
  const port = await new Promise<number>((res, rej) => {
    const t = setTimeout(
      () =>
        rej(
          new MigrationError(
            "ETIMEDOUT",
            `the destination did not start listening in ${LISTEN_TIMEOUT_MS / 1000} s`,
          ),
        ),
      LISTEN_TIMEOUT_MS,
    );
    c.child.on("message", (m: ChildReply) => {
      if (m.type === "listening") {
        clearTimeout(t);
        res(m.port);
      }
    });
    c.child.once("exit", (code) => {
      clearTimeout(t);
      rej(
        new MigrationError(
          "EIO",
          `the destination exited (${String(code)}) before listening: ${c.stderr().trim()}`,
        ),
      );
    });
  });
  // The exit timeout runs from the end of the source's migration, not from the start: a
  // migration may take longer than it (up to maxTimeMs, or a long post-copy).
  const report = (): Promise<IncomingResult | null> =>
    c.done(exitMs).then((m) => (m?.type === "incoming" ? m.result : null));
  return { port, report, kill: () => c.child.kill("SIGKILL") };
}

interface Child {
  child: ChildProcess;
  stderr(): string;
  /** The child's last result message (null if none came), once it has exited. */
  done(timeoutAfterDisconnectMs?: number): Promise<ChildReply | null>;
}

function startChild(req: ChildRequest): Child {
  const child = fork(CHILD, [], { execArgv: [], stdio: ["ignore", "ignore", "pipe", "ipc"] });
  let err = "";
  child.stderr!.on("data", (c: Buffer) => (err += c.toString()));
  let result: ChildReply | null = null;
  child.on("message", (m: ChildReply) => {
    if (m.type !== "listening") result = m;
  });
  const exited = new Promise<void>((res) => {
    if (child.exitCode !== null || child.signalCode !== null) res();
    else child.once("exit", () => res());
  });
  child.send(req);
  return {
    child,
    stderr: () => err,
    done: async (ms?: number) => {
      if (ms !== undefined) {
        const t = setTimeout(() => child.kill("SIGKILL"), ms);
        await exited;
        clearTimeout(t);
      } else await exited;
      return result;
    },
  };
}

/** The options of a migration that can cross a process boundary (no callbacks). */
export type ForkableOptions = Omit<MigrateLocalOptions, "onRound" | "onPostcopyRun" | "onStateChange">;

/**
 * migrateLocal() in a fresh process (child.ts), its destination in another: the result comes
 * back over IPC. Throws EIO if the process ends without a result.
 */
export async function migrateLocalForked(o: ForkableOptions): Promise<LocalMigrationResult> {
  checkGuestOptions(o);
  const c = startChild({ role: "local", options: o });
  const m = await c.done();
  if (m?.type === "local") return m.result;
  if (m?.type === "error") throw new KvmError("EIO", `migrateLocal in a child process: ${m.message}`);
  throw new KvmError(
    "EIO",
    `migrateLocal in a child process: it exited (${String(c.child.exitCode ?? c.child.signalCode)}) without a result: ${c.stderr().trim().slice(-500)}`,
  );
}

/**
 * multifd (QEMU's migration/multifd.c): RAM pages over N extra connections, each with its own
 * worker thread at both ends (multifd_send_worker.ts, multifd_recv_worker.ts), while the main
 * connection carries the config, the device state, the round markers and the return path.
 *
 * Setup: the config section says `channels: N`; the destination starts N listeners on
 * ephemeral ports and announces them on the return path (multifd-channels: port and a fresh
 * nonce each); the source starts N workers that connect and prove the session
 * (multifd_channel.ts). Each round (the bulk round, each iteration, the completion stage) the
 * source deals its dirty pages out to the channels in runs of 256, every channel ends the
 * round with a sync section, and once all have sent theirs the main stream carries a
 * multifd-flush marker (QEMU's RAM_SAVE_FLAG_MULTIFD_FLUSH / multifd_send_sync_main). The
 * destination reads the marker, waits until every channel has applied that round's pages and
 * synced, then releases the channels into the next round (multifd_recv_sync_main): a page sent
 * twice, on two channels in two rounds, always lands old copy first. So a round is never
 * complete, and the destination never reaches the device state or EOF, before every channel
 * has delivered it. Each channel ends with its own keyed digest, checked before "loaded".
 */
import { Worker } from "node:worker_threads";
import { randomBytes } from "node:crypto";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { GuestVm } from "./guest_vm.js";
import { MigErrno, MigrationError } from "./stream.js";
import type { MigrationSecurity } from "./tls.js";
import {
  CHANNEL_NONCE,
  FirstCause,
  MAX_CHANNELS,
  RECV_CTL,
  RecvReply,
  SendReply,
  SendRequest,
} from "./multifd_channel.js";
import type { SendWorkerData } from "./multifd_send_worker.js";
import type { RecvWorkerData } from "./multifd_recv_worker.js";

export { MAX_CHANNELS } from "./multifd_channel.js";

const SEND_WORKER = new URL("./multifd_send_worker.js", import.meta.url);
const RECV_WORKER = new URL("./multifd_recv_worker.js", import.meta.url);
/** Pages dealt to one channel at a time: runs of neighbours, a full RAM section each. */
const DEAL_PAGES = 256;
/** Channel setup (worker start, connect, TLS, the channel handshake) has this long. */
const SETUP_TIMEOUT_MS = 60_000;

/** EINVAL unless n is a channel count 1..MAX_CHANNELS; `what` names the option. */
export function checkChannels(n: unknown, what = "channels"): number {
  if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 1 || n > MAX_CHANNELS)
    throw new MigrationError("EINVAL", `${what}: must be an integer 1..${MAX_CHANNELS}, got ${String(n)}`);
  return n;
}

/** The main connection's credentials, which every channel uses again (TLS mode, key). */
export interface ChannelCredentials {
  key: string;
  security: MigrationSecurity;
  /**
   * Source: the name the main connection dialled, where the channels connect too (TLS x509
   * checks the destination's certificate against it); default: the main connection's peer address.
   */
  host?: string;
}

/** What the destination announces on the return path (multifd-channels). */
export interface ChannelAnnounce {
  channels: { port: number; nonce: string }[];
}

/** The destination's multifd-channels payload, checked as untrusted input (EPROTO). */
export function parseAnnounce(payload: Buffer, n: number): ChannelAnnounce {
  let a: Partial<ChannelAnnounce> = {};
  try {
    a = JSON.parse(payload.toString()) as Partial<ChannelAnnounce>;
  } catch {
    // Refused below.
  }
  const chans = a.channels;
  const ok =
    Array.isArray(chans) &&
    chans.length === n &&
    chans.every(
      (c) =>
        Number.isSafeInteger(c.port) &&
        c.port > 0 &&
        c.port < 65536 &&
        typeof c.nonce === "string" &&
        /^[0-9a-f]{64}$/.test(c.nonce),
    );
  if (!ok)
    throw new MigrationError("EPROTO", `multifd-channels: not ${n} channels with a port and nonce each`);
  return { channels: chans };
}

function workerError(i: number, m: { code: string; message: string }): MigrationError {
  const msg = m.message.startsWith("channel ") ? m.message : `channel ${i}: ${m.message}`;
  return new MigrationError(m.code as MigErrno, msg);
}

/** The address the peer of `stream` is at (the source connects its channels there). */
export function peerHost(stream: Duplex): string {
  return (stream as Socket).remoteAddress?.replace(/^::ffff:/, "") ?? "127.0.0.1";
}

/** The address `stream` was accepted on (the destination's channels listen there). */
export function localHost(stream: Duplex): string {
  return (stream as Socket).localAddress?.replace(/^::ffff:/, "") ?? "127.0.0.1";
}

/**
 * Worker messages of one kind, awaited with the side's first failure: the error of the channel
 * that claimed FirstCause (a channel failing later, because of it, is only its consequence).
 */
class WorkerSet<R extends { type: string }> {
  readonly workers: Worker[];
  /** Each worker's error (its own message, else its crash or early exit), in channel order. */
  readonly errors: (MigrationError | null)[];
  /** Called at each worker error once the side's failure is known (the main thread's wake-up). */
  onFailure: ((e: MigrationError) => void) | null = null;
  private waiters: (() => void)[] = [];
  readonly inbox: R[][];

  /** Workers that sent their last message (`final`): their exit is the normal end. */
  private readonly finished: boolean[];

  constructor(
    url: URL,
    data: unknown[],
    final: R["type"],
    readonly cause: FirstCause,
  ) {
    this.workers = data.map((workerData) => new Worker(url, { workerData }));
    this.inbox = this.workers.map(() => []);
    this.errors = this.workers.map(() => null);
    this.finished = this.workers.map(() => false);
    const said = this.workers.map(() => false);
    this.workers.forEach((w, i) => {
      w.on("message", (m: R) => {
        if (m.type === "error") {
          // A worker's own word beats the exit that follows it.
          if (!said[i]) this.errors[i] = workerError(i, m as unknown as { code: string; message: string });
          said[i] = true;
          this.failed(i);
        } else this.inbox[i].push(m);
        if (m.type === final) this.finished[i] = true;
        this.kick();
      });
      w.on("error", (e) => {
        this.errors[i] ??= new MigrationError("EIO", `channel ${i}: its worker failed: ${e.message}`);
        this.failed(i);
      });
      w.on("exit", () => {
        if (!this.finished[i]) {
          this.errors[i] ??= new MigrationError("EIO", `channel ${i}: its worker exited`);
          this.failed(i);
        }
        this.kick();
      });
    });
  }

  /** The side's failure: the claimant's error (null while its message is still on its way). */
  get error(): MigrationError | null {
    const who = this.cause.who;
    if (who > 0) return this.errors[who - 1];
    // The main thread failed first: what the channels say is its consequence.
    if (who === FirstCause.MAIN) return this.errors.find((e) => e !== null) ?? null;
    return null;
  }

  private failed(i: number): void {
    // A worker that died without claiming (a crash): claimed for it on its first sign.
    this.cause.claim(i + 1);
    const e = this.error;
    if (e && this.cause.who !== FirstCause.MAIN) this.onFailure?.(e);
    this.kick();
  }

  /** This side's first cause, `own` (the main thread's error) unless a channel claimed it first. */
  async firstCause(own: MigrationError, timeoutMs: number): Promise<MigrationError> {
    if (this.cause.claim(FirstCause.MAIN) || this.cause.who === FirstCause.MAIN) return own;
    // A channel failed first: its message follows its claim (or its exit does).
    const end = Date.now() + timeoutMs;
    while (!this.error && Date.now() < end)
      await new Promise<void>((res) => {
        const t = setTimeout(res, Math.min(end - Date.now(), 1000));
        this.waiters.push(() => (clearTimeout(t), res()));
      });
    return this.error ?? own;
  }

  private kick(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  /** Waits until every worker has a message passing `ok` (each taken off its inbox). */
  async all(ok: (m: R) => boolean, timeoutMs: number, what: string): Promise<R[]> {
    const got: (R | undefined)[] = this.workers.map(() => undefined);
    const end = Date.now() + timeoutMs;
    for (;;) {
      this.inbox.forEach((box, i) => {
        if (got[i] !== undefined) return;
        const k = box.findIndex(ok);
        if (k >= 0) got[i] = box.splice(k, 1)[0];
      });
      if (got.every((m) => m !== undefined)) return got;
      // A wait that fails leaves what it took for the next one.
      const putBack = (): void => got.forEach((m, i) => m !== undefined && this.inbox[i].unshift(m));
      if (this.error) {
        putBack();
        throw this.error;
      }
      const left = end - Date.now();
      if (left <= 0) {
        putBack();
        const late = got.map((m, i) => (m === undefined ? i : -1)).filter((i) => i >= 0);
        throw new MigrationError(
          "ETIMEDOUT",
          `${what}: channel ${late.join(", ")} silent for ${timeoutMs} ms`,
        );
      }
      await new Promise<void>((res) => {
        const t = setTimeout(res, Math.min(left, 1000));
        this.waiters.push(() => (clearTimeout(t), res()));
      });
    }
  }

  terminate(): void {
    for (const w of this.workers) {
      w.removeAllListeners("exit");
      w.on("exit", () => {});
      void w.terminate();
    }
  }
}

/** The source's channels: a worker each, connected and authenticated. */
export class MultifdSend {
  private round = 0;
  /** Bytes the channels have written (ends of rounds; the sum of channelBytes). */
  bytes = 0;
  readonly channelBytes: number[];

  private constructor(private readonly set: WorkerSet<SendReply>) {
    this.channelBytes = set.workers.map(() => 0);
  }

  get channels(): number {
    return this.set.workers.length;
  }

  /** Starts a worker per announced channel and waits until every one is connected. */
  static async start(o: {
    g: GuestVm;
    host: string;
    announce: ChannelAnnounce;
    creds: ChannelCredentials;
    sessionKey: Buffer;
    maxBandwidth: number;
    fault?: SendWorkerData["fault"];
  }): Promise<MultifdSend> {
    const n = o.announce.channels.length;
    const cause = new FirstCause();
    const data: SendWorkerData[] = o.announce.channels.map((c, id) => ({
      shared: o.g.vm.sharedState(),
      cause: cause.sab,
      host: o.host,
      port: c.port,
      auth: {
        id,
        key: o.creds.key,
        security: o.creds.security,
        sessionKey: o.sessionKey,
        nonce: Buffer.from(c.nonce, "hex"),
      },
      maxBandwidth: o.maxBandwidth / n,
      // The fault is injected into one channel, the last.
      fault: id === n - 1 ? o.fault : undefined,
    }));
    const set = new WorkerSet<SendReply>(SEND_WORKER, data, "ended", cause);
    try {
      await set.all((m) => m.type === "ready", SETUP_TIMEOUT_MS, "multifd channel setup");
    } catch (e) {
      set.terminate();
      throw e;
    }
    return new MultifdSend(set);
  }

  /**
   * One round: the pages (page numbers, in order) dealt out in runs, each channel ending with
   * a sync; resolves once every channel has written its share. Returns the round's number
   * (the flush marker names it) and its page counts.
   */
  async send(
    pages: readonly number[],
    limited: boolean,
  ): Promise<{ round: number; normal: number; duplicate: number }> {
    const n = this.channels;
    const round = ++this.round;
    const share: number[][] = Array.from({ length: n }, () => []);
    for (let k = 0; k < pages.length; k += DEAL_PAGES) {
      const c = share[(k / DEAL_PAGES) % n];
      for (let j = k; j < Math.min(k + DEAL_PAGES, pages.length); j++) c.push(pages[j]);
    }
    this.set.workers.forEach((w, i) => {
      const m: SendRequest = { type: "round", round, pages: Uint32Array.from(share[i]), limited };
      w.postMessage(m, [m.pages.buffer as ArrayBuffer]);
    });
    // No bound but the channels' own: a slow link or a rate limit makes a long round.
    const done = await this.set.all(
      (m) => m.type === "round-done" && m.round === round,
      2 ** 31 - 1,
      "a multifd round",
    );
    let normal = 0;
    let duplicate = 0;
    done.forEach((m, i) => {
      if (m.type !== "round-done") return;
      normal += m.normal;
      duplicate += m.duplicate;
      this.channelBytes[i] += m.bytes;
      this.bytes += m.bytes;
    });
    return { round, normal, duplicate };
  }

  /** Every channel's EOF (its keyed digest) written and its connection ended. */
  async finish(): Promise<void> {
    for (const w of this.set.workers) w.postMessage({ type: "end" } satisfies SendRequest);
    const ended = await this.set.all((m) => m.type === "ended", SETUP_TIMEOUT_MS, "multifd channel end");
    ended.forEach((m, i) => {
      if (m.type !== "ended") return;
      // The header and EOF are not in any round.
      const extra = m.bytes - this.channelBytes[i];
      this.channelBytes[i] = m.bytes;
      this.bytes += extra;
    });
    this.set.terminate();
  }

  /** The source's first cause: `own` (the main thread's error) unless a channel failed first. */
  firstCause(own: MigrationError): Promise<MigrationError> {
    return this.set.firstCause(own, SETUP_TIMEOUT_MS);
  }

  close(): void {
    this.set.terminate();
  }
}

/** The destination's channels: a listener and worker each. */
export class MultifdRecv {
  pages = 0;
  bytes = 0;

  private constructor(
    private readonly set: WorkerSet<RecvReply>,
    readonly announce: ChannelAnnounce,
    private readonly idleMs: number,
    /** RECV_CTL, shared with the workers: the main thread writes release and abort. */
    private readonly ctl: Int32Array,
  ) {}

  private seenProgress = 0;

  /** True when a channel applied a RAM section since the last call (the main stream's keep-alive). */
  progressed(): boolean {
    const p = Atomics.load(this.ctl, RECV_CTL.progress);
    const moved = p !== this.seenProgress;
    this.seenProgress = p;
    return moved;
  }

  /** Starts n channel workers listening on `host`, ephemeral ports; what to announce. */
  static async listen(o: {
    g: GuestVm;
    n: number;
    host: string;
    creds: ChannelCredentials;
    sessionKey: Buffer;
    idleMs: number;
    /** Test hook (RecvWorkerData.holdError): the channels' reports of their failures wait for it. */
    holdError?: SharedArrayBuffer;
  }): Promise<MultifdRecv> {
    const ctl = new SharedArrayBuffer(RECV_CTL.WORDS * 4);
    const cause = new FirstCause();
    const nonces = Array.from({ length: o.n }, () => randomBytes(CHANNEL_NONCE));
    const data: RecvWorkerData[] = nonces.map((nonce, id) => ({
      shared: o.g.vm.sharedState(),
      cause: cause.sab,
      holdError: o.holdError,
      host: o.host,
      auth: { id, key: o.creds.key, security: o.creds.security, sessionKey: o.sessionKey, nonce },
      memoryBytes: o.g.layout.memoryBytes,
      ctl,
      idleMs: o.idleMs,
    }));
    const set = new WorkerSet<RecvReply>(RECV_WORKER, data, "done", cause);
    let ports: RecvReply[];
    try {
      ports = await set.all((m) => m.type === "listening", SETUP_TIMEOUT_MS, "multifd channel listen");
    } catch (e) {
      set.terminate();
      throw e;
    }
    const announce: ChannelAnnounce = {
      channels: ports.map((m, i) => ({
        port: m.type === "listening" ? m.port : 0,
        nonce: nonces[i].toString("hex"),
      })),
    };
    return new MultifdRecv(set, announce, o.idleMs, new Int32Array(ctl));
  }

  /**
   * The main stream's round marker: waits until every channel has applied and synced `round`
   * (a failed or silent channel fails the migration), then lets them into the next.
   */
  async flush(round: number): Promise<void> {
    const synced = await this.set.all(
      (m) => m.type === "synced" && m.round === round,
      this.idleMs,
      `multifd round ${round}`,
    );
    this.pages = synced.reduce((a, m) => a + (m.type === "synced" ? m.pages : 0), 0);
    Atomics.store(this.ctl, RECV_CTL.release, round);
    Atomics.notify(this.ctl, RECV_CTL.release);
  }

  /** Every channel's EOF read and its digest checked. */
  async finish(): Promise<void> {
    const done = await this.set.all((m) => m.type === "done", this.idleMs, "multifd channel end");
    this.pages = 0;
    this.bytes = 0;
    for (const m of done)
      if (m.type === "done") {
        this.pages += m.pages;
        this.bytes += m.bytes;
      }
    this.set.terminate();
  }

  /**
   * The destination's failure as its channels know it: the error of the channel that failed
   * first (null while none has, or while its report is on its way), whatever failed after it.
   */
  get failure(): MigrationError | null {
    return this.set.error;
  }

  /** Each channel's own error so far, in channel order (the consequences included). */
  get channelErrors(): readonly (MigrationError | null)[] {
    return this.set.errors;
  }

  /** `f` is called (maybe more than once) as soon as `failure` is known: the main thread's wake-up. */
  onFailure(f: (e: MigrationError) => void): void {
    this.set.onFailure = f;
  }

  /** The destination's first cause: `own` (the main thread's error) unless a channel failed first. */
  firstCause(own: MigrationError): Promise<MigrationError> {
    return this.set.firstCause(own, this.idleMs);
  }

  /** A failed migration: the channels stop (a worker waiting at a sync wakes and ends). */
  abort(): void {
    Atomics.store(this.ctl, RECV_CTL.abort, 1);
    Atomics.notify(this.ctl, RECV_CTL.release);
    this.set.terminate();
  }
}

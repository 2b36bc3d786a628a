/**
 * One multifd channel's connection (QEMU's multifd_new_send_channel / multifd_recv_new_channel),
 * what the channel workers (multifd_send_worker.ts, multifd_recv_worker.ts) run: the
 * destination's worker listens on an ephemeral port announced on the main connection with a
 * fresh nonce; the source's worker connects (TLS as the main connection, or plaintext) and
 * proves it belongs to this migration:
 *
 *   src -> dst   "KMMUCHAN" | be32 channel id | HMAC(session key, "multifd" | id | nonce)
 *   dst -> src   "KMMUCHOK"   or "KMMUDENY" (bad id or HMAC: the connection is closed)
 *
 * The session key is the main connection's (auth.ts), so only the source that authenticated
 * there can open a channel, and only once per channel (the nonce is used once). Each channel
 * then carries its own stream: the header, sections with a CRC each (stream.ts), and an EOF
 * whose digest is keyed with a per-channel key, so bytes cannot move between channels.
 */
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, Server, Socket } from "node:net";
import { createServer as createTlsServer, TLSSocket } from "node:tls";
import { openTransport, AUTH_TIMEOUT_MS } from "./auth.js";
import { ByteReader, MigrationError, writeAll } from "./stream.js";
import { MigrationSecurity, serverTls } from "./tls.js";

const HELLO = Buffer.from("KMMUCHAN");
const OK = Buffer.from("KMMUCHOK");
const DENY = Buffer.from("KMMUDENY");
export const CHANNEL_NONCE = 32;
/** Most channels a migration may use (QEMU's multifd-channels is 1..255; 16 is plenty here). */
export const MAX_CHANNELS = 16;

function be32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0, 0);
  return b;
}

/** The channel's proof: HMAC(session key, "multifd" | be32 id | nonce). */
export function channelMac(sessionKey: Uint8Array, id: number, nonce: Uint8Array): Buffer {
  return createHmac("sha256", sessionKey).update("multifd").update(be32(id)).update(nonce).digest();
}

/** The key of a channel's end digest: its own, so a channel's bytes cannot pass for another's. */
export function channelKey(sessionKey: Uint8Array, id: number): Buffer {
  return createHmac("sha256", sessionKey).update("multifd-digest").update(be32(id)).digest();
}

/** Everything a channel worker needs to connect or listen (plain data: it crosses postMessage). */
export interface ChannelAuth {
  id: number;
  /** The main connection's pre-shared key (TLS-PSK derives from it) and security mode. */
  key: string;
  security: MigrationSecurity;
  sessionKey: Uint8Array;
  nonce: Uint8Array;
}

/** Source: connects to a channel listener and proves the session; EACCES if refused. */
export async function connectChannel(
  host: string,
  port: number,
  a: ChannelAuth,
  /** Failure injection (fault "channel-auth"): a wrong proof. */
  badProof = false,
): Promise<{ sock: Socket; reader: ByteReader }> {
  const sock = await openTransport({ host, port, key: a.key, security: a.security });
  sock.setNoDelay(true);
  try {
    const reader = new ByteReader(sock);
    const mac = channelMac(a.sessionKey, a.id, a.nonce);
    if (badProof) mac[0] ^= 0xff;
    await writeAll(sock, Buffer.concat([HELLO, be32(a.id), mac]));
    let tag: Buffer;
    try {
      tag = await reader.read(HELLO.length, `channel ${a.id}'s answer`);
    } catch {
      throw new MigrationError("EACCES", `channel ${a.id}: the destination closed it during its handshake`);
    }
    if (tag.equals(DENY))
      throw new MigrationError("EACCES", `channel ${a.id}: the destination refused its proof`);
    if (!tag.equals(OK))
      throw new MigrationError("EPROTO", `channel ${a.id}: not a multifd channel listener`);
    return { sock, reader };
  } catch (e) {
    sock.destroy();
    throw e;
  }
}

/**
 * Checks a connecting source's proof; EACCES (after telling it) if it is not this session's.
 * `refusing` runs before the refusal goes out (the caller claims the failure: FirstCause).
 */
async function acceptProof(sock: Socket, r: ByteReader, a: ChannelAuth, refusing: () => void): Promise<void> {
  let hello: Buffer;
  let timer: NodeJS.Timeout | undefined;
  try {
    hello = await Promise.race([
      r.read(HELLO.length + 4 + 32, `channel ${a.id}'s handshake`),
      new Promise<never>((_, rej) => {
        timer = setTimeout(
          () =>
            rej(new MigrationError("ETIMEDOUT", `channel ${a.id}: no handshake in ${AUTH_TIMEOUT_MS} ms`)),
          AUTH_TIMEOUT_MS,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
  const id = hello.readUInt32BE(HELLO.length);
  const mac = hello.subarray(HELLO.length + 4);
  const ok =
    hello.subarray(0, HELLO.length).equals(HELLO) &&
    id === a.id &&
    timingSafeEqual(mac, channelMac(a.sessionKey, a.id, a.nonce));
  if (!ok) {
    refusing();
    await writeAll(sock, DENY).catch(() => {});
    sock.end();
    throw new MigrationError(
      "EACCES",
      `channel ${a.id}: a peer failed the channel handshake (${id === a.id ? "bad HMAC" : `channel id ${id}`}): refused`,
    );
  }
  await writeAll(sock, OK);
}

export interface ChannelListener {
  port: number;
  /** The one source connection that proved the session (rejects on a failed handshake). */
  accepted: Promise<{ sock: Socket; reader: ByteReader }>;
  close(): void;
}

/**
 * Destination: listens on host, port 0, for this channel's one connection. The first peer
 * decides: a bad handshake is refused and the channel fails (EACCES), so the migration does;
 * anyone after the first is cut at once. `refusing` runs at a failed handshake before the
 * refusal (or the connection's end) reaches the peer.
 */
export async function listenChannel(
  host: string,
  a: ChannelAuth,
  refusing: () => void = () => {},
): Promise<ChannelListener> {
  const tlsOpts = serverTls(a.security, a.key);
  let taken = false;
  let settle!: { res: (x: { sock: Socket; reader: ByteReader }) => void; rej: (e: Error) => void };
  const accepted = new Promise<{ sock: Socket; reader: ByteReader }>((res, rej) => (settle = { res, rej }));
  // Observed by whoever awaits it; never an unhandled rejection meanwhile.
  accepted.catch(() => {});
  const onPeer = (sock: Socket | TLSSocket): void => {
    sock.on("error", () => {});
    if (taken) {
      sock.destroy();
      return;
    }
    taken = true;
    sock.setNoDelay(true);
    const r = new ByteReader(sock);
    acceptProof(sock, r, a, refusing).then(
      () => settle.res({ sock, reader: r }),
      (e: Error) => {
        refusing();
        setTimeout(() => sock.destroy(), 1000).unref();
        settle.rej(e);
      },
    );
    server.close();
  };
  const server: Server = tlsOpts
    ? createTlsServer({ ...tlsOpts, allowHalfOpen: true, handshakeTimeout: AUTH_TIMEOUT_MS }, onPeer)
    : createServer({ allowHalfOpen: true }, onPeer);
  if (tlsOpts)
    server.on("tlsClientError", (e: Error, s: TLSSocket) => {
      if (taken) {
        s.destroy();
        return;
      }
      taken = true;
      refusing();
      s.destroy();
      server.close();
      settle.rej(new MigrationError("EACCES", `channel ${a.id}: TLS handshake failed (${e.message.trim()})`));
    });
  await new Promise<void>((res, rej) => {
    server.once("error", (e) =>
      rej(new MigrationError("EIO", `channel ${a.id}: listen ${host}: ${e.message}`)),
    );
    server.listen(0, host, () => res());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return { port, accepted, close: () => server.close() };
}

/**
 * Which failure a side of a multifd migration reports (the first cause wins): one Int32 word
 * shared by the main thread and that side's channel workers, 0 until something fails, then who
 * failed first (channel id + 1, or MAIN). Whoever fails claims it before it closes a socket or
 * tells the peer anything, so a failure its effects cause later (a peer's channel or main stream
 * ending: ENODATA, ECONNRESET) can never be claimed first, however the threads are scheduled
 * and in whatever order their messages reach the main thread.
 */
export class FirstCause {
  static readonly MAIN = -1;
  private readonly word: Int32Array;

  constructor(readonly sab = new SharedArrayBuffer(4)) {
    this.word = new Int32Array(sab);
  }

  /** Claims the first failure for `who` (channel id + 1, or MAIN); true when nobody had. */
  claim(who: number): boolean {
    return Atomics.compareExchange(this.word, 0, 0, who) === 0;
  }

  /** 0: nothing failed; else who claimed it. */
  get who(): number {
    return Atomics.load(this.word, 0);
  }
}

/** What the main thread tells a source channel worker, and what it answers. */
export type SendRequest =
  { type: "round"; round: number; pages: Uint32Array; limited: boolean } | { type: "end" };
export type SendReply =
  | { type: "ready" }
  | { type: "round-done"; round: number; bytes: number; normal: number; duplicate: number }
  | { type: "ended"; bytes: number }
  | { type: "error"; code: string; message: string };

/** What a destination channel worker tells the main thread. */
export type RecvReply =
  | { type: "listening"; port: number }
  | { type: "connected" }
  | { type: "synced"; round: number; pages: number }
  | { type: "done"; pages: number; bytes: number }
  | { type: "error"; code: string; message: string };

/** The destination's shared control words: per channel the last round synced; the release. */
export const RECV_CTL = {
  /** The round every channel may go past (the main thread sets it at each flush). */
  release: 0,
  /** Nonzero: the migration failed, every worker stops. */
  abort: 1,
  /** RAM sections applied by all channels (the workers add): the main stream's idle timer counts it as activity. */
  progress: 2,
  WORDS: 3,
} as const;

/**
 * Who may migrate into this process: a pre-shared key and an HMAC-SHA256 challenge-response,
 * run before the migration stream (and before the destination touches any state), inside TLS
 * unless the caller asked for insecure plaintext (tls.ts).
 *
 *   dst -> src   "KMMUAUTH" | nonceD (32 bytes)          or "KMMUBUSY" (another source is in)
 *   src -> dst   HMAC(key, "src" | nonceD) | nonceS (32 bytes)
 *   dst -> src   "KMMUPROF" | HMAC(key, "dst" | nonceS | nonceD)
 *                                  or "KMMUDENY" (bad HMAC), "KMMUBUSY" (another source won)
 *
 * Both sides prove the key; neither sends it. Fresh nonces make a recorded exchange useless.
 * Both derive the session key HMAC(key, "session" | nonceS | nonceD), which keys the stream's
 * end digest. One source at a time: until the destination is done, others get EBUSY.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { createServer, Server, Socket } from "node:net";
import { connect as tlsConnect, createServer as createTlsServer, TLSSocket } from "node:tls";
import type { Duplex } from "node:stream";
import { ByteReader, MigErrno, MigrationError, writeAll } from "./stream.js";
import { checkSecurity, clientTls, MigrationSecurity, securityName, serverTls } from "./tls.js";

const TAG = 8;
const HELLO = Buffer.from("KMMUAUTH");
const PROOF = Buffer.from("KMMUPROF");
const BUSY = Buffer.from("KMMUBUSY");
const DENY = Buffer.from("KMMUDENY");
const NONCE = 32;
/** A peer that does not finish the TLS handshake or answer the challenge in this time is dropped. */
export const AUTH_TIMEOUT_MS = 5_000;

function mac(key: string, tag: string, ...parts: Buffer[]): Buffer {
  const h = createHmac("sha256", key);
  h.update(tag);
  for (const p of parts) h.update(p);
  return h.digest();
}

export function checkKey(key: unknown): asserts key is string {
  if (typeof key !== "string" || key.length < 8)
    throw new MigrationError("EINVAL", "key: the pre-shared key must be a string of at least 8 characters");
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<T>((_, rej) => {
      t = setTimeout(() => rej(new MigrationError("ETIMEDOUT", `${what}: no answer in ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

/**
 * Destination side. `claim()` is asked once the source proved the key: false if another source
 * already holds this destination (this one is told EBUSY). Resolves with a reader past the
 * handshake carrying the session key; rejects with EACCES or EBUSY.
 */
export async function authenticatePeer(
  sock: Duplex,
  key: string,
  r = new ByteReader(sock),
  claim: () => boolean = () => true,
): Promise<ByteReader> {
  const nonceD = randomBytes(NONCE);
  await writeAll(sock, Buffer.concat([HELLO, nonceD]));
  const ans = await withTimeout(r.read(64, "the authentication answer"), AUTH_TIMEOUT_MS, "authentication");
  const want = mac(key, "src", nonceD);
  if (!timingSafeEqual(ans.subarray(0, 32), want)) {
    await writeAll(sock, DENY).catch(() => {});
    throw new MigrationError("EACCES", "the peer does not hold the pre-shared key (bad HMAC)");
  }
  const nonceS = ans.subarray(32);
  if (!claim()) {
    await writeAll(sock, BUSY).catch(() => {});
    throw new MigrationError("EBUSY", "another source is migrating into this destination");
  }
  await writeAll(sock, Buffer.concat([PROOF, mac(key, "dst", nonceS, nonceD)]));
  r.sessionKey = mac(key, "session", nonceS, nonceD);
  return r;
}

/** Reads the destination's 8-byte tag; EBUSY and EACCES are what it says they are. */
async function readTag(r: ByteReader, what: string, expect: Buffer): Promise<void> {
  let tag: Buffer;
  try {
    tag = await withTimeout(r.read(TAG, what), AUTH_TIMEOUT_MS, "authentication");
  } catch (e) {
    const closed = e instanceof MigrationError && (e.code === "ENODATA" || e.code === "ECONNRESET");
    if (closed && expect === PROOF)
      throw new MigrationError(
        "EACCES",
        "the destination refused the pre-shared key (it closed the connection)",
      );
    // TLS 1.3: the server checks our certificate after our side of the handshake is done.
    if (closed && r.src instanceof TLSSocket)
      throw new MigrationError(
        "EACCES",
        "the destination closed the connection before its challenge (it refused our TLS credentials)",
      );
    throw e;
  }
  if (tag.equals(BUSY))
    throw new MigrationError("EBUSY", "the destination is busy with another incoming migration");
  if (tag.equals(DENY))
    throw new MigrationError("EACCES", "the destination refused the pre-shared key (wrong key)");
  if (!tag.equals(expect))
    throw new MigrationError("EPROTO", "the peer is not a kvmmu migration destination (no challenge)");
}

/** Source side: answers the challenge and checks the destination's proof. */
export async function authenticateToPeer(
  sock: Duplex,
  key: string,
  r = new ByteReader(sock),
): Promise<ByteReader> {
  await readTag(r, "the destination's challenge", HELLO);
  const nonceD = await withTimeout(
    r.read(NONCE, "the destination's challenge"),
    AUTH_TIMEOUT_MS,
    "authentication",
  );
  const nonceS = randomBytes(NONCE);
  await writeAll(sock, Buffer.concat([mac(key, "src", nonceD), nonceS]));
  await readTag(r, "the destination's proof", PROOF);
  const proof = await withTimeout(r.read(32, "the destination's proof"), AUTH_TIMEOUT_MS, "authentication");
  if (!timingSafeEqual(proof, mac(key, "dst", nonceS, nonceD)))
    throw new MigrationError("EACCES", "the destination does not hold the pre-shared key (bad HMAC)");
  r.sessionKey = mac(key, "session", nonceS, nonceD);
  return r;
}

export interface Incoming {
  server: Server;
  /** The port actually bound (useful with port 0). */
  port: number;
  /** Resolves with the first peer that authenticates; later ones are told EBUSY. */
  accepted: Promise<{ sock: Socket; reader: ByteReader }>;
  /** Refused peers so far, with why. */
  refused: string[];
  /**
   * Post-copy recovery (listenIncoming's keepOpen): from now on, the next peer that
   * authenticates (the last connection having dropped); later ones are told EBUSY again.
   * Rejects with ETIMEDOUT when none came in timeoutMs (the listener then refuses everyone).
   */
  next(timeoutMs: number): Promise<{ sock: Socket; reader: ByteReader }>;
  /** Stops listening (the caller does once its migration is over: until then, EBUSY). */
  close(): void;
}

/** The errno of a socket error, kept when it is one a caller can act on. */
function sockErrno(e: Error, fallback: MigErrno): MigErrno {
  const c = (e as { code?: unknown }).code;
  const known: readonly string[] = [
    "ECONNREFUSED",
    "ECONNRESET",
    "EADDRINUSE",
    "EADDRNOTAVAIL",
    "EACCES",
    "EHOSTUNREACH",
    "ENETUNREACH",
    "ENOTFOUND",
    "ETIMEDOUT",
  ];
  return typeof c === "string" && known.includes(c) ? (c as MigErrno) : fallback;
}

function listenError(e: Error, host: string, port: number): MigrationError {
  const code = sockErrno(e, "EIO");
  const why =
    code === "EADDRINUSE"
      ? "the address is already in use"
      : code === "EADDRNOTAVAIL"
        ? "the address is not one of this machine's"
        : code === "EACCES"
          ? "permission denied"
          : e.message;
  return new MigrationError(code, `listen ${host}:${port}: ${why}`);
}

/**
 * Listens on host:port (127.0.0.1 by default) and waits for one authenticated source. A peer that
 * fails the handshake is disconnected and the listener keeps waiting; once one succeeds, every
 * other peer is told EBUSY (before or during its handshake) until that connection closes or
 * close() is called; then the listener closes. With keepOpen (post-copy recovery) it stays open
 * after the connection closes, still refusing everyone until the caller asks for next().
 */
export async function listenIncoming(o: {
  host?: string;
  port: number;
  key: string;
  security?: MigrationSecurity;
  keepOpen?: boolean;
}): Promise<Incoming> {
  checkKey(o.key);
  const sec = checkSecurity(o.security);
  const tlsOpts = serverTls(sec, o.key);
  const refused: string[] = [];
  let done = false;
  // done: a source holds this destination (or none may claim it now); resolveAcc: who waits.
  let resolveAcc!: (x: { sock: Socket; reader: ByteReader }) => void;
  const accepted = new Promise<{ sock: Socket; reader: ByteReader }>((res) => (resolveAcc = res));
  const onPeer = (sock: Socket | TLSSocket): void => {
    const who = `${sock.remoteAddress ?? "?"}:${sock.remotePort ?? "?"}`;
    sock.on("error", () => {});
    if (done) {
      refused.push(`${who}: EBUSY: another source is migrating into this destination`);
      void writeAll(sock, BUSY)
        .catch(() => {})
        .finally(() => sock.end());
      setTimeout(() => sock.destroy(), AUTH_TIMEOUT_MS).unref();
      return;
    }
    sock.setNoDelay(true);
    const claim = (): boolean => (done ? false : (done = true));
    authenticatePeer(sock, o.key, new ByteReader(sock), claim).then(
      (reader) => {
        // The migration is over when its connection is: stop listening then (or at close()).
        if (!o.keepOpen) sock.once("close", () => server.close());
        resolveAcc({ sock, reader });
      },
      (e: Error) => {
        refused.push(`${who}: ${e.message}`);
        sock.end();
        setTimeout(() => sock.destroy(), 1000).unref();
      },
    );
  };
  const server: Server = tlsOpts
    ? createTlsServer({ ...tlsOpts, allowHalfOpen: true, handshakeTimeout: AUTH_TIMEOUT_MS }, onPeer)
    : createServer({ allowHalfOpen: true }, onPeer);
  if (tlsOpts)
    server.on("tlsClientError", (e: Error, s: TLSSocket) => {
      refused.push(
        `${s.remoteAddress ?? "?"}:${s.remotePort ?? "?"}: EACCES: ${securityName(sec)} handshake failed (${e.message.trim()})`,
      );
      s.destroy();
    });
  const host = o.host ?? "127.0.0.1";
  await new Promise<void>((res, rej) => {
    server.once("error", (e) => rej(listenError(e, host, o.port)));
    server.listen(o.port, host, () => res());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : o.port;
  const next = (timeoutMs: number): Promise<{ sock: Socket; reader: ByteReader }> =>
    new Promise((res, rej) => {
      const t = setTimeout(() => {
        done = true;
        rej(new MigrationError("ETIMEDOUT", `no source came back to resume in ${timeoutMs} ms`));
      }, timeoutMs);
      resolveAcc = (x) => {
        clearTimeout(t);
        res(x);
      };
      done = false;
    });
  return { server, port, accepted, refused, next, close: () => server.close() };
}

/** Opens the transport: TCP, then TLS unless plaintext. Errors name the address and the cause. */
export async function openTransport(o: {
  host: string;
  port: number;
  key: string;
  security?: MigrationSecurity;
}): Promise<Socket | TLSSocket> {
  const sec = checkSecurity(o.security);
  const tlsOpts = clientTls(sec, o.key);
  const where = `connect ${o.host}:${o.port}`;
  return new Promise((res, rej) => {
    let secure = false;
    const sock = tlsOpts
      ? tlsConnect({ ...tlsOpts, host: o.host, port: o.port }, () => {
          secure = true;
          res(sock);
        })
      : new Socket({ allowHalfOpen: true }).connect(o.port, o.host, () => res(sock));
    sock.once("error", (e: Error) => {
      sock.destroy();
      const code = sockErrno(e, "EIO");
      if (code === "ECONNREFUSED") rej(new MigrationError(code, `${where}: nothing is listening there`));
      else if (code !== "EIO" || !tlsOpts || secure) rej(new MigrationError(code, `${where}: ${e.message}`));
      else
        rej(
          new MigrationError(
            "EACCES",
            `${where}: the ${securityName(sec)} handshake failed (wrong key or certificate, or the destination uses another mode): ${e.message.trim()}`,
          ),
        );
    });
    sock.once("close", () =>
      rej(
        new MigrationError(
          "ECONNRESET",
          `${where}: the destination closed the connection during the handshake`,
        ),
      ),
    );
  });
}

/** Connects to a destination and authenticates; returns the socket and its reader. */
export async function connectOutgoing(o: {
  host: string;
  port: number;
  key: string;
  security?: MigrationSecurity;
}): Promise<{ sock: Socket; reader: ByteReader }> {
  checkKey(o.key);
  const sock = await openTransport(o);
  sock.setNoDelay(true);
  try {
    const reader = await authenticateToPeer(sock, o.key);
    return { sock, reader };
  } catch (e) {
    sock.destroy();
    throw e;
  }
}

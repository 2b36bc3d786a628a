/**
 * Who may migrate into this process: a pre-shared key and an HMAC-SHA256 challenge-response,
 * run before the migration stream (and before the destination touches any state).
 *
 *   dst -> src   "KMMUAUTH" | nonceD (32 bytes)
 *   src -> dst   HMAC(key, "src" | nonceD) | nonceS (32 bytes)
 *   dst -> src   HMAC(key, "dst" | nonceS | nonceD)
 *
 * Both sides prove the key; neither sends it. Fresh nonces make a recorded exchange useless.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { createServer, Server, Socket } from "node:net";
import { ByteReader, MigrationError, writeAll } from "./stream.js";

const HELLO = Buffer.from("KMMUAUTH");
const NONCE = 32;
/** A peer that does not answer the challenge in this time is dropped. */
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

/** Destination side. Resolves with a reader already past the handshake; rejects with EACCES. */
export async function authenticatePeer(
  sock: Socket,
  key: string,
  r = new ByteReader(sock),
): Promise<ByteReader> {
  const nonceD = randomBytes(NONCE);
  await writeAll(sock, Buffer.concat([HELLO, nonceD]));
  const ans = await withTimeout(r.read(64, "the authentication answer"), AUTH_TIMEOUT_MS, "authentication");
  const want = mac(key, "src", nonceD);
  if (!timingSafeEqual(ans.subarray(0, 32), want))
    throw new MigrationError("EACCES", "the peer does not hold the pre-shared key (bad HMAC)");
  await writeAll(sock, mac(key, "dst", ans.subarray(32), nonceD));
  return r;
}

/** Source side: answers the challenge and checks the destination's proof. */
export async function authenticateToPeer(
  sock: Socket,
  key: string,
  r = new ByteReader(sock),
): Promise<ByteReader> {
  const hello = await withTimeout(
    r.read(HELLO.length + NONCE, "the destination's challenge"),
    AUTH_TIMEOUT_MS,
    "authentication",
  );
  if (!hello.subarray(0, HELLO.length).equals(HELLO))
    throw new MigrationError("EPROTO", "the peer is not a kvmmu migration destination (no challenge)");
  const nonceD = hello.subarray(HELLO.length);
  const nonceS = randomBytes(NONCE);
  await writeAll(sock, Buffer.concat([mac(key, "src", nonceD), nonceS]));
  let proof: Buffer;
  try {
    proof = await withTimeout(r.read(32, "the destination's proof"), AUTH_TIMEOUT_MS, "authentication");
  } catch (e) {
    if (e instanceof MigrationError && (e.code === "ENODATA" || e.code === "ECONNRESET"))
      throw new MigrationError(
        "EACCES",
        "the destination refused the pre-shared key (it closed the connection)",
      );
    throw e;
  }
  if (!timingSafeEqual(proof, mac(key, "dst", nonceS, nonceD)))
    throw new MigrationError("EACCES", "the destination does not hold the pre-shared key (bad HMAC)");
  return r;
}

export interface Incoming {
  server: Server;
  /** The port actually bound (useful with port 0). */
  port: number;
  /** Resolves with the first peer that authenticates; others are refused and dropped. */
  accepted: Promise<{ sock: Socket; reader: ByteReader }>;
  /** Refused peers so far, with why. */
  refused: string[];
}

/**
 * Listens on host:port (127.0.0.1 by default) and waits for one authenticated source. A peer that
 * fails the handshake is disconnected and the listener keeps waiting; once one succeeds the
 * listener closes.
 */
export async function listenIncoming(o: { host?: string; port: number; key: string }): Promise<Incoming> {
  checkKey(o.key);
  const refused: string[] = [];
  let done = false;
  let resolveAcc!: (x: { sock: Socket; reader: ByteReader }) => void;
  const accepted = new Promise<{ sock: Socket; reader: ByteReader }>((res) => (resolveAcc = res));
  const server = createServer({ allowHalfOpen: true }, (sock) => {
    if (done) {
      sock.destroy();
      return;
    }
    sock.setNoDelay(true);
    authenticatePeer(sock, o.key).then(
      (reader) => {
        if (done) {
          sock.destroy();
          return;
        }
        done = true;
        server.close();
        resolveAcc({ sock, reader });
      },
      (e: Error) => {
        refused.push(`${sock.remoteAddress ?? "?"}:${sock.remotePort ?? "?"}: ${e.message}`);
        sock.destroy();
      },
    );
  });
  await new Promise<void>((res, rej) => {
    server.once("error", (e) => rej(new MigrationError("EINVAL", `listen: ${e.message}`)));
    server.listen(o.port, o.host ?? "127.0.0.1", () => res());
  });
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : o.port;
  return { server, port, accepted, refused };
}

/** Connects to a destination and authenticates; returns the socket and its reader. */
export async function connectOutgoing(o: {
  host: string;
  port: number;
  key: string;
}): Promise<{ sock: Socket; reader: ByteReader }> {
  checkKey(o.key);
  const sock = new Socket({ allowHalfOpen: true });
  await new Promise<void>((res, rej) => {
    sock.once("error", (e) =>
      rej(new MigrationError("ECONNRESET", `connect ${o.host}:${o.port}: ${e.message}`)),
    );
    sock.connect(o.port, o.host, () => res());
  });
  sock.setNoDelay(true);
  try {
    const reader = await authenticateToPeer(sock, o.key);
    return { sock, reader };
  } catch (e) {
    sock.destroy();
    throw e;
  }
}

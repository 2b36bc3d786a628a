/**
 * The migration stream: what goes over the wire between a source and a destination.
 *
 *   header   magic "KMMU" (be32 0x4b4d4d55), be32 version
 *   section  u8 type, be32 id, be32 length, payload, be32 CRC32 of (type, id, length, payload)
 *
 * Section ids count up from 1 in each direction, so a lost, repeated or reordered section is
 * caught. RAM payloads are page records, each be64 (gpa | flags):
 *   PAGE  followed by the 4096 bytes of the page
 *   ZERO  nothing follows: the page is all zeroes
 * The source's last section, EOF, carries the SHA-256 of every byte it sent before it, keyed
 * (HMAC-SHA256) with the session key when the stream was authenticated.
 *
 * The decoder trusts nothing: a short read, a bad checksum, an unknown type or flag, another
 * version, or a gpa outside the destination's memslots is a MigrationError naming what it found.
 */
import { crc32 } from "node:zlib";
import { createHmac } from "node:crypto";
import { StreamHash } from "./stream_hash.js";
import type { Duplex, Readable } from "node:stream";
import type { Errno } from "../errors.js";

export const MIG_MAGIC = 0x4b4d4d55;
export const MIG_VERSION = 1;
export const HEADER_BYTES = 8;
export const PAGE_SIZE = 4096;
/** Sections above this size are refused before anything is buffered (a damaged length). */
export const MAX_SECTION = 16 << 20;
export const SECTION_OVERHEAD = 13;

export const Sec = {
  /** Source -> destination. */
  Config: 1,
  Ram: 2,
  Vcpu: 3,
  Cancel: 4,
  Eof: 5,
  Go: 6,
  Abort: 7,
  /** Post-copy: the pages the destination must treat as missing (bitmap), then "run now". */
  Discard: 8,
  Postcopy: 9,
  /** Post-copy recovery, on a new connection (recover.ts): "send your received bitmap", "resume". */
  RecvBitmapReq: 0x0a,
  Resume: 0x0b,
  /** multifd (multifd.ts): a channel's end of round (on the channel), the round marker (main stream). */
  MultifdSync: 0x0c,
  MultifdFlush: 0x0d,
  /** Destination -> source (the return path). */
  Loaded: 0x41,
  Running: 0x42,
  Verified: 0x43,
  /** Post-copy: pages a vCPU is blocked on (be64 gpas), to be sent before the rest. */
  PageReq: 0x44,
  /** Post-copy recovery: the pages the destination holds (bitmap), and its go-ahead. */
  RecvBitmap: 0x45,
  ResumeAck: 0x46,
  /** multifd: the destination's channel listeners (ports and nonces). */
  MultifdChannels: 0x47,
  Error: 0x4f,
} as const;

export const SECTION_NAMES: Record<number, string> = {
  [Sec.Config]: "config",
  [Sec.Ram]: "ram",
  [Sec.Vcpu]: "vcpu",
  [Sec.Cancel]: "cancel",
  [Sec.Eof]: "eof",
  [Sec.Go]: "go",
  [Sec.Abort]: "abort",
  [Sec.Discard]: "discard",
  [Sec.Postcopy]: "postcopy-run",
  [Sec.PageReq]: "page-request",
  [Sec.RecvBitmapReq]: "recv-bitmap-request",
  [Sec.Resume]: "resume",
  [Sec.RecvBitmap]: "recv-bitmap",
  [Sec.ResumeAck]: "resume-ack",
  [Sec.MultifdSync]: "multifd-sync",
  [Sec.MultifdFlush]: "multifd-flush",
  [Sec.MultifdChannels]: "multifd-channels",
  [Sec.Loaded]: "loaded",
  [Sec.Running]: "running",
  [Sec.Verified]: "verified",
  [Sec.Error]: "error",
};

/** Page-record flags (the low 12 bits of the be64, free since a gpa is page-aligned). */
export const RAM_ZERO = 0x02;
export const RAM_PAGE = 0x08;
const RAM_FLAGS_MASK = 0xfff;
export const RECORD_HEADER = 8;

export type MigErrno =
  | Errno
  | "EBADMSG"
  | "EPROTO"
  | "EPROTONOSUPPORT"
  | "ENODATA"
  | "EACCES"
  | "ECONNRESET"
  | "ECONNREFUSED"
  | "ECANCELED"
  | "EADDRINUSE"
  | "EADDRNOTAVAIL"
  | "EHOSTUNREACH"
  | "ENETUNREACH"
  | "ENOTFOUND";

/** A migration failure: an errno-like code and a message naming what was found. */
export class MigrationError extends Error {
  readonly code: MigErrno;
  constructor(code: MigErrno, message: string) {
    super(`${code}: ${message}`);
    this.name = "MigrationError";
    this.code = code;
  }

  /** As a report's `error`: the code, and the message, which is led by the code once. */
  report(): { code: MigErrno; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function sectionName(type: number): string {
  return SECTION_NAMES[type] ?? `0x${type.toString(16)}`;
}

export function encodeHeader(version = MIG_VERSION): Buffer {
  const b = Buffer.alloc(HEADER_BYTES);
  b.writeUInt32BE(MIG_MAGIC, 0);
  b.writeUInt32BE(version, 4);
  return b;
}

/** One framed section; the CRC covers the frame header and the payload. */
export function encodeSection(type: number, id: number, payload: Uint8Array): Buffer {
  const b = Buffer.alloc(SECTION_OVERHEAD + payload.length);
  b.writeUInt8(type, 0);
  b.writeUInt32BE(id, 1);
  b.writeUInt32BE(payload.length, 5);
  b.set(payload, 9);
  b.writeUInt32BE(crc32(b.subarray(0, 9 + payload.length)), 9 + payload.length);
  return b;
}

export function jsonPayload(x: unknown): Buffer {
  return Buffer.from(JSON.stringify(x));
}

/** Writes a page-record header (be64 gpa | flags) at `off`. */
export function writeRecordHeader(b: Buffer, off: number, gpa: number, flags: number): void {
  b.writeUInt32BE(Math.floor(gpa / 2 ** 32), off);
  b.writeUInt32BE(((gpa % 2 ** 32) | flags) >>> 0, off + 4);
}

/** Bytes before a section's payload (type, id, length) and after it (CRC32). */
export const FRAME_HEAD = 9;
export const FRAME_TAIL = 4;

/**
 * Builds RAM sections of up to `maxPages` records each, straight into the frame that goes on the
 * wire: room for the frame header before the payload and for the CRC after it, so a page is
 * copied once (guest memory to frame) and the frame is never copied again (SectionWriter.frame).
 * Frames are not zeroed (every byte sent is written first) and come from a small pool: a frame
 * goes back to it once the socket has taken its bytes (release), so the bulk round reuses a few
 * warm megabytes instead of faulting in a fresh one per section.
 */
export class RamBuilder {
  private buf: Buffer;
  private off = FRAME_HEAD;
  private n = 0;
  constructor(private readonly maxPages = 64) {
    this.buf = this.fresh();
  }
  /** Frames the socket has finished with. */
  private readonly pool: Buffer[] = [];
  private fresh(): Buffer {
    return (
      this.pool.pop() ??
      Buffer.allocUnsafe(FRAME_HEAD + this.maxPages * (RECORD_HEADER + PAGE_SIZE) + FRAME_TAIL)
    );
  }
  /** A frame from takeFrame whose bytes the socket has taken: it may be reused. */
  release(frame: Buffer): void {
    if (this.pool.length < 8) this.pool.push(Buffer.from(frame.buffer, frame.byteOffset, this.frameBytes));
  }
  private get frameBytes(): number {
    return FRAME_HEAD + this.maxPages * (RECORD_HEADER + PAGE_SIZE) + FRAME_TAIL;
  }
  get pages(): number {
    return this.n;
  }
  get full(): boolean {
    return this.n >= this.maxPages;
  }
  /** Adds one page: a ZERO record if every byte is 0, else a PAGE record. Returns true if zero. */
  add(gpa: number, page: Uint8Array): boolean {
    const zero = isZero(page);
    writeRecordHeader(this.buf, this.off, gpa, zero ? RAM_ZERO : RAM_PAGE);
    this.off += RECORD_HEADER;
    if (!zero) {
      this.buf.set(page, this.off);
      this.off += PAGE_SIZE;
    }
    this.n++;
    return zero;
  }
  /** Adds a raw record header with any flags (failure injection). */
  addRaw(gpa: number, flags: number): void {
    writeRecordHeader(this.buf, this.off, gpa, flags);
    this.off += RECORD_HEADER;
    this.n++;
  }
  /** The payload so far (not copied: the builder moves to a fresh buffer), and a fresh start. */
  take(): Buffer {
    return this.takeFrame().subarray(FRAME_HEAD, this.lastLength + FRAME_HEAD);
  }
  private lastLength = 0;
  /**
   * The section so far as a frame (FRAME_HEAD bytes of room, the payload, FRAME_TAIL bytes of
   * room) for SectionWriter.frame, and a fresh start.
   */
  takeFrame(): Buffer {
    const f = this.buf.subarray(0, this.off + FRAME_TAIL);
    this.lastLength = this.off - FRAME_HEAD;
    this.buf = this.fresh();
    this.off = FRAME_HEAD;
    this.n = 0;
    return f;
  }
}

export function isZero(page: Uint8Array): boolean {
  const w = new Uint32Array(page.buffer, page.byteOffset, page.byteLength >>> 2);
  for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
  return true;
}

export interface PageRecord {
  gpa: number;
  /** null: a ZERO record. */
  data: Uint8Array | null;
}

/**
 * Parses a RAM payload. `inRange(gpa)` is the destination's memslot check; a record outside them
 * fails with EFAULT before any page is applied (the caller applies only a fully parsed section).
 */
export function decodeRam(
  payload: Buffer,
  sectionId: number,
  inRange: (gpa: number) => boolean,
): PageRecord[] {
  const out: PageRecord[] = [];
  let off = 0;
  while (off < payload.length) {
    if (off + RECORD_HEADER > payload.length)
      throw new MigrationError(
        "EBADMSG",
        `section ${sectionId} (ram): record at offset ${off} is cut short (${payload.length - off} of ${RECORD_HEADER} header bytes)`,
      );
    const hi = payload.readUInt32BE(off);
    const lo = payload.readUInt32BE(off + 4);
    const flags = lo & RAM_FLAGS_MASK;
    const gpa = hi * 2 ** 32 + (lo - flags);
    off += RECORD_HEADER;
    if (flags === RAM_ZERO) {
      if (!inRange(gpa))
        throw new MigrationError(
          "EFAULT",
          `section ${sectionId} (ram): address 0x${gpa.toString(16)} is outside the destination's memslots`,
        );
      out.push({ gpa, data: null });
    } else if (flags === RAM_PAGE) {
      if (!inRange(gpa))
        throw new MigrationError(
          "EFAULT",
          `section ${sectionId} (ram): address 0x${gpa.toString(16)} is outside the destination's memslots`,
        );
      if (off + PAGE_SIZE > payload.length)
        throw new MigrationError(
          "EBADMSG",
          `section ${sectionId} (ram): page 0x${gpa.toString(16)} has ${payload.length - off} of ${PAGE_SIZE} bytes`,
        );
      out.push({ gpa, data: payload.subarray(off, off + PAGE_SIZE) });
      off += PAGE_SIZE;
    } else {
      throw new MigrationError(
        "EPROTO",
        `section ${sectionId} (ram): unknown page flags 0x${flags.toString(16)} at address 0x${gpa.toString(16)}`,
      );
    }
  }
  return out;
}

export interface Section {
  type: number;
  id: number;
  payload: Buffer;
}

/**
 * Reads exact byte counts from a stream, failing with ENODATA when it ends early and
 * ECONNRESET when it breaks. Optionally hashes everything it returns (the stream digest).
 */
export class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private ended = false;
  private broken: Error | null = null;
  /** A failure elsewhere in the same migration (poison()): every read that must wait throws it. */
  private poisoned: MigrationError | null = null;
  private wake: (() => void) | null = null;
  /** The stream digest (a worker: stream_hash.ts), fed every byte read; null: not hashing. */
  hash: StreamHash | null = null;
  /** Bytes consumed so far. */
  consumed = 0;
  /**
   * The session key the handshake agreed (auth.ts), or null for a stream nobody authenticated:
   * the end section's digest is an HMAC with it, so a party on the path cannot recompute it.
   */
  sessionKey: Buffer | null = null;
  /**
   * Idle timeout: a read that gets no byte in `ms` fails with ETIMEDOUT naming `phase()` (the
   * destination sets it once the peer is authenticated, so every later read has a bound).
   */
  /**
   * The idle timeout. `busy`, when given, is asked when it expires: true (other activity of the
   * same migration, e.g. multifd channels, since it was last asked) waits another period.
   */
  idle: { ms: number; phase: () => string; busy?: () => boolean } | null = null;

  constructor(readonly src: Readable) {
    src.on("data", (c: Buffer) => {
      this.chunks.push(c);
      this.have += c.length;
      this.kick();
    });
    src.on("end", () => {
      this.ended = true;
      this.kick();
    });
    src.on("error", (e) => {
      this.broken = e;
      this.kick();
    });
    src.on("close", () => {
      this.ended = true;
      this.kick();
    });
  }

  private kick(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Exactly n bytes; `what` names the thing being read for the error. */
  async read(n: number, what: string): Promise<Buffer> {
    while (this.have < n) {
      if (this.poisoned) throw this.poisoned;
      if (this.broken) throw brokenError(this.broken, what);
      if (this.ended)
        throw new MigrationError(
          "ENODATA",
          `truncated stream: ${what} ends after ${this.have} of ${n} bytes (stream offset ${this.consumed})`,
        );
      if (!(await this.waitData()) && this.have < n && !this.broken && !this.ended) {
        const idle = this.idle!;
        if (idle.busy?.() === true) continue;
        throw new MigrationError(
          "ETIMEDOUT",
          `no data from the peer in ${idle.ms} ms (phase ${idle.phase()}, reading ${what})`,
        );
      }
    }
    const out = this.take(n);
    this.have -= n;
    this.consumed += n;
    this.hash?.update(out);
    return out;
  }

  /**
   * The next n bytes (n <= have): a view of the first chunk when it holds them all, else one
   * copy of just those bytes (never of everything buffered: the reader may be far behind).
   */
  private take(n: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    while (got < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - got);
      c.copy(out, got, 0, k);
      got += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }

  /** Waits for more data, the end or an error (true), or the idle timeout (false). */
  private waitData(): Promise<boolean> {
    const idle = this.idle;
    return new Promise<boolean>((res) => {
      const t = idle ? setTimeout(() => ((this.wake = null), res(false)), idle.ms) : undefined;
      this.wake = () => {
        clearTimeout(t);
        res(true);
      };
    });
  }

  /**
   * Fails the read waiting now and every later one that must wait, with `e`: a failure
   * elsewhere in the same migration (a multifd channel) ends the wait on this stream at once.
   */
  poison(e: MigrationError): void {
    this.poisoned ??= e;
    this.kick();
  }

  /** Drops what is buffered and all that comes later (a failed side reads no more). */
  drain(): void {
    this.hash?.close();
    this.hash = null;
    this.chunks = [];
    this.have = 0;
    this.src.removeAllListeners("data");
    this.src.on("data", () => {});
  }

  /** Stops hashing and returns the digest of everything read so far. */
  async digest(): Promise<Buffer> {
    const h = this.hash;
    this.hash = null;
    return h ? await h.digest() : Buffer.alloc(32);
  }
}

/** What a broken transport means: a TLS record that fails its check is a damaged stream. */
function brokenError(e: Error, what: string): MigrationError {
  const code = (e as { code?: unknown }).code;
  if (typeof code === "string" && /^ERR_SSL_/.test(code))
    return new MigrationError(
      "EBADMSG",
      `the TLS layer refused the stream while reading ${what} (${e.message.trim()})`,
    );
  return new MigrationError("ECONNRESET", `the peer went away while reading ${what} (${e.message})`);
}

/**
 * The end section's digest: the SHA-256 of every byte before it, then, when the stream was
 * authenticated, an HMAC-SHA256 of that with the session key (an unkeyed digest can be recomputed
 * by whoever changes the stream on the path).
 */
export function streamDigest(sha: Buffer, sessionKey: Buffer | null): Buffer {
  return sessionKey ? createHmac("sha256", sessionKey).update("eof").update(sha).digest() : sha;
}

/** Reads and checks the stream header. */
export async function readHeader(r: ByteReader): Promise<void> {
  const h = await r.read(HEADER_BYTES, "the stream header");
  const magic = h.readUInt32BE(0);
  if (magic !== MIG_MAGIC)
    throw new MigrationError(
      "EPROTO",
      `bad magic 0x${magic.toString(16)} (expected 0x${MIG_MAGIC.toString(16)})`,
    );
  const v = h.readUInt32BE(4);
  if (v !== MIG_VERSION)
    throw new MigrationError(
      "EPROTONOSUPPORT",
      `version mismatch: stream version ${v}, this side reads ${MIG_VERSION}`,
    );
}

/** Reads one section and checks its id, length, type and CRC. */
export async function readSection(
  r: ByteReader,
  expectId: number,
  known: readonly number[],
): Promise<Section> {
  const h = await r.read(9, `the header of section ${expectId}`);
  const type = h.readUInt8(0);
  const id = h.readUInt32BE(1);
  const len = h.readUInt32BE(5);
  if (len > MAX_SECTION)
    throw new MigrationError("EBADMSG", `section ${id}: length ${len} is over the ${MAX_SECTION}-byte limit`);
  const payload = await r.read(len, `section ${id} (${sectionName(type)}, ${len} bytes)`);
  const crcBytes = await r.read(4, `the checksum of section ${id}`);
  const want = crcBytes.readUInt32BE(0);
  const got = crc32(payload, crc32(h));
  if (want !== got)
    throw new MigrationError(
      "EBADMSG",
      `bad checksum in section ${id} (${sectionName(type)}): CRC32 0x${got.toString(16)}, stream says 0x${want.toString(16)}`,
    );
  if (id !== expectId) throw new MigrationError("EPROTO", `section id ${id} where ${expectId} was expected`);
  if (!known.includes(type))
    throw new MigrationError("EPROTO", `unknown section type 0x${type.toString(16)} (section ${id})`);
  return { type, id, payload };
}

/**
 * The end section's check, on the destination: the digest at the reader's last mark (made
 * before the section was read: `r.hash.mark()`) must equal the digest the source put in it.
 * EBADMSG if not. Stops the reader's hashing.
 */
export async function checkStreamDigest(r: ByteReader, payload: Buffer): Promise<void> {
  const h = r.hash;
  r.hash = null;
  const want = streamDigest(h ? await h.markedDigest() : Buffer.alloc(32), r.sessionKey);
  if (!want.equals(payload))
    throw new MigrationError(
      "EBADMSG",
      `stream digest mismatch: SHA-256 ${want.toString("hex").slice(0, 16)}..., the source says ${payload.toString("hex").slice(0, 16)}...`,
    );
}

/** A writer of framed sections that counts ids, bytes, and (optionally) hashes what it sends. */
export class SectionWriter {
  private nextId = 1;
  bytes = 0;
  private hash: StreamHash | null = null;
  /** The session key (ByteReader.sessionKey): the end digest is keyed with it. */
  sessionKey: Buffer | null = null;
  /**
   * Frames given to frame() with a release go back to their pool once the stream's write
   * callback says it took them; false for a stream whose callback comes before the bytes left
   * (FaultInjector forwards to its socket and calls back at once): frames are then never reused.
   */
  reuseFrames = true;
  /** Failure injection: called with each encoded frame before it is written; may replace it. */
  mangle: ((frame: Buffer, type: number) => Buffer | null) | null = null;

  constructor(readonly dst: Duplex) {}

  /** Starts the stream digest (hashed in a worker, stream_hash.ts) of every byte from here on. */
  startDigest(): void {
    this.hash?.close();
    this.hash = new StreamHash();
  }

  /** The end section's digest of every byte since startDigest (keyed when authenticated). */
  async digest(): Promise<Buffer> {
    const h = this.hash;
    this.hash = null;
    return streamDigest(h ? await h.digest() : Buffer.alloc(32), this.sessionKey);
  }

  /** Stops hashing without a digest (a failed migration). */
  stopDigest(): void {
    this.hash?.close();
    this.hash = null;
  }

  async raw(b: Buffer): Promise<void> {
    this.hash?.update(b);
    this.bytes += b.length;
    await writeAll(this.dst, b);
  }

  async section(type: number, payload: Uint8Array): Promise<void> {
    await this.send(encodeSection(type, this.nextId++, payload), type);
  }

  /**
   * A section built in place (RamBuilder.takeFrame): `frame` holds FRAME_HEAD bytes of room, the
   * payload, FRAME_TAIL bytes of room; the header and CRC are written into it, nothing copied.
   */
  async frame(type: number, frame: Buffer, release?: (f: Buffer) => void): Promise<void> {
    const len = frame.length - FRAME_HEAD - FRAME_TAIL;
    frame.writeUInt8(type, 0);
    frame.writeUInt32BE(this.nextId++, 1);
    frame.writeUInt32BE(len, 5);
    frame.writeUInt32BE(crc32(frame.subarray(0, FRAME_HEAD + len)), FRAME_HEAD + len);
    await this.send(frame, type, release);
  }

  private async send(f: Buffer, type: number, release?: (f: Buffer) => void): Promise<void> {
    let frame = f;
    if (this.mangle) {
      const m = this.mangle(frame, type);
      // A replaced frame is not ours to reuse (the injector may hold it): never released.
      if (m !== frame) release = undefined;
      if (m === null) return;
      frame = m;
    }
    this.hash?.update(frame);
    this.bytes += frame.length;
    const done = release && this.reuseFrames ? () => release(f) : undefined;
    await writeAll(this.dst, frame, done);
  }
}

/**
 * Writes with backpressure; fails with ECONNRESET if the stream is gone. `written` is called
 * once the stream has taken the bytes (its write callback, without error): `b` may be reused then.
 */
export function writeAll(dst: Duplex, b: Buffer, written?: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    if (dst.destroyed || dst.writableEnded) {
      reject(new MigrationError("ECONNRESET", "the peer went away (the connection is closed)"));
      return;
    }
    const ok = dst.write(b, (e) => {
      if (e) reject(new MigrationError("ECONNRESET", `the peer went away (${e.message})`));
      else written?.();
    });
    if (ok) resolve();
    else {
      const onDrain = (): void => {
        dst.off("close", onClose);
        resolve();
      };
      const onClose = (): void => {
        dst.off("drain", onDrain);
        reject(new MigrationError("ECONNRESET", "the peer went away (the connection closed)"));
      };
      dst.once("drain", onDrain);
      dst.once("close", onClose);
    }
  });
}

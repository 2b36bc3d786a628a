/**
 * Post-copy recovery, as QEMU's (3.0 on): when the link drops during post-copy both sides enter
 * "postcopy-paused" instead of failing. The destination's vCPUs keep waiting on their missing
 * pages and the source keeps its paused memory; on a new connection (authenticated as the first,
 * QEMU's `migrate-recover` on the destination and `migrate -r` on the source) the two sides run
 * this handshake in "postcopy-recover", then post-copy goes on where it stopped:
 *
 *   src -> dst   header, recv-bitmap-request {migrationId}     (MIG_CMD_RECV_BITMAP)
 *   dst -> src   recv-bitmap: the pages it holds               (MIG_RP_MSG_RECV_BITMAP)
 *   src -> dst   resume                                        (MIG_CMD_POSTCOPY_RESUME)
 *   dst -> src   resume-ack                                    (MIG_RP_MSG_RESUME_ACK)
 *
 * The source then owes exactly the pages the bitmap lacks: those it had sent on the dropped link
 * that never arrived are sent again. The destination asks again for every page a vCPU waits on
 * (the requests in flight were lost with the link). Each connection has its own stream digest.
 */
import { PAGE_SIZE } from "../kvm_host.js";
import type { Duplex } from "node:stream";
import type { GuestVm } from "./guest_vm.js";
import { StreamHash } from "./stream_hash.js";
import {
  ByteReader,
  encodeHeader,
  jsonPayload,
  MIG_VERSION,
  MigrationError,
  readHeader,
  readSection,
  Sec,
  SectionWriter,
} from "./stream.js";

/** A new connection for a paused post-copy (the caller authenticated it as the first). */
export interface Reconnection {
  stream: Duplex;
  reader: ByteReader;
}

/**
 * Gives a paused post-copy its new connection; rejects (typed) when there will be none.
 * `pausedAt`: when this pause began (performance.now()); asked again after each failed
 * handshake with the same value, so that the pause has one deadline (recoverWithin).
 */
export type RecoverConnection = (pausedAt: number) => Promise<Reconnection>;

/**
 * A destination's RecoverConnection with one absolute deadline per pause: `timeoutMs` from the
 * pause's start, however many peers fail the handshake meanwhile; each wait for a connection
 * gets what is left of it (`connect(leftMs)`). ETIMEDOUT once none is left.
 */
export function recoverWithin(
  timeoutMs: number,
  connect: (leftMs: number) => Promise<Reconnection>,
  now: () => number = () => performance.now(),
): RecoverConnection {
  const timedOut = (): MigrationError =>
    new MigrationError("ETIMEDOUT", `no source came back to resume in ${timeoutMs} ms`);
  return async (pausedAt) => {
    const left = Math.ceil(pausedAt + timeoutMs - now());
    if (left <= 0) throw timedOut();
    try {
      return await connect(left);
    } catch (e) {
      throw e instanceof MigrationError && e.code === "ETIMEDOUT" ? timedOut() : e;
    }
  };
}

/** How long one side of the handshake waits for the other's answer. */
export const RECOVER_ANSWER_MS = 10_000;

/** A dropped link (what pauses post-copy), as opposed to a damaged stream or a peer's error. */
export function isLinkFailure(e: unknown): boolean {
  return (
    e instanceof MigrationError && (e.code === "ECONNRESET" || e.code === "ENODATA" || e.code === "ETIMEDOUT")
  );
}

/** recv-bitmap payload: be32 page count, then the bitmap (bit n: page n is held) as LE words. */
export function encodeRecvBitmap(g: GuestVm): Buffer {
  const pages = g.layout.memoryBytes / PAGE_SIZE;
  const words = Math.ceil(pages / 32);
  const b = Buffer.alloc(4 + 4 * words);
  b.writeUInt32BE(pages, 0);
  for (let w = 0; w < words; w++) {
    let bits = 0;
    for (let i = 0; i < 32 && w * 32 + i < pages; i++)
      if (!g.vm.userfaultMissing((w * 32 + i) * PAGE_SIZE)) bits |= 1 << i;
    b.writeUInt32LE(bits >>> 0, 4 + 4 * w);
  }
  return b;
}

export function decodeRecvBitmap(payload: Buffer, id: number, pages: number): Uint32Array {
  const words = Math.ceil(pages / 32);
  if (payload.length !== 4 + 4 * words || payload.readUInt32BE(0) !== pages)
    throw new MigrationError(
      "EPROTO",
      `section ${id} (recv-bitmap): ${payload.length} bytes, this guest has ${pages} pages (${4 + 4 * words} bytes)`,
    );
  const bm = new Uint32Array(words);
  for (let i = 0; i < words; i++) bm[i] = payload.readUInt32LE(4 + 4 * i);
  if (pages % 32 !== 0 && (bm[words - 1] & ~(2 ** (pages % 32) - 1)) !== 0)
    throw new MigrationError("EPROTO", `section ${id} (recv-bitmap): bits set past page ${pages - 1}`);
  return bm;
}

/** The return path as the handshake needs it (return_path.ts's ReturnPath). */
interface Answers {
  expect(type: number, timeoutMs: number): Promise<{ payload: Buffer; id: number }>;
}

/**
 * The source's side on a new connection, up to the destination's bitmap (the source then
 * merges it and sends resume: sendResume). The writer is fresh: header first, own digest.
 */
export async function requestRecvBitmap(
  w: SectionWriter,
  ret: Answers,
  migrationId: string,
  pages: number,
): Promise<Uint32Array> {
  w.startDigest();
  await w.raw(encodeHeader(MIG_VERSION));
  await w.section(Sec.RecvBitmapReq, jsonPayload({ migrationId }));
  const s = await ret.expect(Sec.RecvBitmap, RECOVER_ANSWER_MS);
  return decodeRecvBitmap(s.payload, s.id, pages);
}

/** The source's last step: resume, and the destination's ack (post-copy goes on after it). */
export async function sendResume(w: SectionWriter, ret: Answers): Promise<void> {
  await w.section(Sec.Resume, Buffer.alloc(0));
  await ret.expect(Sec.ResumeAck, RECOVER_ANSWER_MS);
}

/** A new connection the destination reads post-copy from. */
export interface IncomingLink {
  stream: Duplex;
  r: ByteReader;
  back: SectionWriter;
  /** Id of the next section from the source on this connection. */
  nextId: number;
}

/**
 * The destination's side on a new connection: the header, a recv-bitmap request naming this
 * migration (another migration's source is refused EPROTO), the bitmap of the pages it holds,
 * resume, the ack. Returns the link post-copy reads on; the caller's page asker starts again.
 */
export async function acceptResume(
  g: GuestVm,
  conn: Reconnection,
  migrationId: string,
  idleMs: number,
  phase: () => string,
): Promise<IncomingLink> {
  const r = conn.reader;
  r.idle = { ms: idleMs, phase };
  r.hash = new StreamHash();
  await readHeader(r);
  const req = await readSection(r, 1, [Sec.RecvBitmapReq]);
  let theirs: unknown;
  try {
    theirs = (JSON.parse(req.payload.toString()) as { migrationId?: unknown }).migrationId;
  } catch {
    theirs = undefined;
  }
  if (theirs !== migrationId)
    throw new MigrationError(
      "EPROTO",
      `section 1 (recv-bitmap-request): migration ${String(theirs)} is not the paused one (${migrationId})`,
    );
  const back = new SectionWriter(conn.stream);
  await back.section(Sec.RecvBitmap, encodeRecvBitmap(g));
  await readSection(r, 2, [Sec.Resume]);
  await back.section(Sec.ResumeAck, Buffer.alloc(0));
  return { stream: conn.stream, r, back, nextId: 3 };
}

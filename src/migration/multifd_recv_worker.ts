/**
 * A destination multifd channel (QEMU's multifd_recv_thread): listens on an ephemeral port for
 * the one source connection that proves this session (multifd_channel.ts), then reads the
 * channel's sections and writes each RAM section's pages straight into guest memory (the VM's
 * shared structures, each page under mm_lock as kvm_write_guest), a section only once it has
 * been parsed whole. At a sync section it tells the main thread and waits until the main thread
 * releases the round (every channel synced and the main stream's round marker read: QEMU's
 * multifd_recv_sync_main), so a page of the next round can never land before an older copy of
 * it on another channel. At EOF it checks the channel's keyed digest.
 */
import { parentPort, workerData } from "node:worker_threads";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { Kvm, KvmShared, PAGE_SIZE } from "../kvm_host.js";
import { guest_write } from "../guest/host_access.js";
import {
  ByteReader,
  decodeRam,
  encodeHeader,
  MigrationError,
  readHeader,
  readSection,
  Sec,
  Section,
  streamDigest,
} from "./stream.js";
import {
  ChannelAuth,
  channelKey,
  FirstCause,
  listenChannel,
  RECV_CTL,
  RecvReply,
} from "./multifd_channel.js";

export interface RecvWorkerData {
  shared: KvmShared;
  host: string;
  auth: ChannelAuth;
  memoryBytes: number;
  /** RECV_CTL words, shared with the main thread. */
  ctl: SharedArrayBuffer;
  idleMs: number;
  /** The destination's FirstCause word, shared with the main thread and the other channels. */
  cause: SharedArrayBuffer;
  /**
   * Test hook: a channel that failed first reports it only once word 0 is nonzero (so a test
   * can make another channel's consequent failure reach the main thread before the cause).
   */
  holdError?: SharedArrayBuffer;
}

const port = parentPort!;
const d = workerData as RecvWorkerData;
const kvm = new Kvm(d.shared);
const ctl = new Int32Array(d.ctl);
const hash = createHash("sha256");
const zero = new Uint8Array(PAGE_SIZE);
const id = d.auth.id;
const cause = new FirstCause(d.cause);
/** This channel claimed the destination's failure (it failed before anything else did). */
let first = false;

/** Claims the failure; called before this channel closes its socket or refuses its peer. */
function claim(): void {
  if (cause.claim(id + 1)) first = true;
}

async function holdError(): Promise<void> {
  const w = d.holdError ? new Int32Array(d.holdError) : null;
  while (first && w && Atomics.load(w, 0) === 0) await new Promise((r) => setTimeout(r, 5));
}

function reply(m: RecvReply): void {
  port.postMessage(m);
}

/** The frame's bytes as the source hashed them: header, payload, CRC. */
function hashSection(s: Section): void {
  const h = Buffer.alloc(9);
  h.writeUInt8(s.type, 0);
  h.writeUInt32BE(s.id, 1);
  h.writeUInt32BE(s.payload.length, 5);
  const c = Buffer.alloc(4);
  c.writeUInt32BE(crc32(s.payload, crc32(h)), 0);
  hash.update(h).update(s.payload).update(c);
}

/** Blocks this channel until the main thread releases `round` (or the migration fails). */
function waitRelease(round: number): void {
  while (Atomics.load(ctl, RECV_CTL.release) < round) {
    if (Atomics.load(ctl, RECV_CTL.abort) !== 0)
      throw new MigrationError("ECANCELED", "the migration failed");
    Atomics.wait(ctl, RECV_CTL.release, Atomics.load(ctl, RECV_CTL.release), 100);
  }
}

async function receive(r: ByteReader): Promise<void> {
  r.idle = { ms: d.idleMs, phase: () => `channel ${id}` };
  await readHeader(r);
  // The header it checked is this version's: hash it as the source did.
  hash.update(encodeHeader());
  let pages = 0;
  let roundPages = 0;
  let round = 0;
  const end = d.memoryBytes;
  for (let sid = 1; ; sid++) {
    const s = await readSection(r, sid, [Sec.Ram, Sec.MultifdSync, Sec.Eof]);
    if (s.type === Sec.Eof) {
      const want = streamDigest(hash.digest(), channelKey(d.auth.sessionKey, id));
      if (!want.equals(s.payload))
        throw new MigrationError("EBADMSG", `channel ${id}: stream digest mismatch`);
      reply({ type: "done", pages, bytes: r.consumed });
      return;
    }
    hashSection(s);
    if (s.type === Sec.Ram) {
      const recs = decodeRam(s.payload, sid, (gpa) => gpa + PAGE_SIZE <= end);
      for (const rec of recs) guest_write(kvm, rec.gpa, rec.data ?? zero);
      pages += recs.length;
      roundPages += recs.length;
      Atomics.add(ctl, RECV_CTL.progress, 1);
    } else {
      const k = s.payload.length === 8 ? s.payload.readUInt32BE(0) : -1;
      const n = s.payload.length === 8 ? s.payload.readUInt32BE(4) : -1;
      if (k !== round + 1 || n !== roundPages)
        throw new MigrationError(
          "EPROTO",
          `channel ${id}: sync of round ${k} with ${n} pages where round ${round + 1} with ${roundPages} pages was due`,
        );
      round = k;
      roundPages = 0;
      reply({ type: "synced", round, pages });
      waitRelease(round);
    }
  }
}

try {
  const l = await listenChannel(d.host, d.auth, claim);
  reply({ type: "listening", port: l.port });
  const { sock, reader } = await l.accepted;
  reply({ type: "connected" });
  try {
    await receive(reader);
  } catch (e) {
    claim();
    throw e;
  } finally {
    sock.end();
    setTimeout(() => sock.destroy(), 1000).unref();
  }
} catch (e) {
  claim();
  const err = e instanceof MigrationError ? e : new MigrationError("EIO", (e as Error).message ?? String(e));
  await holdError();
  reply({ type: "error", code: err.code, message: err.message.replace(/^[A-Z]+: /, "") });
}
port.close();

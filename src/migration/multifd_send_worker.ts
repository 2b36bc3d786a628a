/**
 * A source multifd channel (QEMU's multifd_send_thread): connects to its destination listener
 * (multifd_channel.ts), then for each round the main thread hands it reads its pages straight
 * from guest memory (the VM's shared structures, each page under mm_lock as kvm_read_guest),
 * sends them as RAM sections, and ends the round with a sync section (QEMU's MULTIFD_FLAG_SYNC).
 * At the end: an EOF section with the channel's keyed digest. Every byte of the channel is
 * hashed here (SHA-256), off the main thread.
 */
import { parentPort, workerData } from "node:worker_threads";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import type { Socket } from "node:net";
import { Kvm, KvmShared, PAGE_SIZE } from "../kvm_host.js";
import { guest_read_into } from "../guest/host_access.js";
import {
  encodeHeader,
  encodeSection,
  FRAME_HEAD,
  FRAME_TAIL,
  MigrationError,
  RamBuilder,
  Sec,
  streamDigest,
  writeAll,
} from "./stream.js";
import { RateLimiter } from "./rate_limit.js";
import {
  ChannelAuth,
  channelKey,
  connectChannel,
  FirstCause,
  SendReply,
  SendRequest,
} from "./multifd_channel.js";

export interface SendWorkerData {
  shared: KvmShared;
  host: string;
  port: number;
  auth: ChannelAuth;
  /** Bytes per second for this channel (its share of max-bandwidth); 0: none. */
  maxBandwidth: number;
  /** Failure injection: "channel-auth" (a wrong proof), "drop-channel" (cut mid-round). */
  fault?: "channel-auth" | "drop-channel";
  /** The source's FirstCause word, shared with the main thread and the other channels. */
  cause: SharedArrayBuffer;
}

/**
 * drop-channel: RAM frames sent before the cut. 0: the channel's first frame is cut, so the fault
 * fires in every migration (a channel of a small guest may send only one frame a round, and with
 * a cut after the 2nd frame a migration that converged in two rounds completed untouched).
 */
const DROP_AFTER_FRAMES = 0;
const RAM_SECTION_PAGES = 256;

const port = parentPort!;
const d = workerData as SendWorkerData;
const kvm = new Kvm(d.shared);
const hash = createHash("sha256");
const ram = new RamBuilder(RAM_SECTION_PAGES);
const page8 = new Uint8Array(PAGE_SIZE);
const limiter = new RateLimiter(d.maxBandwidth);
let sock!: Socket;
let nextId = 1;
let bytes = 0;
let ramFrames = 0;
const cause = new FirstCause(d.cause);

function reply(m: SendReply): void {
  port.postMessage(m);
}

/** One frame on the wire: header and CRC written in place (SectionWriter.frame's layout). */
async function send(frame: Buffer, release?: () => void): Promise<void> {
  hash.update(frame);
  bytes += frame.length;
  await writeAll(sock, frame, release);
}

async function sendRam(limited: boolean): Promise<void> {
  if (ram.pages === 0) return;
  const f = ram.takeFrame();
  const len = f.length - FRAME_HEAD - FRAME_TAIL;
  f.writeUInt8(Sec.Ram, 0);
  f.writeUInt32BE(nextId++, 1);
  f.writeUInt32BE(len, 5);
  f.writeUInt32BE(crc32(f.subarray(0, FRAME_HEAD + len)), FRAME_HEAD + len);
  if (d.fault === "drop-channel" && ++ramFrames > DROP_AFTER_FRAMES) {
    // A link cut in the middle of a frame: half of it leaves, then the connection is gone.
    // The cut is this side's first failure: claimed before the peer can see it.
    cause.claim(d.auth.id + 1);
    sock.write(f.subarray(0, f.length >> 1));
    sock.destroy();
  }
  await send(f, () => ram.release(f));
  limiter.enabled = limited;
  await limiter.account(f.length);
}

async function round(m: Extract<SendRequest, { type: "round" }>): Promise<void> {
  let normal = 0;
  let duplicate = 0;
  const before = bytes;
  for (let i = 0; i < m.pages.length; i++) {
    const gpa = m.pages[i] * PAGE_SIZE;
    guest_read_into(kvm, gpa, page8);
    if (ram.add(gpa, page8)) duplicate++;
    else normal++;
    if (ram.full) await sendRam(m.limited);
  }
  await sendRam(m.limited);
  const sync = Buffer.alloc(8);
  sync.writeUInt32BE(m.round, 0);
  sync.writeUInt32BE(m.pages.length, 4);
  await send(encodeSection(Sec.MultifdSync, nextId++, sync));
  reply({ type: "round-done", round: m.round, bytes: bytes - before, normal, duplicate });
}

/**
 * The channel's EOF, then its end. "ended" waits until the destination has closed its side
 * (it does once it read the EOF, or when it fails): the main thread terminates this worker on
 * "ended", and a worker terminated with its last frames still queued (TLS writes are, after
 * writeAll returns) loses them while the kernel still sends a clean FIN, so the destination
 * saw a stream that ends at a section boundary (ENODATA) in a migration that had not failed.
 */
async function end(): Promise<void> {
  const digest = streamDigest(hash.digest(), channelKey(d.auth.sessionKey, d.auth.id));
  await writeAll(sock, encodeSection(Sec.Eof, nextId++, digest));
  const closed = new Promise<void>((res) => {
    if (sock.destroyed || sock.readableEnded) res();
    sock.once("end", res);
    sock.once("close", res);
  });
  sock.end();
  await closed;
  reply({ type: "ended", bytes });
}

function fail(e: unknown): void {
  // Claimed before this socket closes: the destination's channel ending is our consequence.
  cause.claim(d.auth.id + 1);
  const err = e instanceof MigrationError ? e : new MigrationError("EIO", (e as Error).message ?? String(e));
  // multifd.ts names the channel in front of what it reports.
  reply({ type: "error", code: err.code, message: err.message.replace(/^[A-Z]+: /, "") });
  sock?.destroy();
  port.close();
}

let queue: Promise<void> = Promise.resolve();
let failed = false;
try {
  const c = await connectChannel(d.host, d.port, d.auth, d.fault === "channel-auth");
  sock = c.sock;
  // What the destination says goes on the main connection: this direction carries nothing.
  c.reader.drain();
  const header = encodeHeader();
  hash.update(header);
  bytes += header.length;
  await writeAll(sock, header);
  reply({ type: "ready" });
  port.on("message", (m: SendRequest) => {
    queue = queue.then(async () => {
      if (failed) return;
      try {
        if (m.type === "round") await round(m);
        else await end();
      } catch (e) {
        failed = true;
        fail(e);
      }
    });
  });
} catch (e) {
  fail(e);
}

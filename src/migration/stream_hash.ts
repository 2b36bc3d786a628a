/**
 * The stream digest (SHA-256 of every byte before the EOF section, stream.ts) computed in a
 * worker thread: the thread that reads or writes the stream only copies the bytes into a shared
 * ring (a memcpy into memory that stays mapped, ~10x cheaper than hashing them) and posts where
 * they are; per-byte hashing is off the hot path. One worker, messages in order: the digest is
 * exactly the one a Hash in this thread would give. When the ring is full the producer waits
 * for the worker (the hash is then the bottleneck, as it was before).
 */
import { Worker } from "node:worker_threads";
import { once } from "node:events";
import { KvmError } from "../errors.js";

const WORKER = new URL("./stream_hash_worker.js", import.meta.url);
const RING = 8 << 20;
/** Bytes gathered in the ring before one message tells the worker. */
const BATCH = 256 << 10;

export class StreamHash {
  private readonly ring = new SharedArrayBuffer(RING);
  private readonly bytes = new Uint8Array(this.ring);
  /** Bytes the worker has hashed, mod 2^32; written by the worker only (Atomics.add). */
  private readonly consumed = new Int32Array(new SharedArrayBuffer(4));
  private readonly w: Worker;
  /** Bytes placed in the ring, mod 2^32; this thread only. */
  private produced = 0;
  private pos = 0;
  /** Placed but not yet posted: ring[start, start + pending). */
  private start = 0;
  private pending = 0;
  private closed = false;

  constructor() {
    this.w = new Worker(WORKER, { workerData: { ring: this.ring, consumed: this.consumed.buffer } });
    // A stream hash never keeps the process alive (a failed migration may drop it unfinished).
    this.w.unref();
    // A worker gone (terminated, or failed) consumes nothing more: update() must not wait on it.
    this.w.once("exit", () => (this.closed = true));
  }

  /** Hashes `b` (copied into the ring: the caller may reuse it at once). */
  update(b: Uint8Array): void {
    let off = 0;
    while (off < b.length && !this.closed) {
      const free = RING - ((this.produced - Atomics.load(this.consumed, 0)) >>> 0);
      if (free === 0) {
        this.post();
        Atomics.wait(this.consumed, 0, Atomics.load(this.consumed, 0), 50);
        continue;
      }
      const n = Math.min(b.length - off, free, RING - this.pos);
      this.bytes.set(b.subarray(off, off + n), this.pos);
      off += n;
      this.pending += n;
      this.produced = (this.produced + n) >>> 0;
      this.pos += n;
      // A message covers one contiguous stretch: post at the ring's end and every BATCH bytes.
      if (this.pos === RING || this.pending >= BATCH) this.post();
      if (this.pos === RING) this.pos = this.start = 0;
    }
  }

  /** The point markedDigest() answers for (the destination marks before each section). */
  mark(): void {
    this.post();
    this.w.postMessage("mark");
  }

  /** The digest of every byte given; the worker ends. */
  digest(): Promise<Buffer> {
    return this.ask("digest");
  }

  /** The digest at the last mark(); the worker ends. */
  markedDigest(): Promise<Buffer> {
    return this.ask("marked");
  }

  /** Ends the worker without a digest (a failed migration). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    void this.w.terminate();
  }

  private async ask(what: string): Promise<Buffer> {
    if (this.closed) throw new KvmError("EIO", "the stream digest's worker is gone");
    this.post();
    this.w.postMessage(what);
    const gone = once(this.w, "exit").then(() => {
      throw new KvmError("EIO", "the stream digest's worker ended before its digest");
    });
    // Once the digest came, the worker's exit (close below) must not reject unobserved.
    gone.catch(() => {});
    const [d] = (await Promise.race([once(this.w, "message"), gone])) as [Uint8Array];
    this.close();
    return Buffer.from(d.buffer, d.byteOffset, d.length);
  }

  private post(): void {
    if (this.pending === 0) return;
    this.w.postMessage([this.start, this.pending]);
    this.start += this.pending;
    this.pending = 0;
  }
}

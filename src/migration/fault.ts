/**
 * Failure injection (tests, `kvmmu migrate --fault`) as a wrapper around the outgoing transport:
 * it sees the frames the source writes (the stream header, then one section per write, as
 * SectionWriter writes them) and damages one. "bad-version" rewrites the header; the others wait
 * until armed (the source arms it when it enters "device": the guest is stopped, so the test is
 * that the source resumes it with nothing lost) and then damage the next RAM frame ("flip" a
 * byte, "truncate" it and cut the link, "bad-flag" an unknown page flag with a valid CRC) or put
 * an unknown section before the vCPU state ("bad-section"). "kill-destination" is the caller's
 * to do (it owns the destination); the wrapper passes everything through for it. "drop-link"
 * (post-copy) cuts the connection in the middle of the 8th RAM frame after postcopy-run, or
 * after resume on a recovered connection: the link drop post-copy recovery is for.
 * "channel-auth" and "drop-channel" are multifd's (multifd_send_worker.ts, the last channel): a
 * wrong channel proof, and a channel cut in the middle of its third RAM frame.
 */
import { Duplex } from "node:stream";
import { crc32 } from "node:zlib";
import { encodeSection, HEADER_BYTES, jsonPayload, MIG_MAGIC, MIG_VERSION, Sec } from "./stream.js";

export const FAULTS = [
  "truncate",
  "flip",
  "bad-section",
  "bad-flag",
  "bad-version",
  "kill-destination",
  "drop-link",
  "channel-auth",
  "drop-channel",
] as const;
export type FaultKind = (typeof FAULTS)[number];

/** Frame layout (stream.ts's encodeSection): type u8, id be32, length be32, payload, crc be32. */
const FRAME_HEADER = 9;
/** An unknown page flag (stream.ts's RAM_ZERO and RAM_PAGE are 0x02 and 0x08). */
const BAD_FLAG = 0x40;
/** drop-link: RAM frames let through after postcopy-run (or resume) before the cut. */
const DROP_AFTER_FRAMES = 8;

export class FaultInjector extends Duplex {
  private armed = false;
  /** The fault was injected: what follows passes through (or, after a cut, is lost). */
  private done = false;
  private cut = false;
  /** drop-link: RAM frames since postcopy-run or resume (-1: neither seen yet). */
  private ramFrames = -1;
  /** Faults injected (0 or 1): tests check the wrapper did its part. */
  injected = 0;

  constructor(
    readonly inner: Duplex,
    readonly kind: FaultKind,
  ) {
    super();
    inner.once("close", () => this.destroy());
  }

  /** The guest is stopped: the switch-over's frames may be damaged now. */
  arm(): void {
    this.armed = true;
  }

  override _read(): void {
    // The return path is read from the inner stream directly.
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    if (this.cut) return cb();
    const out = this.damage(chunk);
    let pending = out.length;
    if (pending === 0) return cb();
    const done = (e?: Error | null): void => {
      if (e) cb(e);
      else if (--pending === 0) cb();
    };
    for (const b of out) this.forward(b, done);
    // A dropped link is gone both ways at once; the other cuts end the stream.
    if (this.cut) {
      if (this.kind === "drop-link") this.inner.destroy();
      else this.inner.end();
    }
  }

  override _final(cb: (e?: Error | null) => void): void {
    if (!this.cut) this.inner.end();
    cb();
  }

  override _destroy(e: Error | null, cb: (e?: Error | null) => void): void {
    this.inner.destroy();
    cb(e);
  }

  private forward(b: Buffer, cb: (e?: Error | null) => void): void {
    if (this.inner.write(b)) cb();
    else this.inner.once("drain", () => cb());
  }

  /** What goes on the wire for one write: the frame as is, damaged, or with a frame before it. */
  private damage(chunk: Buffer): Buffer[] {
    if (this.done) return [chunk];
    if (this.kind === "bad-version" && isHeader(chunk)) {
      const h = Buffer.from(chunk);
      h.writeUInt32BE(MIG_VERSION + 98, 4);
      return this.hit([h]);
    }
    if (this.kind === "drop-link") return this.dropLink(chunk);
    if (!this.armed || chunk.length < FRAME_HEADER + 4) return [chunk];
    const type = chunk.readUInt8(0);
    if (this.kind === "bad-section" && type === Sec.Vcpu) {
      const unknown = encodeSection(
        0x7e,
        chunk.readUInt32BE(1),
        jsonPayload({ what: "a section nobody knows" }),
      );
      return this.hit([unknown, chunk]);
    }
    if (type !== Sec.Ram) return [chunk];
    const f = Buffer.from(chunk);
    if (this.kind === "flip") f[Math.floor(f.length / 2)] ^= 0x20;
    else if (this.kind === "truncate") {
      this.cut = true;
      return this.hit([f.subarray(0, Math.floor(f.length / 2))]);
    } else if (this.kind === "bad-flag") {
      // The first record's flags (the low bits of its be64 gpa), the CRC made good again.
      const lo = FRAME_HEADER + 4;
      f.writeUInt32BE(((f.readUInt32BE(lo) & ~0xfff) | BAD_FLAG) >>> 0, lo);
      f.writeUInt32BE(crc32(f.subarray(0, f.length - 4)), f.length - 4);
    } else return [chunk];
    return this.hit([f]);
  }

  /** drop-link: half of the 8th RAM frame after postcopy-run or resume, then the cut. */
  private dropLink(chunk: Buffer): Buffer[] {
    if (chunk.length < FRAME_HEADER + 4) return [chunk];
    const type = chunk.readUInt8(0);
    if (type === Sec.Postcopy || type === Sec.Resume) this.ramFrames = 0;
    else if (type === Sec.Ram && this.ramFrames >= 0 && ++this.ramFrames >= DROP_AFTER_FRAMES) {
      this.cut = true;
      return this.hit([chunk.subarray(0, Math.floor(chunk.length / 2))]);
    }
    return [chunk];
  }

  private hit(out: Buffer[]): Buffer[] {
    this.done = true;
    this.injected++;
    return out;
  }
}

function isHeader(b: Buffer): boolean {
  return b.length === HEADER_BYTES && b.readUInt32BE(0) === MIG_MAGIC;
}

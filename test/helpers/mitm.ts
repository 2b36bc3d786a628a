/**
 * A man in the middle for migration tests: a TCP proxy between a source and a destination that
 * hands the source-to-destination bytes to an editor. `rawEditor` sees bytes as they come (what
 * a party on the path sees of a TLS stream); `frameEditor` parses the plaintext stream (the
 * source's 64-byte handshake answer, the header, then whole sections) and edits it unit by unit.
 */
import { createServer, Server, Socket } from "node:net";

/** What the editor returns for some bytes: what to forward, and whether to cut the link after. */
export interface Edit {
  out: Buffer;
  cut?: boolean;
}

export type Editor = (chunk: Buffer) => Edit;

export interface Mitm {
  port: number;
  close(): void;
}

export async function startMitm(targetPort: number, edit: Editor): Promise<Mitm> {
  const pairs: Socket[] = [];
  const server: Server = createServer({ allowHalfOpen: true }, (src) => {
    const dst = new Socket({ allowHalfOpen: true });
    pairs.push(src, dst);
    let cut = false;
    src.on("error", () => dst.destroy());
    dst.on("error", () => src.destroy());
    dst.connect(targetPort, "127.0.0.1");
    src.on("data", (c: Buffer) => {
      if (cut) return;
      const e = edit(c);
      if (e.out.length > 0) dst.write(e.out);
      if (e.cut) {
        cut = true;
        dst.end();
      }
    });
    src.on("end", () => {
      if (!cut) dst.end();
    });
    dst.on("data", (c: Buffer) => src.write(c));
    dst.on("end", () => src.end());
    dst.on("close", () => src.destroy());
    src.on("close", () => dst.destroy());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const a = server.address();
  return {
    port: typeof a === "object" && a ? a.port : 0,
    close: () => {
      server.close();
      for (const s of pairs) s.destroy();
    },
  };
}

/** Flips one byte (xor `mask`) at absolute offset `at` of the source-to-destination bytes. */
export function rawEditor(at: number, mask = 0x01): Editor & { flipped: number } {
  let seen = 0;
  const f = ((c: Buffer): Edit => {
    if (at >= seen && at < seen + c.length) {
      c = Buffer.from(c);
      c[at - seen] ^= mask;
      f.flipped++;
    }
    seen += c.length;
    return { out: c };
  }) as Editor & { flipped: number };
  f.flipped = 0;
  return f;
}

/** One unit of the plaintext stream after the handshake: the header or a whole section frame. */
export interface Unit {
  /** "header", or the section's type byte. */
  kind: "header" | number;
  bytes: Buffer;
}

/** Handshake bytes the source sends before the stream (auth.ts: HMAC answer and its nonce). */
export const SOURCE_HANDSHAKE = 64;
const HEADER = 8;
const FRAME_HEADER = 9;

/**
 * Parses the plaintext source-to-destination stream into units and hands each to `unit`, which
 * returns what to forward in its place (and whether to cut the link after it).
 */
export function frameEditor(unit: (u: Unit) => Edit): Editor {
  let buf = Buffer.alloc(0);
  let handshake = SOURCE_HANDSHAKE;
  let header = true;
  let dead = false;
  return (c: Buffer): Edit => {
    if (dead) return { out: Buffer.alloc(0) };
    buf = Buffer.concat([buf, c]);
    const out: Buffer[] = [];
    for (;;) {
      if (handshake > 0) {
        const n = Math.min(handshake, buf.length);
        out.push(buf.subarray(0, n));
        buf = buf.subarray(n);
        handshake -= n;
        if (handshake > 0) break;
        continue;
      }
      let u: Unit;
      if (header) {
        if (buf.length < HEADER) break;
        u = { kind: "header", bytes: buf.subarray(0, HEADER) };
        header = false;
      } else {
        if (buf.length < FRAME_HEADER) break;
        const len = FRAME_HEADER + buf.readUInt32BE(5) + 4;
        if (buf.length < len) break;
        u = { kind: buf[0], bytes: buf.subarray(0, len) };
      }
      buf = buf.subarray(u.bytes.length);
      const e = unit(u);
      out.push(e.out);
      if (e.cut) {
        dead = true;
        return { out: Buffer.concat(out), cut: true };
      }
    }
    return { out: Buffer.concat(out) };
  };
}

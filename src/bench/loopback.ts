/**
 * The raw loopback reference of `kvmmu migrate-perf`: a plain Node socket pair on 127.0.0.1
 * moving `bytes` in large writes, nothing checked, nothing copied beyond what the socket does.
 * What a migration stream on this machine could reach at best; measured in the same run as the
 * migrations so that their bulk-round throughput can be given as a ratio of it. A cold pair moves
 * its first hundreds of MiB at a third of its later speed (JIT, socket buffers), so one untimed
 * pass goes first and the best of SAMPLES timed passes is the figure: the ratio is taken against
 * the link at its best, never flattered by a slow sample.
 */
import { createServer, Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { einval } from "../errors.js";

export interface LoopbackFigure {
  bytes: number;
  ms: number;
  bytesPerSec: number;
}

/** Each write: 1 MiB (the stream's own writes are as large, see docs/migration.md). */
const CHUNK = 1 << 20;
/** Timed passes after the warm-up pass. */
const SAMPLES = 3;

/** Moves `bytes` (in whole chunks) from one socket to its peer on loopback, SAMPLES + 1 times; the fastest timed pass. */
export async function measureLoopback(bytes = 256 << 20): Promise<LoopbackFigure> {
  if (!Number.isSafeInteger(bytes) || bytes < CHUNK) throw einval("bytes", `must be an integer >= ${CHUNK}`);
  let got = 0;
  let want = 0;
  let done: () => void = () => {};
  const server = createServer((s) => {
    s.on("data", (c: Buffer) => {
      got += c.length;
      if (got >= want) done();
    });
    s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  const sock = new Socket();
  await new Promise<void>((r, j) => {
    sock.once("error", j);
    sock.connect(port, "127.0.0.1", r);
  });
  const chunk = Buffer.alloc(CHUNK, 0xa5);
  const whole = Math.ceil(bytes / CHUNK) * CHUNK;
  /** One pass of `bytes`, timed from the first write to the peer's last read. */
  const pass = async (): Promise<LoopbackFigure> => {
    const received = new Promise<void>((r) => (done = r));
    want = got + whole;
    const from = got;
    const t0 = performance.now();
    for (let sent = 0; sent < whole; sent += CHUNK)
      if (!sock.write(chunk)) await new Promise((r) => sock.once("drain", r));
    await received;
    const ms = performance.now() - t0;
    return { bytes: got - from, ms, bytesPerSec: ((got - from) * 1000) / ms };
  };
  try {
    await pass();
    let best: LoopbackFigure | null = null;
    for (let i = 0; i < SAMPLES; i++) {
      const f = await pass();
      if (!best || f.bytesPerSec > best.bytesPerSec) best = f;
    }
    return best!;
  } finally {
    sock.destroy();
    server.close();
  }
}

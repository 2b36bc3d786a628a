/**
 * The raw loopback reference of `kvmmu migrate-perf`: a plain Node socket pair on 127.0.0.1
 * moving `bytes` in large writes, nothing checked, nothing copied beyond what the socket does.
 * What a migration stream on this machine could reach at best; measured in the same run as the
 * migrations so that their bulk-round throughput can be given as a ratio of it.
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

/** Moves `bytes` from one socket to its peer on loopback; resolves once the peer has read them all. */
export async function measureLoopback(bytes = 256 << 20): Promise<LoopbackFigure> {
  if (!Number.isSafeInteger(bytes) || bytes < CHUNK) throw einval("bytes", `must be an integer >= ${CHUNK}`);
  let got = 0;
  let done!: () => void;
  const received = new Promise<void>((r) => (done = r));
  const server = createServer((s) => {
    s.on("data", (c: Buffer) => {
      got += c.length;
      if (got >= bytes) done();
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
  const t0 = performance.now();
  try {
    for (let sent = 0; sent < bytes; sent += CHUNK)
      if (!sock.write(chunk)) await new Promise((r) => sock.once("drain", r));
    await received;
  } finally {
    sock.destroy();
    server.close();
  }
  const ms = performance.now() - t0;
  return { bytes: got, ms, bytesPerSec: (got * 1000) / ms };
}

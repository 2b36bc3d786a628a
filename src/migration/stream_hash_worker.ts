/**
 * The stream digest's worker (stream_hash.ts): SHA-256 of the bytes placed in the shared ring,
 * in order, off the thread that moves them. Messages: [offset, length] (hash that part of the
 * ring, then count it consumed), "mark" (remember the state here), "digest" (answer the digest
 * of everything), "marked" (answer the digest at the last mark).
 */
import { parentPort, workerData } from "node:worker_threads";
import { createHash, Hash } from "node:crypto";

const port = parentPort!;
const { ring, consumed } = workerData as { ring: SharedArrayBuffer; consumed: SharedArrayBuffer };
const bytes = new Uint8Array(ring);
/** Bytes hashed so far, mod 2^32 (the producer reads it to know what it may overwrite). */
const done = new Int32Array(consumed);
const h: Hash = createHash("sha256");
let mark: Hash | null = null;
port.on("message", (m: unknown) => {
  if (Array.isArray(m)) {
    const [off, len] = m as [number, number];
    h.update(bytes.subarray(off, off + len));
    Atomics.add(done, 0, len);
    Atomics.notify(done, 0);
  } else if (m === "mark") mark = h.copy();
  else if (m === "digest") port.postMessage(h.digest());
  else if (m === "marked") port.postMessage((mark ?? h).digest());
});

/**
 * The stream digest in a worker (stream_hash.ts): the same SHA-256 a Hash in this thread gives,
 * over updates of any size that wrap its ring several times, and at a mark.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { StreamHash } from "../../src/migration/stream_hash.js";
import { mulberry32 } from "../../src/bench/stats.js";

test("StreamHash: the digest of 20 MiB in updates of 0 B to 3 MiB equals createHash's, the marked one too", async () => {
  const rnd = mulberry32(7);
  const h = new StreamHash();
  const g = createHash("sha256");
  const m = new StreamHash();
  let marked: Buffer | null = null;
  let total = 0;
  for (let i = 0; total < 20 << 20; i++) {
    const n = i % 7 === 0 ? Math.floor(rnd() * (3 << 20)) : Math.floor(rnd() * 70_000);
    const b = Buffer.alloc(n);
    for (let k = 0; k < n; k += 997) b[k] = Math.floor(rnd() * 256);
    h.update(b);
    m.update(b);
    g.update(b);
    // The caller may reuse its buffer at once: the bytes were copied.
    b.fill(0xee);
    total += n;
    if (marked === null && total > 9 << 20) {
      m.mark();
      marked = g.copy().digest();
    }
  }
  assert.deepEqual(await h.digest(), g.digest());
  assert.deepEqual(await m.markedDigest(), marked);
});

test("StreamHash: nothing hashed is SHA-256 of nothing; close() without a digest ends it", async () => {
  assert.deepEqual(await new StreamHash().digest(), createHash("sha256").digest());
  const h = new StreamHash();
  h.update(Buffer.from("abc"));
  h.close();
  h.close();
});

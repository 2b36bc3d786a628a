/**
 * fast-check: any single byte of the source's stream (after the handshake, up to the end
 * section) flipped, inserted or cut there: the destination refuses it with a typed error and
 * fails cleanly, the source's guest runs on with its invariant. Plaintext, so the proxy sees
 * the frames; few runs (each is a whole migration).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { migrateIncoming, migrateTo } from "../../src/migration/migrate.js";
import { Sec } from "../../src/migration/stream.js";
import { frameEditor, startMitm, Unit } from "../helpers/mitm.js";

const KEY = "mutation-test-key";
const TARGETS = ["header", Sec.Config, Sec.Ram, Sec.Vcpu, Sec.Eof] as const;
const REFUSALS = ["EBADMSG", "EPROTO", "EPROTONOSUPPORT", "ENODATA", "EFAULT", "ETIMEDOUT", "ECONNRESET"];

interface Mutation {
  target: (typeof TARGETS)[number];
  frac: number;
  kind: "flip" | "insert" | "truncate";
  byte: number;
}

function mutator(m: Mutation): ((u: Unit) => { out: Buffer; cut?: boolean }) & { done: number } {
  const f = ((u: Unit) => {
    if (f.done > 0 || u.kind !== m.target) return { out: u.bytes };
    f.done++;
    const at = Math.min(u.bytes.length - 1, Math.floor(m.frac * u.bytes.length));
    if (m.kind === "truncate") return { out: u.bytes.subarray(0, at), cut: true };
    if (m.kind === "insert")
      return { out: Buffer.concat([u.bytes.subarray(0, at), Buffer.from([m.byte]), u.bytes.subarray(at)]) };
    const b = Buffer.from(u.bytes);
    b[at] ^= m.byte || 1;
    return { out: b };
  }) as ((u: Unit) => { out: Buffer; cut?: boolean }) & { done: number };
  f.done = 0;
  return f;
}

test("fast-check: a stream flipped, inserted into or cut anywhere is refused, the source guest runs on", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.record({
        target: fc.constantFrom(...TARGETS),
        frac: fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
        kind: fc.constantFrom("flip" as const, "insert" as const, "truncate" as const),
        byte: fc.integer({ min: 0, max: 255 }),
      }),
      async (m) => {
        let port!: (p: number) => void;
        const listening = new Promise<number>((r) => (port = r));
        const security = { tls: "none" } as const;
        const dp = migrateIncoming({
          port: 0,
          key: KEY,
          security,
          idleTimeoutMs: 1500,
          runAfterMs: 0,
          onListening: port,
        });
        const mut = mutator(m);
        const mitm = await startMitm(await listening, frameEditor(mut));
        try {
          const src = await migrateTo({
            host: "127.0.0.1",
            port: mitm.port,
            key: KEY,
            security,
            memoryBytes: 256 << 10,
            warmupMs: 10,
            downtimeLimitMs: 5000,
          });
          const dst = await dp;
          assert.equal(mut.done, 1, "the proxy mutated the stream");
          assert.equal(dst.status, "failed", JSON.stringify(m));
          assert.ok(REFUSALS.includes(dst.error!.code), `${dst.error!.code}: ${dst.error!.message}`);
          assert.notEqual(src.status, "completed");
          assert.equal(src.switchedOver, false);
          assert.equal(src.verify.guestInvariant, true, src.verify.problems.join("; "));
        } finally {
          mitm.close();
        }
      },
    ),
    { numRuns: 5, seed: 2112 },
  );
});

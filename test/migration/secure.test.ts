/**
 * The destination's defences after authentication: an idle source times out (and its socket is
 * closed though it keeps it open), a second source is told EBUSY, and a man in the middle that
 * changes a page is refused: in plaintext by the keyed end digest (it fixes the CRC and the
 * unkeyed SHA-256), under TLS by TLS itself. x509 credentials come from the openssl CLI.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { connectOutgoing, listenIncoming } from "../../src/migration/auth.js";
import { migrateIncoming, migrateTo } from "../../src/migration/migrate.js";
import { MigrationError, RAM_PAGE, Sec } from "../../src/migration/stream.js";
import type { MigrationSecurity } from "../../src/migration/tls.js";
import { frameEditor, rawEditor, startMitm, Unit } from "../helpers/mitm.js";
import { makeCerts } from "../helpers/certs.js";

const KEY = "secure-test-key";

function listening(): { onListening: (p: number) => void; port: Promise<number> } {
  let f!: (p: number) => void;
  const port = new Promise<number>((r) => (f = r));
  return { onListening: f, port };
}

test("destination: an authenticated source that sends nothing fails ETIMEDOUT, and its socket is closed", async () => {
  const l = listening();
  const dp = migrateIncoming({
    port: 0,
    key: KEY,
    idleTimeoutMs: 300,
    runAfterMs: 0,
    onListening: l.onListening,
  });
  const { sock } = await connectOutgoing({ host: "127.0.0.1", port: await l.port, key: KEY });
  // The peer never ends or closes its side: the destination must close it anyway.
  const closed = new Promise<void>((r) => sock.once("close", () => r()));
  sock.on("error", () => {});
  const rep = await dp;
  assert.equal(rep.status, "failed");
  assert.equal(rep.error?.code, "ETIMEDOUT");
  assert.match(
    rep.error.message,
    /no data from the peer in 300 ms \(phase setup, reading the stream header\)/,
  );
  await closed;
  assert.equal(sock.destroyed, true);
});

for (const security of [{ tls: "psk" }, { tls: "none" }] as MigrationSecurity[])
  test(`listenIncoming (${security.tls}): one source at a time, the others EBUSY (racing, and after)`, async () => {
    const inc = await listenIncoming({ port: 0, key: KEY, security });
    try {
      const c = { host: "127.0.0.1", port: inc.port, key: KEY, security };
      const both = await Promise.allSettled([connectOutgoing(c), connectOutgoing(c)]);
      const won = both.filter((x) => x.status === "fulfilled");
      const lost = both.filter((x) => x.status === "rejected");
      assert.equal(won.length, 1, "exactly one source is accepted");
      assert.equal(lost.length, 1);
      const e = lost[0].reason as MigrationError;
      assert.ok(e instanceof MigrationError);
      assert.equal(e.code, "EBUSY", e.message);
      const acc = await inc.accepted;
      // Later: refused before its handshake.
      await assert.rejects(
        connectOutgoing(c),
        (x: unknown) => x instanceof MigrationError && x.code === "EBUSY",
      );
      assert.equal(inc.refused.filter((r) => /EBUSY/.test(r)).length, 2, inc.refused.join("; "));
      // The winner's connection works.
      won[0].value.sock.write("ok");
      assert.equal((await acc.reader.read(2, "test")).toString(), "ok");
      acc.sock.destroy();
      won[0].value.sock.destroy();
    } finally {
      inc.close();
    }
  });

/** Source -> proxy -> destination, a 1 MiB guest; returns both reports. */
async function throughMitm(
  security: MigrationSecurity,
  editor: Parameters<typeof startMitm>[1],
  idleTimeoutMs = 5000,
) {
  const l = listening();
  const dp = migrateIncoming({
    port: 0,
    key: KEY,
    security,
    idleTimeoutMs,
    runAfterMs: 0,
    onListening: l.onListening,
  });
  const mitm = await startMitm(await l.port, editor);
  try {
    const src = await migrateTo({
      host: "127.0.0.1",
      port: mitm.port,
      key: KEY,
      security,
      memoryBytes: 1 << 20,
      warmupMs: 20,
      downtimeLimitMs: 5000,
    });
    return { src, dst: await dp };
  } finally {
    mitm.close();
  }
}

/**
 * The attack the unkeyed stream allowed: flip a byte of the first PAGE record, fix the CRC, and
 * replace the end digest with the SHA-256 of the bytes actually forwarded.
 */
function pageFlipper(): ((u: Unit) => { out: Buffer }) & { flipped: number; digestsFixed: number } {
  const sha = createHash("sha256");
  const f = ((u: Unit) => {
    const b = Buffer.from(u.bytes);
    if (u.kind === Sec.Ram && f.flipped === 0 && (b.readUInt32BE(9 + 4) & 0xfff) === RAM_PAGE) {
      b[9 + 8 + 100] ^= 0x80;
      b.writeUInt32BE(crc32(b.subarray(0, b.length - 4)), b.length - 4);
      f.flipped++;
    } else if (u.kind === Sec.Eof) {
      b.set(sha.copy().digest(), 9);
      b.writeUInt32BE(crc32(b.subarray(0, b.length - 4)), b.length - 4);
      f.digestsFixed++;
    }
    sha.update(b);
    return { out: b };
  }) as ((u: Unit) => { out: Buffer }) & { flipped: number; digestsFixed: number };
  f.flipped = 0;
  f.digestsFixed = 0;
  return f;
}

test("plaintext: a man in the middle that flips a page byte and fixes CRC and SHA-256 is refused (keyed digest)", async () => {
  const flip = pageFlipper();
  const { src, dst } = await throughMitm({ tls: "none" }, frameEditor(flip));
  assert.equal(flip.flipped, 1, "the proxy changed a page");
  assert.equal(flip.digestsFixed, 1, "the proxy recomputed the unkeyed digest");
  assert.equal(dst.status, "failed");
  assert.equal(dst.error?.code, "EBADMSG");
  assert.match(dst.error.message, /stream digest mismatch/);
  assert.equal(src.status, "failed");
  assert.equal(src.switchedOver, false);
  assert.equal(src.verify.guestInvariant, true, "the guest runs on at the source");
});

test("TLS-PSK: a man in the middle that flips one byte of the stream is refused by TLS", async () => {
  const flip = rawEditor(200_000);
  const { src, dst } = await throughMitm({ tls: "psk" }, flip);
  assert.equal(flip.flipped, 1);
  assert.equal(dst.status, "failed");
  assert.equal(dst.error?.code, "EBADMSG", dst.error?.message);
  assert.match(dst.error.message, /TLS/);
  assert.notEqual(src.status, "completed");
  assert.equal(src.switchedOver, false);
  assert.equal(src.verify.guestInvariant, true);
});

test("TLS x509 (mutual): a migration completes; a source whose certificate another CA signed is refused", async (t) => {
  const c = makeCerts();
  if (!c) {
    t.skip("openssl is not installed: no certificates to test with");
    return;
  }
  const l = listening();
  const server: MigrationSecurity = { tls: "x509", credsDir: c.server, verifyPeer: true };
  const dp = migrateIncoming({
    port: 0,
    key: KEY,
    security: server,
    runAfterMs: 0,
    onListening: l.onListening,
  });
  const port = await l.port;
  const o = { host: "127.0.0.1", port, key: KEY };
  await assert.rejects(
    connectOutgoing({ ...o, security: { tls: "x509", credsDir: c.stranger } }),
    (e: unknown) => e instanceof MigrationError && e.code === "EACCES",
  );
  await assert.rejects(
    connectOutgoing({ ...o, security: { tls: "psk" } }),
    (e: unknown) => e instanceof MigrationError && e.code === "EACCES",
  );
  const src = await migrateTo({
    ...o,
    security: { tls: "x509", credsDir: c.client },
    memoryBytes: 1 << 20,
    warmupMs: 20,
    downtimeLimitMs: 5000,
  });
  const dst = await dp;
  assert.equal(src.status, "completed", JSON.stringify(src.error));
  assert.equal(src.verify.mismatches, 0);
  assert.equal(dst.status, "completed");
  assert.ok(dst.refusedPeers.length >= 2, dst.refusedPeers.join("; "));
});

/**
 * multifd's error precedence (docs/migration.md, "Multifd", failures): each side reports its
 * first cause, never what that cause made fail later. The orders are forced, not left to the
 * scheduler: a test hook holds the cause's report until the consequence is in, and the
 * hand-written source below never closes anything the destination could blame instead.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { PassThrough } from "node:stream";
import { createGuestVm, layoutFor } from "../../src/migration/guest_vm.js";
import { MultifdRecv, parseAnnounce } from "../../src/migration/multifd.js";
import { connectChannel, ChannelAuth } from "../../src/migration/multifd_channel.js";
import { connectOutgoing } from "../../src/migration/auth.js";
import { migrateIncoming } from "../../src/migration/migrate.js";
import { migrateLocal } from "../../src/migration/local.js";
import { ReturnPath } from "../../src/migration/return_path.js";
import {
  ByteReader,
  encodeHeader,
  encodeSection,
  jsonPayload,
  MIG_VERSION,
  MigrationError,
  Sec,
  writeAll,
} from "../../src/migration/stream.js";

const HOST = "127.0.0.1";

/** Resolves once `ok()` holds (polled; the test's own timeout bounds a wait that never ends). */
async function until(ok: () => boolean): Promise<void> {
  while (!ok()) await new Promise((r) => setTimeout(r, 5));
}

function auth(
  id: number,
  sessionKey: Uint8Array,
  nonce: string,
  key = "multifd-test-key",
  security: ChannelAuth["security"] = { tls: "none" },
): ChannelAuth {
  return { id, key, security, sessionKey, nonce: Buffer.from(nonce, "hex") };
}

test("destination: the channel that failed first names the failure, though another's end reaches the main thread first", async () => {
  const g = createGuestVm(layoutFor(1 << 20, 1), { wp: "lockless", logged: false });
  const sessionKey = randomBytes(32);
  const hold = new SharedArrayBuffer(4);
  const mf = await MultifdRecv.listen({
    g,
    n: 2,
    host: HOST,
    creds: { key: "multifd-test-key", security: { tls: "none" } },
    sessionKey,
    idleMs: 30_000,
    holdError: hold,
  });
  try {
    const [c0, c1] = mf.announce.channels;
    const ch0 = await connectChannel(HOST, c0.port, auth(0, sessionKey, c0.nonce));
    ch0.sock.on("error", () => {});
    // Channel 1's proof is wrong: refused (the cause). Its report to the main thread is held.
    await assert.rejects(
      connectChannel(HOST, c1.port, auth(1, sessionKey, c1.nonce), true),
      (e: unknown) => e instanceof MigrationError && e.code === "EACCES",
    );
    // The source gives up and closes channel 0: its ENODATA reaches the main thread first.
    ch0.sock.destroy();
    await until(() => mf.channelErrors[0] !== null);
    assert.equal(mf.channelErrors[0]?.code, "ENODATA", mf.channelErrors[0]?.message);
    assert.equal(mf.channelErrors[1], null, "channel 1's report is still held");
    assert.equal(mf.failure, null, "a consequence does not pass for the failure");
    // The main stream ends too: the main thread's own error waits for the cause's report.
    const reported = mf.firstCause(new MigrationError("ENODATA", "truncated stream (the main one)"));
    Atomics.store(new Int32Array(hold), 0, 1);
    const e = await reported;
    assert.equal(e.code, "EACCES", e.message);
    assert.match(e.message, /^EACCES: channel 1: a peer failed the channel handshake \(bad HMAC\)/);
    assert.equal(mf.failure, e);
  } finally {
    mf.abort();
    await g.vm.stop();
  }
});

test("destination: a channel's failure ends the wait on a silent main stream at once (EACCES, sent back)", async () => {
  const key = "multifd-prompt-key";
  let listening!: (p: number) => void;
  const port = new Promise<number>((r) => (listening = r));
  // Long enough that only the channel's failure can end the main stream's wait in this test.
  const dp = migrateIncoming({
    port: 0,
    key,
    channels: 2,
    idleTimeoutMs: 600_000,
    runAfterMs: 0,
    onListening: (p) => listening(p),
  });
  const { sock, reader } = await connectOutgoing({ host: HOST, port: await port, key });
  sock.on("error", () => {});
  try {
    const config = jsonPayload({ version: MIG_VERSION, layout: layoutFor(1 << 20, 1), channels: 2 });
    await writeAll(sock, Buffer.concat([encodeHeader(), encodeSection(Sec.Config, 1, config)]));
    const ret = new ReturnPath(reader);
    const a = parseAnnounce((await ret.expect(Sec.MultifdChannels, 60_000)).payload, 2).channels;
    // A wrong proof on channel 1; channel 0 never connects, and the main stream stays open, silent.
    await assert.rejects(
      connectChannel(HOST, a[1].port, auth(1, reader.sessionKey!, a[1].nonce, key, { tls: "psk" }), true),
      (e: unknown) => e instanceof MigrationError && e.code === "EACCES",
    );
    const rep = await dp;
    assert.equal(rep.status, "failed");
    assert.equal(rep.error?.code, "EACCES", rep.error?.message);
    assert.match(rep.error.message, /channel 1: a peer failed the channel handshake \(bad HMAC\)/);
    assert.equal(rep.pagesApplied, 0);
    // The source was told, on the return path.
    const theirs = await ret.settle(600_000);
    assert.equal(theirs?.code, "EACCES", theirs?.message);
    assert.match(theirs.message, /^EACCES: destination: channel 1: /);
  } finally {
    sock.destroy();
  }
});

test("source: its own cause beats the destination's report; its consequence yields to the destination's cause", async () => {
  const answer = (code: string, message: string): ReturnPath => {
    const pipe = new PassThrough();
    const ret = new ReturnPath(new ByteReader(pipe));
    pipe.write(encodeSection(Sec.Error, 1, jsonPayload({ code, message })));
    return ret;
  };
  const refused = new MigrationError("EACCES", "channel 1: the destination refused its proof");
  const reset = new MigrationError("ECONNRESET", "channel 0: the peer went away");
  // Ours is a cause: kept, whatever the destination says (and without waiting for it).
  assert.equal(await answer("ENODATA", "channel 0: truncated stream").reported(refused, 600_000), refused);
  assert.equal(await new ReturnPath(new ByteReader(new PassThrough())).reported(refused, 600_000), refused);
  // Ours is a consequence (a channel cut under us): the destination's cause is reported.
  const e = await answer("EBADMSG", "channel 1: bad checksum in section 3").reported(reset, 600_000);
  assert.equal(e.code, "EBADMSG");
  assert.match(e.message, /^EBADMSG: destination: channel 1: bad checksum/);
  // Both consequences: the destination's (it names what ended, from its end).
  const t = await answer("ENODATA", "channel 0: truncated stream").reported(reset, 600_000);
  assert.equal(t.code, "ENODATA");
  assert.match(t.message, /^ENODATA: destination: channel 0: truncated stream/);
});

test("cancelled over channels: both sides report ECANCELED (the channels close only after the destination read the cancel)", async () => {
  const { source, destination } = await migrateLocal({
    memoryBytes: 4 << 20,
    vcpus: 1,
    warmupMs: 20,
    destination: "inline",
    channels: 2,
    // Never converges (too many rounds asked): the time limit cancels it.
    minRounds: 1_000_000,
    maxTimeMs: 5000,
  });
  assert.equal(source.status, "cancelled", JSON.stringify(source.error));
  assert.equal(source.error?.code, "ECANCELED");
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  assert.equal(destination?.status, "cancelled", JSON.stringify(destination?.error));
  assert.equal(destination?.error?.code, "ECANCELED");
  assert.match(destination.error.message, /the source cancelled the migration/);
});

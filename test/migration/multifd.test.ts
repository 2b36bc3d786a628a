/**
 * multifd (`channels`): pages over N authenticated channels, a worker each, synced per round.
 * Byte-exact migrations over 4 channels (library and CLI), a channel that fails its handshake
 * and one dropped mid-round (typed failures, the guest resumed on the source), the option's
 * bounds, and the destination's sync point: a round is not complete until every channel
 * delivered it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { migrateLocal } from "../../src/migration/local.js";
import { createGuestVm, layoutFor } from "../../src/migration/guest_vm.js";
import { MultifdRecv } from "../../src/migration/multifd.js";
import { connectChannel, listenChannel, ChannelAuth } from "../../src/migration/multifd_channel.js";
import {
  encodeHeader,
  encodeSection,
  RamBuilder,
  Sec,
  writeAll,
  MigrationError,
} from "../../src/migration/stream.js";
import { KvmError } from "../../src/errors.js";
import { runKvmmu } from "../helpers/cli.js";
import { makeCerts } from "../helpers/certs.js";
import { migrateIncoming, migrateTo } from "../../src/migration/migrate.js";

const SMALL = { memoryBytes: 4 << 20, vcpus: 1, warmupMs: 50, destination: "inline" } as const;

test("migrateLocal --channels 4: completed, every page equal, the pages went over the 4 channels", async () => {
  const { source, destination } = await migrateLocal({
    ...SMALL,
    channels: 4,
    minRounds: 2,
    downtimeLimitMs: 2000,
  });
  assert.equal(source.status, "completed", JSON.stringify(source.error));
  assert.deepEqual([source.verify.pagesCompared, source.verify.mismatches], [1024, 0]);
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  assert.equal(source.channels, 4);
  assert.equal(source.channelBytes?.length, 4);
  // 1024 pages dealt in runs of 256: every channel carried a run of the bulk round at least.
  for (const b of source.channelBytes) assert.ok(b > 256 * 4096, `channel bytes ${b}`);
  assert.equal(destination?.status, "completed", JSON.stringify(destination?.error));
  assert.equal(destination?.channels, 4);
  // Every page of every round came over a channel: the main stream carried none.
  assert.equal(destination?.channelPages, destination?.pagesApplied);
  assert.ok(destination.pagesApplied >= 2 * 1024, `pages applied ${destination?.pagesApplied}`);
  assert.ok(source.transferredBytes > source.channelBytes.reduce((a, b) => a + b, 0));
});

test("kvmmu migrate --local --channels 4 (plaintext, destination process): byte-exact, exit 0", async () => {
  const r = await runKvmmu([
    "migrate",
    "--local",
    "--channels",
    "4",
    "--insecure-plaintext",
    "-b",
    "4M",
    "--warmup",
    "50",
    "--downtime-limit",
    "2000",
    "--json",
  ]);
  assert.equal(r.code, 0, r.err);
  const doc = JSON.parse(r.out) as {
    options: { channels: number };
    results: {
      status: string;
      channels: number;
      verify: { pagesCompared: number; mismatches: number; guestInvariant: boolean };
    };
  };
  assert.equal(doc.options.channels, 4);
  assert.equal(doc.results.status, "completed");
  assert.equal(doc.results.channels, 4);
  assert.deepEqual(
    [doc.results.verify.pagesCompared, doc.results.verify.mismatches, doc.results.verify.guestInvariant],
    [1024, 0, true],
  );
});

test("TLS x509 (mutual) on every channel: migrateTo / migrateIncoming with 2 channels complete byte-exact", async (t) => {
  const c = makeCerts();
  if (!c) {
    t.skip("openssl is not installed: no certificates to test with");
    return;
  }
  const key = "multifd-x509-key";
  let listening!: (p: number) => void;
  const port = new Promise<number>((r) => (listening = r));
  const dp = migrateIncoming({
    port: 0,
    key,
    channels: 2,
    security: { tls: "x509", credsDir: c.server, verifyPeer: true },
    runAfterMs: 0,
    onListening: (p) => listening(p),
  });
  const src = await migrateTo({
    host: "127.0.0.1",
    port: await port,
    key,
    channels: 2,
    security: { tls: "x509", credsDir: c.client },
    memoryBytes: 1 << 20,
    warmupMs: 20,
    downtimeLimitMs: 5000,
  });
  const dst = await dp;
  assert.equal(src.status, "completed", JSON.stringify(src.error));
  assert.deepEqual([src.verify.pagesCompared, src.verify.mismatches], [256, 0]);
  assert.equal(src.channels, 2);
  assert.equal(dst.status, "completed", JSON.stringify(dst.error));
  assert.equal(dst.channelPages, dst.pagesApplied);
});

test("a destination started for 2 channels refuses a source with 4 (EPROTO naming both counts)", async () => {
  const key = "multifd-count-key";
  let listening!: (p: number) => void;
  const port = new Promise<number>((r) => (listening = r));
  const dp = migrateIncoming({ port: 0, key, channels: 2, runAfterMs: 0, onListening: (p) => listening(p) });
  const src = await migrateTo({
    host: "127.0.0.1",
    port: await port,
    key,
    channels: 4,
    memoryBytes: 1 << 20,
    warmupMs: 20,
  });
  const dst = await dp;
  assert.equal(src.status, "failed");
  assert.equal(src.verify.guestInvariant, true);
  assert.equal(dst.status, "failed");
  assert.equal(dst.error?.code, "EPROTO");
  assert.match(dst.error.message, /config\.channels: the source uses 4 channels, this destination expects 2/);
});

test("a channel that fails its handshake is refused: EACCES on both sides, nothing applied, the guest runs on", async () => {
  const { source, destination } = await migrateLocal({ ...SMALL, channels: 2, fault: "channel-auth" });
  assert.equal(source.status, "failed");
  assert.equal(source.error?.code, "EACCES");
  assert.match(source.error.message, /channel 1: the destination refused its proof/);
  assert.equal(source.switchedOver, false);
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  assert.equal(destination?.status, "failed");
  assert.equal(destination?.error?.code, "EACCES");
  assert.match(destination.error.message, /channel 1: a peer failed the channel handshake \(bad HMAC\)/);
  assert.equal(destination?.pagesApplied, 0);
});

test("a channel dropped mid-round fails the migration (ENODATA naming it); the source resumes its guest", async () => {
  const { source, destination } = await migrateLocal({ ...SMALL, channels: 4, fault: "drop-channel" });
  assert.equal(source.status, "failed");
  // The source's own error (its write on the cut channel) is a consequence: it reports the
  // destination's, which names the channel (docs/migration.md, which error is reported).
  assert.equal(source.error?.code, "ENODATA", source.error?.message);
  assert.match(source.error.message, /^ENODATA: destination: channel 3: truncated stream/);
  assert.equal(source.switchedOver, false);
  assert.equal(source.verify.guestInvariant, true, source.verify.problems.join("; "));
  assert.equal(destination?.status, "failed");
  assert.match(destination.error!.message, /channel 3: /);
});

test("channels out of 1..16, not an integer, or with post-copy: EINVAL naming the option, nothing built", async () => {
  for (const channels of [0, 17, 1.5, "x" as unknown as number])
    await assert.rejects(
      migrateLocal({ ...SMALL, channels }),
      (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && /^EINVAL: channels: /.test(e.message),
      String(channels),
    );
  await assert.rejects(
    migrateLocal({ ...SMALL, channels: 2, postcopy: true }),
    (e: unknown) =>
      e instanceof KvmError && e.code === "EINVAL" && /channels: not with postcopy/.test(e.message),
  );
  await assert.rejects(
    migrateLocal({ ...SMALL, fault: "drop-channel" }),
    (e: unknown) => e instanceof KvmError && /fault: drop-channel needs channels > 1/.test(e.message),
  );
});

test("kvmmu migrate --channels 0, 17, x, and with --postcopy: usage errors (exit 2) naming --channels", async () => {
  for (const [args, re] of [
    [["--channels", "0"], /--channels: 0 is out of range 1\.\.16/],
    [["--channels", "17"], /--channels: 17 is out of range 1\.\.16/],
    [["--channels", "x"], /--channels: "x" is not an integer/],
    [["--channels", "2", "--postcopy"], /--channels: not with --postcopy/],
  ] as const) {
    const r = await runKvmmu(["migrate", "--local", "-b", "1M", ...args]);
    assert.equal(r.code, 2, r.err);
    assert.match(r.err, re);
  }
});

function auth(id: number, sessionKey: Buffer, nonce: Buffer): ChannelAuth {
  return { id, key: "multifd-test-key", security: { tls: "none" }, sessionKey, nonce };
}

test("channel handshake: the session's proof is accepted, another session's refused (EACCES both sides)", async () => {
  const sk = randomBytes(32);
  const nonce = randomBytes(32);
  const good = await listenChannel("127.0.0.1", auth(0, sk, nonce));
  const c = await connectChannel("127.0.0.1", good.port, auth(0, sk, nonce));
  const a = await good.accepted;
  assert.ok(a.reader.sessionKey === null);
  c.sock.destroy();
  a.sock.destroy();

  const bad = await listenChannel("127.0.0.1", auth(1, sk, nonce));
  await assert.rejects(
    connectChannel("127.0.0.1", bad.port, auth(1, randomBytes(32), nonce)),
    (e: unknown) => e instanceof MigrationError && e.code === "EACCES",
  );
  await assert.rejects(
    bad.accepted,
    (e: unknown) =>
      e instanceof MigrationError && e.code === "EACCES" && /channel 1: .*bad HMAC/.test(e.message),
  );
  // The right proof for the wrong channel id is refused too.
  const other = await listenChannel("127.0.0.1", auth(2, sk, nonce));
  await assert.rejects(connectChannel("127.0.0.1", other.port, auth(3, sk, nonce)));
  await assert.rejects(other.accepted, /channel id 3/);
});

/** A RAM section of one page filled with `byte` at gpa, as a channel sends it. */
function ramFrame(id: number, gpa: number, byte: number): Buffer {
  const b = new RamBuilder(1);
  b.add(gpa, new Uint8Array(4096).fill(byte));
  return encodeSection(Sec.Ram, id, b.take());
}

function syncFrame(id: number, round: number, pages: number): Buffer {
  const p = Buffer.alloc(8);
  p.writeUInt32BE(round, 0);
  p.writeUInt32BE(pages, 4);
  return encodeSection(Sec.MultifdSync, id, p);
}

test("the destination's sync point: a round completes only once every channel has delivered it", async () => {
  const layout = layoutFor(1 << 20, 1);
  const g = createGuestVm(layout, { wp: "lockless", logged: false });
  const sessionKey = randomBytes(32);
  const creds = { key: "multifd-test-key", security: { tls: "none" } as const };
  const open = async (idleMs: number) => {
    const mf = await MultifdRecv.listen({ g, n: 2, host: "127.0.0.1", creds, sessionKey, idleMs });
    const socks = await Promise.all(
      mf.announce.channels.map((c, id) =>
        connectChannel("127.0.0.1", c.port, auth(id, sessionKey, Buffer.from(c.nonce, "hex"))),
      ),
    );
    return { mf, socks };
  };
  try {
    // Round 1: channel 0 delivers a page and syncs; channel 1 says nothing: the round never
    // completes, it fails naming channel 1 (its idle read or the sync wait, whichever ends first).
    const a = await open(300);
    try {
      await writeAll(
        a.socks[0].sock,
        Buffer.concat([encodeHeader(), ramFrame(1, 0x3000, 0x5a), syncFrame(2, 1, 1)]),
      );
      await assert.rejects(
        a.mf.flush(1),
        (e: unknown) => e instanceof MigrationError && e.code === "ETIMEDOUT" && /channel 1/.test(e.message),
      );
    } finally {
      a.mf.abort();
      for (const s of a.socks) s.sock.destroy();
    }
    // Both channels deliver: round 1 completes, both pages in guest memory.
    const b = await open(30_000);
    try {
      await writeAll(
        b.socks[0].sock,
        Buffer.concat([encodeHeader(), ramFrame(1, 0x3000, 0x5a), syncFrame(2, 1, 1)]),
      );
      await writeAll(
        b.socks[1].sock,
        Buffer.concat([encodeHeader(), ramFrame(1, 0x5000, 0xa5), syncFrame(2, 1, 1)]),
      );
      await b.mf.flush(1);
      assert.equal(g.vm.readGuest(0x3000, 1)[0], 0x5a);
      assert.equal(g.vm.readGuest(0x5000, 1)[0], 0xa5);
      assert.equal(b.mf.pages, 2);
    } finally {
      b.mf.abort();
      for (const s of b.socks) s.sock.destroy();
    }
  } finally {
    await g.vm.stop();
  }
});

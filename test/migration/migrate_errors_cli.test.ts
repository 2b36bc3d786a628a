/**
 * `kvmmu migrate` / `migrate-incoming` failures that are not the migration's: each a runtime
 * failure (exit 1) named by its errno on one line, no stack; a usage error stays exit 2.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import { runKvmmu, startIncoming } from "../helpers/cli.js";
import { connectOutgoing } from "../../src/migration/auth.js";

function oneLine(err: string, re: RegExp): void {
  const lines = err.trim().split("\n");
  assert.equal(lines.length, 1, err);
  assert.match(lines[0], re);
  assert.doesNotMatch(err, /\n\s+at /, "no stack trace");
}

test("kvmmu migrate --to a port nobody listens on: ECONNREFUSED, exit 1", async () => {
  const r = await runKvmmu([
    "migrate",
    "--to",
    "127.0.0.1:1",
    "--key",
    "abcdefghij",
    "-b",
    "1M",
    "--warmup",
    "0",
  ]);
  assert.equal(r.code, 1, r.err);
  oneLine(r.err, /^kvmmu: ECONNREFUSED: connect 127\.0\.0\.1:1: nothing is listening there$/);
});

test("kvmmu migrate-incoming: an address in use (EADDRINUSE) and one not on this machine (EADDRNOTAVAIL), exit 1", async () => {
  const busy = createServer();
  await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
  const port = (busy.address() as { port: number }).port;
  try {
    const r = await runKvmmu(["migrate-incoming", "--listen", `127.0.0.1:${port}`, "--key", "abcdefghij"]);
    assert.equal(r.code, 1, r.err);
    oneLine(r.err, /^kvmmu: EADDRINUSE: listen 127\.0\.0\.1:\d+: the address is already in use$/);
  } finally {
    busy.close();
  }
  const n = await runKvmmu(["migrate-incoming", "--listen", "8.8.8.8:4444", "--key", "abcdefghij"]);
  assert.equal(n.code, 1, n.err);
  oneLine(n.err, /^kvmmu: EADDRNOTAVAIL: listen 8\.8\.8\.8:4444: the address is not one of this machine's$/);
  const u = await runKvmmu(["migrate-incoming", "--tls-psk", "--insecure-plaintext", "--key", "abcdefghij"]);
  assert.equal(u.code, 2, u.err);
  oneLine(u.err, /^kvmmu: EINVAL: --tls-psk: give at most one of/);
});

test("kvmmu migrate with the wrong key: EACCES named, exit 1; the destination keeps waiting", async () => {
  const d = await startIncoming(["--key", "the-right-key", "--idle-timeout", "300"]);
  const r = await runKvmmu([
    "migrate",
    "--to",
    `127.0.0.1:${d.port}`,
    "--key",
    "a-wrong-key",
    "-b",
    "1M",
    "--warmup",
    "0",
  ]);
  assert.equal(r.code, 1, r.err);
  oneLine(r.err, /^kvmmu: EACCES: .*(wrong key|pre-shared key)/);
  // An authenticated source that then sends nothing and never closes: the destination gives up
  // (idle timeout), closes the connection and exits 1 on its own.
  const { sock } = await connectOutgoing({ host: "127.0.0.1", port: d.port, key: "the-right-key" });
  sock.on("error", () => {});
  assert.equal(await d.exit, 1, d.err());
  const rep = JSON.parse(d.out()) as { status: string; error: { code: string }; refusedPeers: string[] };
  assert.equal(rep.status, "failed");
  assert.equal(rep.error.code, "ETIMEDOUT");
  assert.equal(rep.refusedPeers.length, 1);
  sock.destroy();
});

test("kvmmu migrate while another source holds the destination: EBUSY named, exit 1, one line", async () => {
  const d = await startIncoming(["--key", "the-right-key", "--idle-timeout", "60000"]);
  const { sock } = await connectOutgoing({ host: "127.0.0.1", port: d.port, key: "the-right-key" });
  sock.on("error", () => {});
  try {
    const r = await runKvmmu([
      "migrate",
      "--to",
      `127.0.0.1:${d.port}`,
      "--key",
      "the-right-key",
      "-b",
      "1M",
      "--warmup",
      "0",
    ]);
    assert.equal(r.code, 1, r.err);
    oneLine(r.err, /^kvmmu: EBUSY: /);
  } finally {
    // The first source goes away mid-migration: the destination fails and exits 1 on its own.
    sock.destroy();
  }
  assert.equal(await d.exit, 1, d.err());
  const rep = JSON.parse(d.out()) as { status: string; refusedPeers: string[] };
  assert.equal(rep.status, "failed");
  assert.ok(
    rep.refusedPeers.some((p) => /EBUSY/.test(p)),
    rep.refusedPeers.join("; "),
  );
});

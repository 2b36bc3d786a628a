/** Authentication: a peer without the key is refused and the destination keeps waiting. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import {
  AUTH_TIMEOUT_MS,
  authenticateToPeer,
  connectOutgoing,
  listenIncoming,
} from "../../src/migration/auth.js";
import { MigrationError } from "../../src/migration/stream.js";
import { serverTls } from "../../src/migration/tls.js";

for (const tls of ["psk", "none"] as const)
  test(`auth (${tls}): wrong key refused, right key accepted afterwards, nothing else accepted`, async () => {
    const security = { tls };
    const inc = await listenIncoming({ port: 0, key: "the-right-key", security });
    try {
      await assert.rejects(
        connectOutgoing({ host: "127.0.0.1", port: inc.port, key: "a-wrong-key", security }),
        /EACCES/,
      );
      const ok = await connectOutgoing({ host: "127.0.0.1", port: inc.port, key: "the-right-key", security });
      const acc = await inc.accepted;
      assert.equal(inc.refused.length, 1, "the wrong peer was refused");
      assert.match(
        inc.refused[0],
        tls === "none"
          ? /EACCES: the peer does not hold the pre-shared key/
          : /EACCES: TLS-PSK handshake failed/,
      );
      ok.sock.write("hi");
      assert.equal((await acc.reader.read(2, "test")).toString(), "hi");
      ok.sock.destroy();
      acc.sock.destroy();
    } finally {
      inc.server.close();
    }
  });

test("auth: a short key is refused", async () => {
  await assert.rejects(listenIncoming({ port: 0, key: "short" }), /EINVAL: key/);
});

test("auth: a destination that never sends its challenge fails ETIMEDOUT naming authentication", async (t) => {
  // The test's own clock: the timeout fires when the test ticks it, not after 5 s.
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const silent = new PassThrough();
  const p = authenticateToPeer(silent, "the-right-key");
  t.mock.timers.tick(AUTH_TIMEOUT_MS);
  await assert.rejects(
    p,
    (e: unknown) =>
      e instanceof MigrationError &&
      e.code === "ETIMEDOUT" &&
      e.message === `ETIMEDOUT: authentication: no answer in ${AUTH_TIMEOUT_MS} ms`,
  );
  silent.destroy();
});

test("x509: a destination whose credentials lack server-key.pem is refused EINVAL naming it", () => {
  const dir = mkdtempSync(join(tmpdir(), "kvmmu-creds-"));
  try {
    for (const f of ["ca-cert.pem", "server-cert.pem"]) writeFileSync(join(dir, f), "unused\n");
    assert.throws(
      () => serverTls({ tls: "x509", credsDir: dir }, "the-right-key"),
      (e: unknown) =>
        e instanceof MigrationError && e.code === "EINVAL" && /server-key\.pem is missing/.test(e.message),
    );
  } finally {
    rmSync(dir, { recursive: true });
  }
});

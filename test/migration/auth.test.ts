/** Authentication: a peer without the key is refused and the destination keeps waiting. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connectOutgoing, listenIncoming } from "../../src/migration/auth.js";

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

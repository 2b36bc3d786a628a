/** Authentication: a peer without the key is refused and the destination keeps waiting. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connectOutgoing, listenIncoming } from "../../src/migration/auth.js";

test("auth: wrong key refused, right key accepted afterwards, nothing else accepted", async () => {
  const inc = await listenIncoming({ port: 0, key: "the-right-key" });
  try {
    await assert.rejects(
      connectOutgoing({ host: "127.0.0.1", port: inc.port, key: "a-wrong-key" }),
      /EACCES/,
    );
    const ok = await connectOutgoing({ host: "127.0.0.1", port: inc.port, key: "the-right-key" });
    const acc = await inc.accepted;
    assert.equal(inc.refused.length, 1, "the wrong peer was refused");
    assert.match(inc.refused[0], /EACCES: the peer does not hold the pre-shared key/);
    ok.sock.write("hi");
    assert.equal((await acc.reader.read(2, "test")).toString(), "hi");
    ok.sock.destroy();
    acc.sock.destroy();
  } finally {
    inc.server.close();
  }
  await assert.rejects(listenIncoming({ port: 0, key: "short" }), /EINVAL: key/);
});

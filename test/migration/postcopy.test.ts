/**
 * Post-copy between two VMs in this process over loopback TCP: the destination runs the guest
 * before its pages arrive, its vCPUs block on missing pages and ask for them; every page it ends
 * with equals the paused source's, and the guest's invariant holds afterwards. A peer that goes
 * away during post-copy makes both sides fail with a typed error, without hanging.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import type { Socket } from "node:net";
import { connectOutgoing, listenIncoming } from "../../src/migration/auth.js";
import { createGuestVm, layoutFor, runGuest } from "../../src/migration/guest_vm.js";
import { MigrationDestination } from "../../src/migration/destination.js";
import { MigrationSource } from "../../src/migration/precopy.js";
import { decodePageRequest, encodePageRequest } from "../../src/migration/postcopy.js";
import { Vm } from "../../src/vm.js";
import type { MmuModeName, WpName } from "../../src/vm.js";
import { KvmError } from "../../src/errors.js";
import type { MigrationReport } from "../../src/migration/report.js";
import { runKvmmu } from "../helpers/cli.js";
import { MigrationError } from "../../src/migration/stream.js";

const KEY = "test-postcopy-key";

async function migrate(
  wp: WpName,
  mode: MmuModeName,
  o: { postcopyAfter?: number; kill?: "source" | "destination" } = {},
) {
  const inc = await listenIncoming({ port: 0, key: KEY });
  // Whether each vCPU's worker thread was up when postcopy-run reached the destination.
  let startedBefore: boolean[] = [];
  const dest = new MigrationDestination({
    wp,
    mode,
    idleTimeoutMs: 20_000,
    onStateChange: (to) => {
      if (to === "postcopy-active") startedBefore = [0, 1].map((id) => (dest.guest?.vm.vcpuTid(id) ?? 0) > 0);
    },
  });
  let dsock: Socket | null = null;
  const dp = inc.accepted.then(({ sock, reader }) => {
    dsock = sock;
    return dest.receive(sock, reader);
  });
  const g = createGuestVm(layoutFor(16 << 20, 2), { wp, mode, logged: true });
  try {
    await runGuest(g);
    await new Promise((r) => setTimeout(r, 50));
    const { sock, reader } = await connectOutgoing({ host: "127.0.0.1", port: inc.port, key: KEY });
    const rep = await new MigrationSource(g, {
      postcopy: true,
      postcopyAfter: o.postcopyAfter ?? 1,
      // 64 MiB/s: the 16 MiB guest's background pages take ~250 ms, long enough to fault on.
      maxBandwidth: 64 << 20,
      onPostcopyRun: () => {
        // Once the destination has read postcopy-run (under TLS, bytes written just before a
        // destroy may never leave: wait until they arrived).
        if (o.kill === "source") {
          const t = setInterval(() => {
            if (dest.state.status === "postcopy-active") {
              clearInterval(t);
              sock.destroy();
            }
          }, 2);
        }
        // Once a destination vCPU has faulted on a missing page, the destination is in post-copy.
        if (o.kill === "destination") {
          const t = setInterval(() => {
            if ((dest.guest?.vm.userfaultPending().seq ?? 0) > 0) {
              clearInterval(t);
              dsock?.destroy();
            }
          }, 2);
        }
      },
    }).migrate(sock, reader);
    const drep = await dp;
    return { rep, drep, startedBefore };
  } finally {
    await g.vm.stop();
    if (dest.guest) await dest.guest.vm.stop();
  }
}

for (const wp of ["locked", "lockless"] as const)
  for (const mode of ["tdp", "shadow"] as const)
    test(`postcopy (${wp}, ${mode}): vCPUs block and ask, 0 mismatches, invariant holds`, async () => {
      const { rep, drep, startedBefore } = await migrate(wp, mode, { postcopyAfter: mode === "tdp" ? 1 : 2 });
      assert.equal(rep.status, "completed", JSON.stringify(rep.error));
      // The destination's workers were started (held) before the switch-over, not inside it.
      assert.deepEqual(startedBefore, [true, true]);
      assert.equal(rep.mode, "postcopy");
      // The rounds asked for, plus the final sync at switch-over.
      assert.equal(rep.rounds.length, (mode === "tdp" ? 1 : 2) + 1);
      assert.equal(rep.verify.pagesCompared, 4096);
      assert.equal(rep.verify.mismatches, 0);
      assert.equal(rep.verify.guestInvariant, true, rep.verify.problems.join("; "));
      const pc = rep.postcopy!;
      assert.ok(pc.discardedPages > 0, "pages were still owed at switch-over");
      assert.equal(pc.requestedPages + pc.backgroundPages, pc.discardedPages);
      assert.ok(pc["postcopy-requests"] > 0, "the destination asked for pages");
      assert.ok(pc.requestedPages > 0, "requested pages were sent");
      assert.ok(pc["postcopy-blocktime"] > 0, "the vCPUs were blocked");
      assert.equal(pc["postcopy-vcpu-blocktime"].length, 2);
      for (let i = 0; i < 2; i++) {
        assert.ok(pc["postcopy-vcpu-requests"][i] > 0, `vcpu ${i} waited on a page`);
        assert.ok(pc["postcopy-vcpu-blocktime-max"][i] <= pc["postcopy-vcpu-blocktime"][i]);
      }
      assert.ok(rep.downtimeMs > 0);
      assert.equal(drep.status, "completed");
      assert.equal(drep.postcopy!.pagesPlaced, pc.discardedPages);
      assert.equal(drep.postcopy!.requests, pc["postcopy-requests"]);
    });

for (const kill of ["source", "destination"] as const)
  test(`postcopy: the ${kill} goes away after postcopy-run: both sides fail, typed, no hang`, async () => {
    const { rep, drep } = await migrate("lockless", "tdp", { kill });
    assert.equal(rep.status, "failed");
    assert.ok(["ECONNRESET", "ENODATA"].includes(rep.error!.code), JSON.stringify(rep.error));
    assert.match(rep.error!.message, /guest is lost/);
    assert.equal(rep.guestLost, true);
    assert.equal(rep.switchedOver, true);
    assert.equal(drep.status, "failed");
    assert.ok(["ECONNRESET", "ENODATA"].includes(drep.error!.code), JSON.stringify(drep.error));
    assert.match(drep.error!.message, /post-copy failed with \d+ of 4096 pages still on the source/);
  });

test("userfault API: missing pages refused to host access, placed by userfaultCopy, bad input typed", () => {
  const vm = Vm.create({ memory: 1 << 20, wp: "lockless" });
  const hva = vm.mmap(256 << 10, { thp: false });
  vm.setUserMemoryRegion({ slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 256 << 10, userspaceAddr: hva });
  assert.throws(
    () => vm.userfaultDiscard(new Uint32Array(2)),
    (e: KvmError) => e.code === "EINVAL",
  );
  vm.userfaultRegister(0);
  assert.throws(
    () => vm.userfaultRegister(0),
    (e: KvmError) => e.code === "EEXIST",
  );
  vm.writeGuest(5 * 4096, new Uint8Array([7]));
  const bm = new Uint32Array(2);
  bm[0] = (1 << 5) | (1 << 6);
  assert.equal(vm.userfaultDiscard(bm), 2);
  assert.ok(vm.userfaultMissing(5 * 4096) && !vm.userfaultMissing(4 * 4096));
  assert.throws(
    () => vm.readGuest(5 * 4096, 1),
    (e: KvmError) => e.code === "EFAULT" && /missing/.test(e.message),
  );
  assert.throws(
    () => vm.writeGuest(6 * 4096 + 8, new Uint8Array(1)),
    (e: KvmError) => e.code === "EFAULT",
  );
  assert.throws(
    () => vm.readGuestPage(6 * 4096),
    (e: KvmError) => e.code === "EFAULT",
  );
  assert.throws(
    () => vm.userfaultCopy(5 * 4096 + 1, null),
    (e: KvmError) => e.code === "EINVAL",
  );
  assert.throws(
    () => vm.userfaultCopy(5 * 4096, new Uint8Array(10)),
    (e: KvmError) => e.code === "EINVAL",
  );
  const page = new Uint8Array(4096).fill(3);
  assert.equal(vm.userfaultCopy(5 * 4096, page), true);
  assert.equal(vm.userfaultCopy(5 * 4096, page), false, "not missing any more: EEXIST");
  assert.deepEqual([...vm.readGuest(5 * 4096, 2)], [3, 3]);
  assert.equal(vm.userfaultStats().missing, 1);
  assert.equal(vm.userfaultCopy(6 * 4096, null), true);
  assert.equal(vm.userfaultStats().missing, 0);
  assert.deepEqual([...vm.readGuest(6 * 4096, 1)], [0]);
});

test("page requests: round trip, and damaged ones refused by name", () => {
  assert.deepEqual(decodePageRequest(encodePageRequest([0, 4096, 8 << 20]), 3, 16 << 20), [0, 4096, 8 << 20]);
  assert.throws(
    () => decodePageRequest(encodePageRequest([16 << 20]), 3, 16 << 20),
    (e: MigrationError) => e.code === "EFAULT" && /section 3 \(page-request\)/.test(e.message),
  );
  assert.throws(
    () => decodePageRequest(encodePageRequest([100]), 3, 16 << 20),
    (e: MigrationError) => e.code === "EPROTO",
  );
  assert.throws(
    () => decodePageRequest(Buffer.alloc(5), 3, 16 << 20),
    (e: MigrationError) => e.code === "EBADMSG",
  );
});

test("kvmmu migrate --local --postcopy --json: completed, verified, blocktime and requests reported", async () => {
  const r = await runKvmmu([
    "migrate",
    "--local",
    "--postcopy",
    "--json",
    "-b",
    "16M",
    "-v",
    "2",
    "--max-bandwidth",
    "64m",
    "--mode",
    "shadow",
  ]);
  assert.equal(r.code, 0, r.err + r.out);
  const o = (JSON.parse(r.out) as { results: MigrationReport }).results;
  assert.equal(o.status, "completed");
  assert.equal(o.mode, "postcopy");
  assert.equal(o.rounds.length, 2);
  assert.deepEqual([o.verify.pagesCompared, o.verify.mismatches, o.verify.guestInvariant], [4096, 0, true]);
  assert.ok(o.postcopy!["postcopy-requests"] > 0 && o.postcopy!["postcopy-blocktime"] > 0);
  assert.equal(o.postcopy!["postcopy-vcpu-blocktime"].length, 2);
  assert.ok(o.downtimeMs > 0 && o.totalTimeMs > o.downtimeMs);
});

test("kvmmu migrate --local --postcopy --fault kill-destination: failed, typed, guest lost, exit 1", async () => {
  const r = await runKvmmu([
    "migrate",
    "--local",
    "--postcopy",
    "--json",
    "-b",
    "16M",
    "--max-bandwidth",
    "32m",
    "--fault",
    "kill-destination",
  ]);
  assert.equal(r.code, 1, r.err);
  const o = (JSON.parse(r.out) as { results: MigrationReport }).results;
  assert.equal(o.status, "failed");
  assert.equal(o.mode, "postcopy");
  assert.equal(o.error?.code, "ECONNRESET", o.error?.message);
  assert.match(o.error?.message ?? "", /guest is lost/);
  assert.equal(o.guestLost, true);
  assert.equal(o.switchedOver, true);
  assert.equal(o.verify.guestInvariant, null, "the lost guest is not run again on the source");
});

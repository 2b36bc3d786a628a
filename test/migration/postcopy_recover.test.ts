/**
 * Post-copy recovery (QEMU's postcopy-paused, migrate-recover / migrate -r): the link is cut
 * mid-post-copy by a test-controlled fault (the source's drop-link: half of the 8th RAM frame
 * after postcopy-run, or after resume, then the socket destroyed), once or twice. Both sides
 * pause, the destination keeps its VM with pages still missing, the source reconnects
 * (authenticated, under TLS as the first time), the destination says which pages it holds, and
 * post-copy goes on: every page equals the paused source's, the invariant holds.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connectOutgoing, listenIncoming } from "../../src/migration/auth.js";
import { createGuestVm, layoutFor, runGuest } from "../../src/migration/guest_vm.js";
import { MigrationDestination } from "../../src/migration/destination.js";
import { MigrationSource, SourceOptions } from "../../src/migration/precopy.js";
import { migrateLocal } from "../../src/migration/local.js";
import { decodeRecvBitmap, Reconnection, recoverWithin } from "../../src/migration/recover.js";
import { MigrationError } from "../../src/migration/stream.js";
import type { MigrationStatus } from "../../src/migration/state.js";
import type { MigrationSecurity } from "../../src/migration/tls.js";
import type { DesignName } from "../../src/mmu/design.js";
import type { MmuModeName } from "../../src/vm.js";
import { KvmError } from "../../src/errors.js";
import { runKvmmu, startIncoming } from "../helpers/cli.js";
import type { MigrationReport } from "../../src/migration/report.js";

const KEY = "test-recover-key";
const PAGES = (8 << 20) / 4096;

interface Run {
  drops: number;
  /** Which sides may recover (default both). */
  source?: boolean;
  destination?: boolean;
  resumeTimeoutMs?: number;
  security?: MigrationSecurity;
}

/** One post-copy migration of an 8 MiB, 2-vCPU guest with the link cut `drops` times. */
async function migrate(wp: DesignName, mode: MmuModeName, o: Run) {
  const security = o.security;
  const inc = await listenIncoming({ port: 0, key: KEY, security, keepOpen: true });
  const timeout = o.resumeTimeoutMs ?? 20_000;
  const dest = new MigrationDestination({
    wp,
    mode,
    idleTimeoutMs: 20_000,
    postcopyRecover:
      o.destination === false
        ? undefined
        : () => inc.next(timeout).then(({ sock, reader }) => ({ stream: sock, reader })),
  });
  const dp = inc.accepted.then(({ sock, reader }) => dest.receive(sock, reader));
  const g = createGuestVm(layoutFor(8 << 20, 2), { wp, mode, logged: true });
  const states: MigrationStatus[] = [];
  /** At each source pause: the destination still has its VM, with pages missing. */
  const atPause: { vm: boolean; missing: number }[] = [];
  try {
    await runGuest(g);
    await new Promise((r) => setTimeout(r, 50));
    const target = { host: "127.0.0.1", port: inc.port, key: KEY, security };
    const { sock, reader } = await connectOutgoing(target);
    const opts: SourceOptions = {
      postcopy: true,
      // 32 MiB/s: the 8 MiB guest's background pages take ~250 ms, long enough to fault on.
      maxBandwidth: 32 << 20,
      fault: o.drops > 0 ? "drop-link" : undefined,
      faultRepeat: Math.max(1, o.drops),
      onStateChange: (to) => {
        states.push(to);
        if (to === "postcopy-paused")
          atPause.push({ vm: dest.guest !== null, missing: dest.guest?.vm.userfaultStats().missing ?? 0 });
      },
      postcopyRecover:
        o.source === false
          ? undefined
          : async () => {
              // As migrateTo does: retry while the destination has not noticed the drop yet.
              const end = Date.now() + timeout;
              for (;;) {
                try {
                  const c = await connectOutgoing(target);
                  return { stream: c.sock, reader: c.reader };
                } catch (e) {
                  if (Date.now() > end || !(e instanceof MigrationError)) throw e;
                  await new Promise((r) => setTimeout(r, 50));
                }
              }
            },
    };
    const rep = await new MigrationSource(g, opts).migrate(sock, reader);
    const drep = await dp;
    return { rep, drep, states, destStates: dest.state.history, atPause };
  } finally {
    inc.close();
    await g.vm.stop();
    if (dest.guest) await dest.guest.vm.stop();
  }
}

function assertRecovered(r: Awaited<ReturnType<typeof migrate>>, drops: number): void {
  const { rep, drep } = r;
  assert.equal(rep.status, "completed", JSON.stringify(rep.error));
  assert.equal(drep.status, "completed", JSON.stringify(drep.error));
  assert.deepEqual([rep.verify.pagesCompared, rep.verify.mismatches], [PAGES, 0]);
  assert.equal(rep.verify.guestInvariant, true, rep.verify.problems.join("; "));
  assert.equal(drep.guestInvariant, true, drep.problems.join("; "));
  const pc = rep.postcopy!;
  assert.equal(pc.recoveries, drops);
  assert.equal(drep.postcopy!.recoveries, drops);
  // Every owed page arrived exactly once; pages lost with a link were sent again.
  assert.equal(pc.requestedPages + pc.backgroundPages, pc.discardedPages + pc.resentPages);
  assert.equal(drep.postcopy!.pagesPlaced, pc.discardedPages);
  // Both sides paused and recovered once per drop, in QEMU's states.
  const cycle = ["postcopy-paused", "postcopy-recover", "postcopy-active"];
  for (const h of [r.states, r.destStates]) {
    assert.equal(h.filter((s) => s === "postcopy-paused").length, drops, h.join(","));
    const i = h.indexOf("postcopy-paused");
    assert.deepEqual(h.slice(i, i + 3), cycle, h.join(","));
    assert.equal(h[h.length - 1], "completed");
  }
  // The destination kept its VM through each pause, its guest's memory split with the source.
  assert.equal(r.atPause.length, drops);
  for (const p of r.atPause) assert.ok(p.vm && p.missing > 0, JSON.stringify(r.atPause));
}

const DESIGNS: [DesignName, MmuModeName][] = [
  ["locked", "tdp"],
  ["locked", "shadow"],
  ["lockless", "tdp"],
  ["lockless", "shadow"],
  ["tdp-mmu", "tdp"],
];

for (const [wp, mode] of DESIGNS)
  test(`postcopy recovery (${wp}, ${mode}): the link drops once, both pause, resume, 0 mismatches`, async () => {
    assertRecovered(await migrate(wp, mode, { drops: 1 }), 1);
  });

for (const [wp, mode] of DESIGNS.slice(0, 4))
  test(`postcopy recovery (${wp}, ${mode}): the link drops twice, resumed twice, 0 mismatches`, async () => {
    assertRecovered(await migrate(wp, mode, { drops: 2 }), 2);
  });

test("postcopy recovery in insecure-plaintext mode: the new connection is authenticated the same way", async () => {
  assertRecovered(await migrate("lockless", "tdp", { drops: 1, security: { tls: "none" } }), 1);
});

test("postcopy recovery: a destination that does not recover fails; the source gives up, typed, guest lost", async () => {
  const { rep, drep } = await migrate("lockless", "tdp", {
    drops: 1,
    destination: false,
    resumeTimeoutMs: 1500,
  });
  assert.equal(drep.status, "failed");
  assert.match(drep.error!.message, /post-copy failed with \d+ of \d+ pages still on the source/);
  assert.equal(rep.status, "failed");
  assert.equal(rep.guestLost, true);
  assert.ok(["ECONNREFUSED", "ECONNRESET", "EBUSY"].includes(rep.error!.code), JSON.stringify(rep.error));
});

test("postcopy recovery: no source comes back: the destination gives up after its timeout, ETIMEDOUT", async () => {
  const { rep, drep, destStates } = await migrate("lockless", "tdp", {
    drops: 1,
    source: false,
    resumeTimeoutMs: 500,
  });
  assert.equal(rep.status, "failed");
  assert.equal(rep.guestLost, true);
  assert.equal(drep.status, "failed");
  assert.equal(drep.error!.code, "ETIMEDOUT", JSON.stringify(drep.error));
  assert.match(drep.error!.message, /no source came back to resume in 500 ms/);
  assert.match(drep.error!.message, /guest is lost/);
  assert.deepEqual(destStates.slice(-2), ["postcopy-paused", "failed"]);
});

test("postcopy recovery: migrateLocal (destination process) with resume completes across a dropped link", async () => {
  const { source, destination } = await migrateLocal({
    wp: "lockless",
    memoryBytes: 8 << 20,
    postcopy: true,
    resume: true,
    fault: "drop-link",
    maxBandwidth: 32 << 20,
    warmupMs: 50,
  });
  assert.equal(source.status, "completed", JSON.stringify(source.error));
  assert.deepEqual([source.verify.mismatches, source.verify.guestInvariant], [0, true]);
  assert.equal(source.postcopy!.recoveries, 1);
  assert.equal(destination?.postcopy?.recoveries, 1);
});

test("postcopy recovery: bad options are EINVAL naming the option, before any VM is built", async () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ postcopy: true, resume: true, resumeTimeoutMs: 0 }, /resumeTimeoutMs/],
    [{ fault: "drop-link" }, /drop-link needs postcopy/],
    [{ postcopy: true, faultRepeat: 0, fault: "drop-link" }, /faultRepeat/],
  ];
  for (const [o, re] of bad)
    await assert.rejects(
      migrateLocal({ destination: "inline", memoryBytes: 1 << 20, ...o }),
      (e: KvmError | MigrationError) => e.code === "EINVAL" && re.test(e.message),
      JSON.stringify(o),
    );
  assert.throws(
    () => decodeRecvBitmap(Buffer.alloc(7), 1, 64),
    (e: MigrationError) => e.code === "EPROTO" && /recv-bitmap/.test(e.message),
  );
});

test("kvmmu migrate --local --postcopy --resume --fault drop-link --fault-repeat 2 --json: completed, recovered twice", async () => {
  const r = await runKvmmu([
    "migrate",
    "--local",
    "--postcopy",
    "--resume",
    "--fault",
    "drop-link",
    "--fault-repeat",
    "2",
    "--json",
    "-b",
    "8M",
    "--max-bandwidth",
    "32m",
  ]);
  assert.equal(r.code, 0, r.err + r.out);
  const o = (JSON.parse(r.out) as { results: MigrationReport }).results;
  assert.equal(o.status, "completed");
  assert.deepEqual([o.verify.mismatches, o.verify.guestInvariant], [0, true]);
  assert.equal(o.postcopy!.recoveries, 2);
});

test("kvmmu migrate-incoming --resume and kvmmu migrate --to --resume: the link drops, both resume, exit 0", async () => {
  const d = await startIncoming(["--key", KEY, "--resume", "--run-after", "0"]);
  const r = await runKvmmu([
    "migrate",
    ...["--to", `127.0.0.1:${d.port}`, "--key", KEY, "--postcopy", "--resume", "--fault", "drop-link"],
    ...["--json", "-b", "8M", "--max-bandwidth", "32m", "--warmup", "50"],
  ]);
  assert.equal(r.code, 0, r.err + r.out);
  const o = (JSON.parse(r.out) as { results: MigrationReport }).results;
  assert.deepEqual([o.status, o.verify.mismatches, o.verify.guestInvariant], ["completed", 0, true]);
  assert.equal(o.postcopy!.recoveries, 1);
  assert.equal(await d.exit, 0, d.err());
  const rep = JSON.parse(d.out()) as {
    status: string;
    guestInvariant: boolean;
    postcopy: { recoveries: number };
  };
  assert.deepEqual([rep.status, rep.guestInvariant, rep.postcopy.recoveries], ["completed", true, 1]);
});

test("kvmmu migrate --resume without --postcopy: usage error, exit 2", async () => {
  const r = await runKvmmu(["migrate", "--local", "--resume", "-b", "1M"]);
  assert.equal(r.code, 2, r.err + r.out);
  assert.match(r.err, /--resume/);
});

test("postcopy recovery: one deadline per pause, however many peers fail the handshake (a clock the test moves)", async () => {
  let now = 5000;
  const waits: number[] = [];
  // Each peer arrives 300 ms into its wait and then fails the handshake (the caller asks again).
  const recover = recoverWithin(
    1000,
    (left) => {
      waits.push(left);
      now += 300;
      return Promise.resolve({} as Reconnection);
    },
    () => now,
  );
  const pausedAt = now;
  const attempts = async (): Promise<MigrationError> => {
    for (;;)
      try {
        await recover(pausedAt);
      } catch (e) {
        return e as MigrationError;
      }
  };
  const e = await attempts();
  assert.deepEqual(waits, [1000, 700, 400, 100], "each wait gets what is left of the one deadline");
  assert.ok(e instanceof MigrationError && e.code === "ETIMEDOUT");
  assert.match(e.message, /no source came back to resume in 1000 ms/);
  // A wait that runs out is reported against the whole timeout, not what was left of it.
  const late = recoverWithin(
    1000,
    () => Promise.reject(new MigrationError("ETIMEDOUT", "no source came back to resume in 400 ms")),
    () => 600,
  );
  await assert.rejects(late(0), /resume in 1000 ms/);
  // A new pause has a deadline of its own.
  now = 9000;
  waits.length = 0;
  await recover(9000);
  assert.deepEqual(waits, [1000]);
});

/**
 * Auto-converge and cancel, on a link too slow for the guest: a 256 KiB guest rewrites all its
 * pages every round, and at 512 KiB/s a round takes ~0.5 s while 300 ms of it carry only 150 KiB,
 * so without throttling no round can ever fit the downtime limit. Auto-converge must throttle
 * (20%, +10% a step, at most 99%), the guest's increment rate must drop, and the migration must
 * complete; without it, the migration must be cancelled at its time limit with the source guest
 * running on, invariant intact, and the destination giving up cleanly.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connectOutgoing, listenIncoming } from "../../src/migration/auth.js";
import {
  createGuestVm,
  guestCounts,
  layoutFor,
  runAndCheck,
  runGuest,
} from "../../src/migration/guest_vm.js";
import { MIG_CTL } from "../../src/migration/guest.js";
import { MigrationDestination } from "../../src/migration/destination.js";
import { MigrationSource, SourceOptions } from "../../src/migration/precopy.js";

const KEY = "test-converge-key";
const SLOW = { maxBandwidth: 512 << 10, downtimeLimitMs: 300 };

async function slowMigration(opts: SourceOptions) {
  const inc = await listenIncoming({ port: 0, key: KEY });
  const dest = new MigrationDestination({ wp: "lockless" });
  const dp = inc.accepted.then(({ sock, reader }) => dest.receive(sock, reader));
  const g = createGuestVm(layoutFor(256 << 10, 1), { wp: "lockless", logged: true });
  // Per round: the guest's increments per second since the previous round.
  const rates: { throttle: number; rate: number }[] = [];
  let last = { t: 0, c: 0 };
  try {
    await runGuest(g);
    await new Promise((r) => setTimeout(r, 100));
    last = { t: performance.now(), c: guestCounts(g)[0] };
    const { sock, reader } = await connectOutgoing({ host: "127.0.0.1", port: inc.port, key: KEY });
    const src = new MigrationSource(g, {
      ...SLOW,
      ...opts,
      onRound: (r) => {
        const now = { t: performance.now(), c: guestCounts(g)[0] };
        rates.push({
          throttle: r["cpu-throttle-percentage"],
          rate: ((now.c - last.c) * 1000) / (now.t - last.t),
        });
        last = now;
      },
    });
    const rep = await src.migrate(sock, reader);
    const drep = await dp;
    const destGuestLeft = dest.guest !== null;
    const throttleAfter = Atomics.load(g.ctl, MIG_CTL.throttle);
    let after = null;
    let countsAtEnd: number[] = [];
    if (rep.status !== "completed") {
      countsAtEnd = guestCounts(g);
      after = await runAndCheck(g);
    }
    return { rep, drep, rates, after, countsAtEnd, destGuestLeft, throttleAfter };
  } finally {
    await g.vm.stop();
    if (dest.guest) await dest.guest.vm.stop();
  }
}

test("without auto-converge: cancelled at the time limit, the source runs on with nothing lost", async () => {
  const { rep, drep, after, countsAtEnd, destGuestLeft } = await slowMigration({ maxTimeMs: 4000 });
  // Cancelled by the time limit (ECANCELED), not by anything else; the test's timeout bounds a hang.
  assert.equal(rep.status, "cancelled", JSON.stringify(rep.error));
  assert.equal(rep.error?.code, "ECANCELED");
  // Every round had the whole guest dirty: it could not have converged.
  assert.ok(rep.rounds.length >= 3, `rounds ${rep.rounds.length}`);
  for (const r of rep.rounds) assert.ok(r["expected-downtime"] > SLOW.downtimeLimitMs, JSON.stringify(r));
  assert.equal(rep.downtimeMs, 0);
  // The destination gave up cleanly: it saw the cancel, said so, and threw its VM away.
  assert.equal(drep.status, "cancelled");
  assert.equal(drep.error?.code, "ECANCELED");
  assert.equal(destGuestLeft, false);
  // The source guest kept running: every page advanced since, and the invariant holds.
  assert.ok(after!.ok, after!.problems.join("; "));
  assert.ok(after!.after[0] >= countsAtEnd[0] + 63, `counts ${countsAtEnd[0]} -> ${after!.after[0]}`);
});

test("auto-converge: throttle 20%, +10% a step, at most 99%; the guest slows; the migration completes", async () => {
  const { rep, drep, rates } = await slowMigration({ autoConverge: true, maxTimeMs: 60_000 });
  assert.equal(rep.status, "completed", JSON.stringify(rep.error));
  assert.equal(rep.verify.mismatches, 0);
  assert.equal(rep.verify.guestInvariant, true, rep.verify.problems.join("; "));
  assert.equal(drep.status, "completed");
  // The throttle's steps, as QEMU's defaults: 0, 20, 30, ... 90, 99, never down, never above 99.
  const steps = rep.rounds.map((r) => r["cpu-throttle-percentage"]);
  const distinct = steps.filter((p, i) => i === 0 || p !== steps[i - 1]);
  assert.equal(distinct[0], 0);
  assert.equal(distinct[1], 20, `throttle steps ${distinct.join(",")}`);
  for (let i = 2; i < distinct.length; i++)
    assert.equal(distinct[i], Math.min(99, distinct[i - 1] + 10), `throttle steps ${distinct.join(",")}`);
  assert.ok(Math.max(...steps) <= 99);
  // It converged only once throttled hard: a round whose 0.5 s fell in one of the guest's sleeps.
  assert.ok(rep.throttlePercentage >= 90, `throttle at switch-over ${rep.throttlePercentage}`);
  // The guest ran measurably slower while throttled (99% leaves it 1% of its time).
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const free = rates.filter((r) => r.throttle === 0).map((r) => r.rate);
  const hard = rates.filter((r) => r.throttle >= 90).map((r) => r.rate);
  assert.ok(free.length > 0 && hard.length > 0, JSON.stringify(rates));
  assert.ok(
    median(hard) < median(free) / 3,
    `increments/s unthrottled ${median(free).toFixed(0)}, throttled >= 90% ${median(hard).toFixed(0)}`,
  );
});

/**
 * Auto-converge and cancel, on a link too slow for the guest: a 256 KiB guest rewrites all its
 * pages every round, and at 512 KiB/s a round takes ~0.5 s while 300 ms of it carry only 150 KiB,
 * so without throttling no round can ever fit the downtime limit. Auto-converge must throttle
 * (20%, +10% a step, at most 99%), the guest must spend its time halted once throttled hard,
 * and the migration must complete; without it, the migration must be cancelled at its time limit with the source guest
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
import { vmKvm } from "../../src/vm/internal.js";
import { OUTSIDE_GUEST_MODE, VCPU } from "../../src/kvm_host.js";
import { once } from "node:events";
import { Worker } from "node:worker_threads";
import { HARD_PCT, SAMPLER, SamplerData } from "../workers/vcpu_sampler.js";

const KEY = "test-converge-key";
const SLOW = { maxBandwidth: 512 << 10, downtimeLimitMs: 300 };

async function slowMigration(opts: SourceOptions) {
  const inc = await listenIncoming({ port: 0, key: KEY });
  const dest = new MigrationDestination({ wp: "lockless" });
  const dp = inc.accepted.then(({ sock, reader }) => dest.receive(sock, reader));
  const g = createGuestVm(layoutFor(256 << 10, 1), { wp: "lockless", logged: true });
  // Samples of the vCPU while the migration is active: the throttle it was under, and whether it
  // was halted (outside guest mode: the throttled guest sleeps in HLT). A count of states, not a
  // rate: the share of samples that find the guest halted does not depend on the machine's speed.
  // A worker takes them: this thread runs the migration stream, and under load its timers fired
  // too seldom to sample the short unthrottled phase.
  const counts = new Int32Array(new SharedArrayBuffer(SAMPLER.WORDS * 4));
  const sampler = new Worker(new URL("../workers/vcpu_sampler.js", import.meta.url), {
    workerData: {
      ctl: counts.buffer,
      guestCtl: g.ctl.buffer as SharedArrayBuffer,
      throttleIndex: MIG_CTL.throttle,
      vcpu: vmKvm(g.vm).vcpu.buffer as SharedArrayBuffer,
      modeIndex: VCPU.mode(0),
      outsideMode: OUTSIDE_GUEST_MODE,
      everyMs: 2,
    } satisfies SamplerData,
  });
  const exited = once(sampler, "exit");
  const stopSampler = async (): Promise<void> => {
    Atomics.store(counts, SAMPLER.STOP, 1);
    Atomics.notify(counts, SAMPLER.STOP);
    await exited;
  };
  try {
    await runGuest(g);
    const { sock, reader } = await connectOutgoing({ host: "127.0.0.1", port: inc.port, key: KEY });
    const src = new MigrationSource(g, {
      ...SLOW,
      ...opts,
      onStateChange: (to) => Atomics.store(counts, SAMPLER.ACTIVE, to === "active" ? 1 : 0),
    });
    const rep = await src.migrate(sock, reader);
    await stopSampler();
    const samples = {
      free: counts[SAMPLER.FREE],
      freeHalted: counts[SAMPLER.FREE_HALTED],
      hard: counts[SAMPLER.HARD],
      hardHalted: counts[SAMPLER.HARD_HALTED],
    };
    const drep = await dp;
    const destGuestLeft = dest.guest !== null;
    const throttleAfter = Atomics.load(g.ctl, MIG_CTL.throttle);
    let after = null;
    let countsAtEnd: number[] = [];
    if (rep.status !== "completed") {
      countsAtEnd = guestCounts(g);
      after = await runAndCheck(g);
    }
    return { rep, drep, samples, after, countsAtEnd, destGuestLeft, throttleAfter };
  } finally {
    await stopSampler();
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

test("auto-converge: throttle 20%, +10% a step, at most 99%; the guest halts; the migration completes", async () => {
  const { rep, drep, samples } = await slowMigration({ autoConverge: true, maxTimeMs: 60_000 });
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
  // It converged only once throttled (no round fits unthrottled: the first test). How hard the
  // throttle had to get depends on how fast this machine runs the guest, so no level is asserted.
  assert.ok(rep.throttlePercentage >= 20, `throttle at switch-over ${rep.throttlePercentage}`);
  // The guest obeyed the throttle: unthrottled it hardly ever halts; at p >= 50% it runs 10 ms
  // slices and sleeps p / (100 - p) times as long, so it is halted in about p% of the samples.
  const { free, freeHalted, hard, hardHalted } = samples;
  const what = `halted in ${((100 * freeHalted) / free).toFixed(0)}% of ${free} unthrottled samples, ${((100 * hardHalted) / hard).toFixed(0)}% of ${hard} at >= ${HARD_PCT}%`;
  assert.ok(free >= 20 && hard >= 20, what);
  assert.ok(freeHalted < 0.25 * free && hardHalted > 0.4 * hard, what);
});

/**
 * Pre-copy between two VMs in this process over loopback TCP: at least two rounds, every page
 * equal at switch-over, the guest's invariant intact after it resumes on the destination; and a
 * damaged stream leaves the guest running on the source with nothing lost.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { connectOutgoing, listenIncoming } from "../../src/migration/auth.js";
import { createGuestVm, layoutFor, runAndCheck, runGuest } from "../../src/migration/guest_vm.js";
import type { FaultKind } from "../../src/migration/fault.js";
import { LogMode, logStrategy } from "../../src/migration/log_sync.js";
import { MigrationDestination } from "../../src/migration/destination.js";
import { MigrationSource } from "../../src/migration/precopy.js";
import type { MmuModeName, WpName } from "../../src/vm.js";

const KEY = "test-precopy-key";
/**
 * The guest's memory: 4 MiB (two 2 MiB regions, 1,024 pages) shows every property below; the
 * vCPUs run for the whole migration, which copies and hashes every page, so the test's CPU time
 * grows with the size.
 */
const MEMORY = 4 << 20;
/** The bytes the guest rewrites after its first pass over all its memory. */
const WORKING_SET = 1 << 20;

async function migrate(wp: WpName, mode: MmuModeName, fault?: FaultKind, logMode: LogMode = "dirty-log") {
  const log = logStrategy(logMode);
  const inc = await listenIncoming({ port: 0, key: KEY });
  const dest = new MigrationDestination({ wp, mode });
  const dp = inc.accepted.then(({ sock, reader }) => dest.receive(sock, reader));
  const g = createGuestVm(layoutFor(MEMORY, 2, { workingSetBytes: WORKING_SET }), {
    wp,
    mode,
    logged: true,
    prepare: (vm) => log.prepare(vm),
  });
  try {
    await runGuest(g);
    await new Promise((r) => setTimeout(r, 100));
    const { sock, reader } = await connectOutgoing({ host: "127.0.0.1", port: inc.port, key: KEY });
    // The guest fills all its memory, then rewrites a 1 MiB working set: no round after the
    // first has more than 1 MiB dirty, so it converges once the loopback moves 1 MiB/s, however
    // fast the guest runs (rewriting all of it, it converged only when the stream outran the
    // guest, and not at all beside another CPU-bound test).
    const rep = await new MigrationSource(g, { minRounds: 2, downtimeLimitMs: 1000, fault, log }).migrate(
      sock,
      reader,
    );
    const drep = await dp;
    let after = null;
    if (rep.status !== "completed") after = await runAndCheck(g);
    return { rep, drep, after };
  } finally {
    await g.vm.stop();
    if (dest.guest) await dest.guest.vm.stop();
  }
}

for (const wp of ["locked", "lockless"] as const)
  for (const mode of ["tdp", "shadow"] as const)
    test(`precopy (${wp}, ${mode}): >= 2 rounds, 0 mismatches, invariant holds on the destination`, async () => {
      const { rep, drep } = await migrate(wp, mode);
      assert.equal(rep.status, "completed", JSON.stringify(rep.error));
      assert.ok(rep.rounds.length >= 2, `rounds ${rep.rounds.length}`);
      assert.equal(rep.verify.pagesCompared, MEMORY / 4096);
      assert.equal(rep.verify.mismatches, 0);
      assert.equal(rep.verify.guestInvariant, true, rep.verify.problems.join("; "));
      assert.equal(drep.status, "completed");
      assert.equal(rep.switchedOver, true);
      assert.ok(rep.downtimeMs > 0 && rep.totalTimeMs >= rep.downtimeMs);
      assert.ok(rep.transferredBytes > MEMORY, "more than one copy of memory went over");
      // Downtime as QEMU reports it: the stop, less the page-hash verification timed apart.
      const so = rep.switchover!;
      assert.ok(rep.verifyMs > 0 && drep.hashMs > 0 && rep.verifyMs >= drep.hashMs);
      assert.ok(Math.abs(so.stopMs - (rep.downtimeMs + rep.verifyMs)) < 1e-6);
      assert.ok(so.pauseMs + so.syncMs + so.sendMs + so.startMs <= rep.downtimeMs);
      assert.ok(rep.expectedDowntimeMs > 0);
      assert.ok(rep.guestRate > 0);
    });

// Today's interfaces: GET + CLEAR with manual protect, and the per-vCPU dirty ring.
for (const logMode of ["clear-log", "dirty-ring"] as const)
  for (const wp of ["locked", "lockless"] as const)
    test(`precopy over ${logMode} (${wp}): >= 2 rounds, 0 mismatches, invariant holds`, async () => {
      const { rep, drep } = await migrate(wp, "tdp", undefined, logMode);
      assert.equal(rep.status, "completed", JSON.stringify(rep.error));
      assert.equal(rep.logMode, logMode);
      assert.ok(rep.rounds.length >= 2, `rounds ${rep.rounds.length}`);
      assert.equal(rep.verify.pagesCompared, MEMORY / 4096);
      assert.equal(rep.verify.mismatches, 0);
      assert.equal(rep.verify.guestInvariant, true, rep.verify.problems.join("; "));
      assert.equal(drep.status, "completed");
    });

for (const [fault, code] of [
  ["flip", "EBADMSG"],
  ["bad-flag", "EPROTO"],
  ["truncate", "ENODATA"],
] as const)
  test(`precopy fault ${fault}: destination fails with ${code}, the source resumes with nothing lost`, async () => {
    const { rep, drep, after } = await migrate("lockless", "tdp", fault);
    assert.equal(rep.status, "failed");
    assert.equal(rep.switchedOver, false, "the failure came before go: the guest is still the source's");
    assert.equal(drep.status, "failed");
    assert.equal(drep.error?.code, code, drep.error?.message);
    assert.equal(rep.error?.code, code, rep.error?.message);
    assert.ok(rep.countsAtSwitchover, "the source had paused for switch-over");
    assert.ok(after!.ok, after!.problems.join("; "));
    assert.ok(
      after!.after.every((c, i) => c > rep.countsAtSwitchover![i]),
      "the guest ran on after resuming",
    );
  });

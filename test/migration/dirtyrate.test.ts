/**
 * calc-dirty-rate (dirtyrate.ts) against a guest whose writes the test decides: the page writer
 * (one per vCPU) writes the pages the test posts, inside the measurement window the test holds
 * open, so the bitmap and ring modes must count exactly those pages, per vCPU for the ring, and
 * page-sampling must see every sample change or none. Also the ring reaped at a ring-full exit
 * (the vCPU goes on), dirty-limit's rules (dirtylimit_set_throttle) and the vCPU's sleep in its
 * ring-full exit.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvmError } from "../../src/errors.js";
import { createGuestVm, GuestVm, layoutFor } from "../../src/migration/guest_vm.js";
import { DirtyRingLog } from "../../src/migration/log_sync.js";
import { calcDirtyRate, guestDirtyRate } from "../../src/migration/dirtyrate.js";
import {
  dirtylimit_done,
  dirtylimit_dirty_ring_full_time,
  dirtylimit_need_linear_adjustment,
  dirtylimit_set_throttle,
  dirtyRateMBps,
} from "../../src/migration/dirtylimit.js";
import { vmKvm } from "../../src/vm/internal.js";
import { OUTSIDE_GUEST_MODE, VCPU } from "../../src/kvm_host.js";
import { COUNT, DONE, PAGES, SEQ } from "../guest/fixtures/page_writer.js";

const fixture = new URL("../guest/fixtures/page_writer.js", import.meta.url).href;
const MiB = 2 ** 20;

/** A 4 MiB guest VM whose vCPUs each run the page writer over the whole slot. */
class Writers {
  readonly ctl: Int32Array[] = [];
  private seq: number[] = [];
  constructor(
    readonly g: GuestVm,
    vcpus: number,
  ) {
    for (let v = 0; v < vcpus; v++) {
      this.ctl.push(new Int32Array(new SharedArrayBuffer(4 * (PAGES + 2048))));
      this.seq.push(0);
    }
  }

  start(): Promise<void> {
    return this.g.vm.run((id) => ({ module: fixture, args: { ctl: this.ctl[id].buffer, gpa: 0 } }));
  }

  /** Posts `pages` to vCPU v; resolves once it wrote them all. */
  async write(v: number, pages: number[]): Promise<void> {
    const c = this.ctl[v];
    Atomics.store(c, COUNT, pages.length);
    pages.forEach((p, i) => Atomics.store(c, PAGES + i, p));
    Atomics.store(c, SEQ, ++this.seq[v]);
    Atomics.notify(c, SEQ);
    while (Atomics.load(c, DONE) !== this.seq[v]) {
      this.g.vm.throwIfFailed();
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  /** Posts without waiting. */
  post(v: number, pages: number[]): void {
    const c = this.ctl[v];
    Atomics.store(c, COUNT, pages.length);
    pages.forEach((p, i) => Atomics.store(c, PAGES + i, p));
    Atomics.store(c, SEQ, ++this.seq[v]);
    Atomics.notify(c, SEQ);
  }

  done(v: number): boolean {
    return Atomics.load(this.ctl[v], DONE) === this.seq[v];
  }
}

const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

async function rig(vcpus: number, logged: boolean, ring?: DirtyRingLog): Promise<{ g: GuestVm; w: Writers }> {
  const g = createGuestVm(layoutFor(4 * MiB, vcpus), {
    wp: "lockless",
    logged,
    prepare: ring ? (vm) => ring.prepare(vm) : undefined,
  });
  const w = new Writers(g, vcpus);
  await w.start();
  return { g, w };
}

test("dirty-bitmap counts exactly the pages the guest wrote in the window", async () => {
  const { g, w } = await rig(1, true);
  try {
    await w.write(0, range(0, 1024)); // every page dirty before the window: the first GET clears them
    const r = await calcDirtyRate(g, { mode: "dirty-bitmap", window: () => w.write(0, range(100, 300)) });
    assert.equal(r.mode, "dirty-bitmap");
    assert.equal(r.dirtyPages, 300);
    assert.equal(r["dirty-rate"], dirtyRateMBps(300, r["calc-time-ms"]));
    // Rewriting the same pages counts each once (a bitmap).
    const again = await calcDirtyRate(g, {
      mode: "dirty-bitmap",
      window: async () => {
        await w.write(0, range(0, 10));
        await w.write(0, range(0, 10));
      },
    });
    assert.equal(again.dirtyPages, 10);
  } finally {
    await g.vm.stop();
  }
});

test("dirty-ring counts each vCPU's pages exactly, and their sum", async () => {
  const ring = new DirtyRingLog(4096);
  const { g, w } = await rig(2, true, ring);
  try {
    await w.write(0, range(0, 50)); // before the window: reaped at its start, not counted
    const r = await calcDirtyRate(
      g,
      {
        mode: "dirty-ring",
        window: async () => {
          await w.write(0, range(100, 200));
          await w.write(1, range(400, 37));
        },
      },
      ring,
    );
    assert.deepEqual(
      r["vcpu-dirty-rate"]?.map((v) => [v.id, v.pages]),
      [
        [0, 200],
        [1, 37],
      ],
    );
    assert.equal(r.dirtyPages, 237);
    assert.equal(
      r["dirty-rate"],
      dirtyRateMBps(200, r["calc-time-ms"]) + dirtyRateMBps(37, r["calc-time-ms"]),
    );
  } finally {
    await g.vm.stop();
  }
});

test("dirty-ring: a ring that fills in the window is reaped at once, and every entry is counted", async () => {
  // 256 entries: the vCPU exits ring-full at 192 (256 - 64); 700 pages need three reaps.
  const ring = new DirtyRingLog(256);
  const { g, w } = await rig(1, true, ring);
  try {
    const exits0 = g.vm.dirtyRingStats().fullExits;
    const r = await calcDirtyRate(g, { mode: "dirty-ring", window: () => w.write(0, range(0, 700)) }, ring);
    const exits = g.vm.dirtyRingStats().fullExits - exits0;
    assert.ok(exits >= 3, `the vCPU left on a full ring ${exits} times`);
    // Each exit may log its page twice: the write that filled the ring is retried after the
    // reset re-protected its page (as KVM: the gfn is pushed before the write retires).
    assert.ok(
      r.dirtyPages! >= 700 && r.dirtyPages! <= 700 + exits,
      `${r.dirtyPages} entries, ${exits} exits`,
    );
  } finally {
    await g.vm.stop();
  }
});

test("page-sampling: every sample changes when the guest rewrites all pages, none when it writes nothing", async () => {
  const { g, w } = await rig(1, false);
  try {
    // 4 MiB at 16384 per GiB: 64 samples.
    const all = await calcDirtyRate(g, {
      mode: "page-sampling",
      samplePagesPerGiB: 16384,
      seed: 7,
      window: () => w.write(0, range(0, 1024)),
    });
    assert.equal(all.sampled, 64);
    assert.equal(all.dirtySamples, 64);
    assert.equal(all["dirty-rate"], Math.floor((64 * 4 * 1000) / (64 * all["calc-time-ms"])));
    const none = await calcDirtyRate(g, {
      mode: "page-sampling",
      samplePagesPerGiB: 16384,
      seed: 7,
      window: () => new Promise((r) => setTimeout(r, 5)),
    });
    assert.equal(none.dirtySamples, 0);
    assert.equal(none["dirty-rate"], 0);
    // Half the memory rewritten: some samples change, not all (seeded: the same sample each time).
    const half = await calcDirtyRate(g, {
      mode: "page-sampling",
      samplePagesPerGiB: 16384,
      seed: 7,
      window: () => w.write(0, range(0, 512)),
    });
    assert.ok(half.dirtySamples! > 0 && half.dirtySamples! < 64, `${half.dirtySamples} of 64`);
  } finally {
    await g.vm.stop();
  }
});

test("calcDirtyRate and guestDirtyRate refuse bad options with EINVAL, building nothing", async () => {
  const { g } = await rig(1, false);
  try {
    const bad: [object, RegExp][] = [
      [{ mode: "nope" }, /mode/],
      [{ calcTimeMs: 10 }, /calcTimeMs/],
      [{ samplePagesPerGiB: 100_000 }, /samplePagesPerGiB/],
      [{ mode: "dirty-ring" }, /log/],
      [{ samplePagesPerGiB: 128 }, /samples no page/], // 4 MiB x 128 per GiB < 1 page
    ];
    for (const [o, re] of bad)
      await assert.rejects(
        calcDirtyRate(g, o),
        (e: unknown) => e instanceof KvmError && e.code === "EINVAL" && re.test(e.message),
      );
  } finally {
    await g.vm.stop();
  }
  for (const o of [{ vcpus: 0 }, { mode: "dirty-bitmap" as const, dirtyRingSize: 512 }, { wp: "nope" }])
    await assert.rejects(guestDirtyRate(o), (e: unknown) => e instanceof KvmError && e.code === "EINVAL");
});

test("dirtylimit_set_throttle: QEMU's rules", () => {
  // Ring-full time: a 16 MiB ring at 800 MB/s fills in 20 ms.
  assert.equal(dirtylimit_dirty_ring_full_time(16, 800), 20_000);
  assert.equal(dirtylimit_dirty_ring_full_time(16, 0), 0);
  // Tolerance: within 25 MB/s nothing is adjusted.
  assert.equal(dirtylimit_done(100, 125), true);
  assert.equal(dirtylimit_done(100, 126), false);
  // Linear when the error is over 50% of the larger rate.
  assert.equal(dirtylimit_need_linear_adjustment(50, 800), true);
  assert.equal(dirtylimit_need_linear_adjustment(100, 150), false);
  // 800 MB/s against 50: pct = 750 * 100 / 800 = 93; step = 20000 * 93 / 7 = 265714.
  assert.equal(dirtylimit_set_throttle(0, 50, 800, 20_000), 265_714);
  // Within 50%: +/- a tenth of the ring-full time.
  assert.equal(dirtylimit_set_throttle(5000, 100, 150, 20_000), 7000);
  assert.equal(dirtylimit_set_throttle(5000, 150, 100, 20_000), 3000);
  // Under the quota by more than 50%: linear down (pct = 90, step = 20000 * 90 / 10), not below 0.
  assert.equal(dirtylimit_set_throttle(300_000, 500, 50, 20_000), 120_000);
  assert.equal(dirtylimit_set_throttle(1000, 500, 50, 20_000), 0);
  // At most 99 ring-full times; no dirtying: no sleep.
  assert.equal(dirtylimit_set_throttle(1_970_000, 1, 1000, 20_000), 1_980_000);
  assert.equal(dirtylimit_set_throttle(50_000, 100, 0, 20_000), 0);
  // Whole MB first, then per second (QEMU's do_calculate_dirtyrate).
  assert.equal(dirtyRateMBps(255, 1000), 0);
  assert.equal(dirtyRateMBps(2560, 500), 20);
});

test("a vCPU sleeps its throttle after a ring-full exit; a pause cuts the sleep short", async () => {
  const ring = new DirtyRingLog(256);
  const { g, w } = await rig(1, true, ring);
  const vcpu = vmKvm(g.vm).vcpu;
  try {
    assert.throws(() => g.vm.setDirtyRingThrottle(0, -1), /EINVAL/);
    assert.throws(() => g.vm.setDirtyRingThrottle(3, 10), /EINVAL/);
    g.vm.setDirtyRingThrottle(0, 60_000_000); // a minute: the test ends it by a pause
    const exits0 = g.vm.dirtyRingStats().fullExits;
    w.post(0, range(0, 300)); // past the soft limit (192): one ring-full exit
    await g.vm.waitDirtyRingFull({ since: exits0, timeoutMs: 20_000 });
    assert.equal(g.vm.dirtyRingStats().fullExits, exits0 + 1);
    ring.reap(g); // the reset lets it go on: into its sleep
    // Asleep: outside guest mode, the batch unfinished, for as long as we look.
    for (let i = 0; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 5));
      assert.equal(w.done(0), false, "the vCPU finished its batch instead of sleeping");
    }
    assert.equal(Atomics.load(vcpu, VCPU.mode(0)), OUTSIDE_GUEST_MODE);
    g.vm.setDirtyRingThrottle(0, 0);
    await g.vm.pause(); // woken from its sleep, it parks
    g.vm.resume();
    while (!w.done(0)) {
      g.vm.throwIfFailed();
      await new Promise((r) => setTimeout(r, 1));
    }
    assert.equal(g.vm.dirtyRingStats().fullExits, exits0 + 1);
  } finally {
    await g.vm.stop();
  }
});

/**
 * Property: random sequences of dirty-log calls on a small VM whose one vCPU writes the pages
 * the test asks for. Bitmap mode: GET, CLEAR over random ranges and masks, logging turned off
 * and on, manual protect on or off. Ring mode: harvest and reset. After every call: a refused
 * call is a KvmError with an errno code; and no dirty page is lost against a model: every page
 * written since its last clear (GET without manual protect, CLEAR, the ring's reset) is
 * reported by the next GET or harvest, and nothing is reported that was never written.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { KvmError, KVM_MEM_LOG_DIRTY_PAGES, Vm } from "../../src/index.js";
import type { MemoryRegion } from "../../src/vm.js";
import { designNames } from "../../src/mmu/design.js";
import { COUNT, DONE, PAGES, SEQ } from "../guest/fixtures/page_writer.js";

const MiB = 1 << 20;
const NPAGES = 256;
const fixture = new URL("../guest/fixtures/page_writer.js", import.meta.url).href;

type Kind = "auto" | "manual" | "ring";
type Cmd =
  | { t: "write"; pages: number[] }
  | { t: "get" }
  | { t: "clear"; first: number; num: number; mask: number[] }
  | { t: "logging"; on: boolean }
  | { t: "harvest"; max: number }
  | { t: "reset" };

const page = fc.nat({ max: NPAGES - 1 });
const cmd: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({ t: fc.constant("write" as const), pages: fc.array(page, { maxLength: 12 }) }),
  },
  { weight: 2, arbitrary: fc.constant({ t: "get" as const }) },
  {
    weight: 2,
    arbitrary: fc.record({
      t: fc.constant("clear" as const),
      // Mostly legal ranges (multiples of 64 in the slot), some not (typed refusals).
      first: fc.oneof(fc.constantFrom(0, 64, 128, 192), fc.constantFrom(1, 256, 320, -64)),
      num: fc.oneof(fc.constantFrom(0, 64, 128, 256), fc.constantFrom(1, 65, 512, -1)),
      mask: fc.array(page, { maxLength: 40 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ t: fc.constant("logging" as const), on: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({ t: fc.constant("harvest" as const), max: fc.constantFrom(Infinity, 0, 3, 100) }),
  },
  { weight: 2, arbitrary: fc.constant({ t: "reset" as const }) },
);

/** What the log must show: pages written since their last clear, and every page ever written. */
class Model {
  pending = new Set<number>();
  written = new Set<number>();
  /** Ring mode: harvested, not yet reset (still writable: a write need not push an entry). */
  harvested = new Set<number>();
  logging = true;
}

class Rig {
  readonly vm: Vm;
  readonly region: MemoryRegion;
  readonly ctl = new Int32Array(new SharedArrayBuffer(4 * (PAGES + 64)));
  private seq = 0;

  constructor(wp: string, kind: Kind) {
    this.vm = Vm.create({ memory: 8 * MiB, wp, maxVcpus: 1 });
    if (kind === "ring") this.vm.enableDirtyRing(4096);
    if (kind === "manual") this.vm.enableManualDirtyLogProtect(1);
    const hva = this.vm.mmap(NPAGES * 4096, { thp: false });
    this.region = {
      slot: 0,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: 0,
      memorySize: NPAGES * 4096,
      userspaceAddr: hva,
    };
    this.vm.setUserMemoryRegion(this.region);
    this.vm.createVcpu(0);
  }

  start(): Promise<void> {
    return this.vm.run(() => ({
      module: fixture,
      args: { ctl: this.ctl.buffer, gpa: 0 },
    }));
  }

  /** The guest writes `pages` and halts again. */
  async write(pages: number[]): Promise<void> {
    const c = this.ctl;
    Atomics.store(c, COUNT, pages.length);
    pages.forEach((p, i) => Atomics.store(c, PAGES + i, p));
    Atomics.store(c, SEQ, ++this.seq);
    Atomics.notify(c, SEQ);
    while (Atomics.load(c, DONE) !== this.seq) {
      this.vm.throwIfFailed();
      await new Promise((r) => setTimeout(r, 1));
    }
  }
}

const bitsOf = (bm: Uint32Array, first = 0): Set<number> => {
  const s = new Set<number>();
  for (let w = 0; w < bm.length; w++)
    for (let b = 0; b < 32; b++) if ((bm[w] >>> b) & 1) s.add(first + w * 32 + b);
  return s;
};

function typed(e: unknown, what: string): void {
  assert.ok(e instanceof KvmError, `${what}: not a KvmError: ${String(e)}`);
  assert.match(e.message, /^E[A-Z0-9]+: /, what);
}

function reported(m: Model, got: Set<number>, what: string): void {
  for (const p of m.pending)
    assert.ok(got.has(p), `${what}: page ${p}, written since its last clear, was not reported`);
  for (const p of got) assert.ok(m.written.has(p), `${what}: page ${p} reported but never written`);
}

/** One call on the rig and the model. */
async function step(r: Rig, m: Model, kind: Kind, c: Cmd): Promise<void> {
  const vm = r.vm;
  const what = JSON.stringify(c);
  switch (c.t) {
    case "write":
      await r.write(c.pages);
      for (const p of c.pages) {
        m.written.add(p);
        if (m.logging && (kind !== "ring" || !m.harvested.has(p))) m.pending.add(p);
      }
      return;
    case "get":
      if (kind === "ring" || !m.logging)
        return void assert.throws(
          () => vm.getDirtyLog(0),
          (e) => (typed(e, what), true),
        );
      reported(m, bitsOf(vm.getDirtyLog(0)), what);
      if (kind === "auto") m.pending.clear();
      return;
    case "clear": {
      const bm = new Uint32Array(Math.max(0, Math.ceil(c.num / 32)));
      for (const p of c.mask)
        if (p - c.first >= 0 && p - c.first < c.num) bm[(p - c.first) >> 5] |= 1 << ((p - c.first) & 31);
      const legal =
        kind !== "ring" &&
        m.logging &&
        c.first >= 0 &&
        c.first % 64 === 0 &&
        c.first <= NPAGES &&
        c.num >= 0 &&
        c.num <= NPAGES - c.first &&
        (c.num % 64 === 0 || c.first + c.num === NPAGES);
      if (!legal)
        return void assert.throws(
          () => vm.clearDirtyLog(0, c.first, c.num, bm),
          (e) => (typed(e, what), true),
        );
      vm.clearDirtyLog(0, c.first, c.num, bm);
      for (const p of bitsOf(bm, c.first)) m.pending.delete(p);
      return;
    }
    case "logging":
      if (kind === "ring") return;
      vm.setUserMemoryRegion({ ...r.region, flags: c.on ? KVM_MEM_LOG_DIRTY_PAGES : 0 });
      // A new bitmap starts clean (no INITIALLY_SET); writes while off are not logged.
      if (c.on !== m.logging) m.pending.clear();
      m.logging = c.on;
      return;
    case "harvest": {
      if (kind !== "ring")
        return void assert.throws(
          () => vm.harvestDirtyRing(0, c.max),
          (e) => (typed(e, what), true),
        );
      const got = new Set(vm.harvestDirtyRing(0, c.max).map((g) => (assert.equal(g.slot, 0), g.offset)));
      for (const p of got) assert.ok(m.written.has(p), `${what}: page ${p} harvested but never written`);
      for (const p of got) {
        m.pending.delete(p);
        m.harvested.add(p);
      }
      // Harvesting everything reports every pending page.
      if (c.max === Infinity) {
        reported(m, got, what);
        m.pending.clear();
      }
      return;
    }
    case "reset":
      if (kind !== "ring")
        return void assert.throws(
          () => vm.resetDirtyRings(),
          (e) => (typed(e, what), true),
        );
      vm.resetDirtyRings();
      m.harvested.clear();
      return;
  }
}

test(
  "property: ring and clear-log call sequences lose no dirty page; every refusal is typed",
  { timeout: 600_000 },
  async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...designNames()),
        fc.constantFrom<Kind>("auto", "manual", "ring"),
        fc.array(cmd, { minLength: 1, maxLength: 25 }),
        async (wp, kind, cmds) => {
          const r = new Rig(wp, kind);
          const m = new Model();
          await r.start();
          try {
            for (const c of cmds) await step(r, m, kind, c);
            // At the end, a full harvest reports every page still pending.
            if (kind === "ring") await step(r, m, kind, { t: "harvest", max: Infinity });
            else if (m.logging) await step(r, m, kind, { t: "get" });
            assert.equal(r.vm.error, null);
          } finally {
            await r.vm.stop();
          }
        },
      ),
      { numRuns: 40 },
    );
  },
);

/**
 * task_numa_work's chunks as the notifier sees them, over two VMAs with a hole between: every
 * range non-empty, inside one VMA and one PUD; each scan covers its scan size (less at the end
 * of the last VMA); the scans together cover both VMAs once, then start over. The notifier
 * checks each range as it comes and throws on the first bad one, and after a bounded count: a
 * scan that runs backwards or never ends fails at once instead of hanging the test.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PAGE_SIZE, SLOT } from "../../src/kvm_host.js";
import { MmuNotifier } from "../../src/mem/host_memory.js";
import { task_numa_work } from "../../src/mem/numa_balancing.js";
import { Vm } from "../../src/vm.js";
import { vmKvm } from "../../src/vm/internal.js";

const A_PAGES = 1024;
const B_PAGES = 512;
const SCAN = 300;
const PERIOD = 1000;
const PUD_PAGES = 262144;
/** More ranges than one scan of SCAN pages over two VMAs can need: past it, the scan ran away. */
const MAX_RANGES = 8;

type Range = [number, number];

/** A notifier that records ranges and throws on the first one no correct scan would issue. */
function checkingNotifier(vmas: Range[]): { n: MmuNotifier; ranges: Range[] } {
  const ranges: Range[] = [];
  const n: MmuNotifier = {
    invalidateRangeStart(s, e) {
      if (!(e > s)) throw new Error(`empty or backward range [${s}, ${e})`);
      if (!vmas.some(([vs, ve]) => s >= vs && e <= ve)) throw new Error(`[${s}, ${e}) is outside every VMA`);
      if (Math.floor(s / PUD_PAGES) !== Math.floor((e - 1) / PUD_PAGES))
        throw new Error(`[${s}, ${e}) crosses a PUD boundary`);
      if (ranges.length >= MAX_RANGES) throw new Error(`more than ${MAX_RANGES} ranges in one scan`);
      ranges.push([s, e]);
    },
    invalidateRangeEnd() {},
  };
  return { n, ranges };
}

/** Adjacent ranges joined. */
function merged(rs: Range[]): Range[] {
  const out: Range[] = [];
  for (const [s, e] of rs) {
    const last = out[out.length - 1];
    if (last !== undefined && last[1] === s) last[1] = e;
    else out.push([s, e]);
  }
  return out;
}

test("task_numa_work: scan-size chunks over two VMAs, split at the VMA's end, each page once, then start over", async () => {
  const vm = Vm.create({ memory: 2048 * PAGE_SIZE, wp: "locked", maxSlotPages: A_PAGES + B_PAGES });
  try {
    const a = vm.mmap(A_PAGES * PAGE_SIZE, { thp: false });
    vm.mmap(16 * PAGE_SIZE, { thp: false }); // a hole between the two VMAs
    const b = vm.mmap(B_PAGES * PAGE_SIZE, { thp: false });
    vm.setUserMemoryRegion({
      slot: 0,
      flags: 0,
      guestPhysAddr: 0,
      memorySize: A_PAGES * PAGE_SIZE,
      userspaceAddr: a,
    });
    vm.setUserMemoryRegion({
      slot: 1,
      flags: 0,
      guestPhysAddr: 1 << 30,
      memorySize: B_PAGES * PAGE_SIZE,
      userspaceAddr: b,
    });
    const kvm = vmKvm(vm);
    const vmas: Range[] = [0, 1].map((id) => {
      const s = kvm.slots[SLOT.hva_page(id)];
      return [s, s + kvm.slots[SLOT.npages(id)]];
    });
    assert.ok(vmas[0][1] < vmas[1][0], "a hole between the VMAs");
    vm.setNumaBalancing({ scanPeriodMs: PERIOD, scanBytes: SCAN * PAGE_SIZE });
    const done: number[] = [];
    const all: Range[] = [];
    let firstOfLast: Range | undefined;
    for (let k = 0; k < 7; k++) {
      const { n, ranges } = checkingNotifier(vmas);
      done.push(task_numa_work(kvm, k * PERIOD, n));
      assert.equal(
        ranges.reduce((t, [s, e]) => t + e - s, 0),
        done[k],
        `scan ${k}: returns the pages it invalidated`,
      );
      if (k < 6) all.push(...ranges);
      else firstOfLast = ranges[0];
    }
    // 1024 + 512 pages in chunks of 300: the sixth scan ends at the last VMA's end.
    assert.deepEqual(done, [300, 300, 300, 300, 300, 36, 300]);
    assert.deepEqual(merged(all), vmas, "six scans cover both VMAs, each page once, in order");
    assert.deepEqual(firstOfLast, [vmas[0][0], vmas[0][0] + SCAN], "the seventh starts over");
  } finally {
    await vm.stop();
  }
});

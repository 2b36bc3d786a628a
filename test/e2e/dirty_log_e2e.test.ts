/**
 * End to end, independently of src/verify: real vCPU workers write a dirty-logged slot while a
 * host thread migrates and invalidates its backing; at each quiesce (vm.pause, host thread
 * paused) the test snapshots every page, whole, and requires that every page whose contents
 * changed since the previous quiesced harvest was reported by a harvest in between (one taken
 * while the vCPUs ran, one after they stopped). A harvester that drops bits must fail it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm, WpName } from "../../src/vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../../src/kvm_host.js";
import { DLG, DLG_VCPU, dlgCtlWords } from "../../src/workload/dirty_log_guest.js";
import { ParkMiller } from "../../src/workload/rng.js";

const SLOT = 3;
const GPA = 2 ** 32;
const WORDS = PAGE_SIZE / 4;

interface E2eResult {
  rounds: number;
  changed: number;
  missed: number;
  reported: number;
  firstMissed: number[];
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function e2e(wp: WpName, kind: "dirty_log" | "dirty_log_incr", drop = false): Promise<E2eResult> {
  const vcpus = 2;
  const pagesPer = 1024;
  const npages = vcpus * pagesPer + 5; // a partial last bitmap word
  const vm = Vm.create({ memory: 16 << 20, wp, maxVcpus: vcpus, maxSlotPages: npages });
  const ctl = new Int32Array(new SharedArrayBuffer(dlgCtlWords(vcpus) * 4));
  const rng = new ParkMiller(42);
  const res: E2eResult = { rounds: 0, changed: 0, missed: 0, reported: 0, firstMissed: [] };
  try {
    const hva = vm.mmap(npages * PAGE_SIZE, { thp: true });
    vm.setUserMemoryRegion({
      slot: SLOT,
      flags: KVM_MEM_LOG_DIRTY_PAGES,
      guestPhysAddr: GPA,
      memorySize: npages * PAGE_SIZE,
      userspaceAddr: hva,
    });
    for (let i = 0; i < vcpus; i++) vm.createVcpu(i);
    Atomics.store(ctl, DLG.iteration, 1);
    await vm.run((id) => ({
      kind,
      ctl: ctl.buffer,
      baseGfn: GPA / PAGE_SIZE + id * pagesPer,
      pages: pagesPer + (id === vcpus - 1 ? 5 : 0),
      seed: 9,
    }));
    await vm.startHostThread({ migrateRate: 200, invalidateRate: 50, seed: 3 });
    const harvest = (into: Uint32Array): void => {
      const bm = vm.getDirtyLog(SLOT);
      if (drop) for (let i = 0; i < bm.length; i++) bm[i] = bm[i] & (bm[i] - 1);
      for (let i = 0; i < bm.length; i++) into[i] = into[i] | bm[i];
    };
    const snapshot = (): Int32Array => {
      const s = new Int32Array(npages * WORDS);
      for (let p = 0; p < npages; p++)
        vm.readGuestPage(GPA + p * PAGE_SIZE, s.subarray(p * WORDS, (p + 1) * WORDS));
      return s;
    };
    const writes = (): number => {
      let n = 0;
      for (let id = 0; id < vcpus; id++) n = (n + Atomics.load(ctl, DLG_VCPU.writes(id))) | 0;
      return n;
    };
    const run = async (ms: number): Promise<void> => {
      const w0 = writes();
      for (let i = 0; i < ms || ((writes() - w0) | 0) < 256; i++) {
        await sleep(1);
        vm.throwIfFailed();
      }
    };
    await run(5);
    await vm.pause();
    await vm.pauseHostThread();
    const reported = new Uint32Array(Math.ceil(npages / 32));
    harvest(reported);
    let prev = snapshot();
    for (let round = 1; round <= 8; round++) {
      reported.fill(0);
      Atomics.store(ctl, DLG.iteration, round + 1); // new stamps for the random writer
      vm.resumeHostThread();
      vm.resume();
      await run(1 + (rng.next() % 10));
      harvest(reported); // while the vCPUs write
      await run(1 + (rng.next() % 10));
      await vm.pause();
      await vm.pauseHostThread();
      vm.throwIfFailed();
      harvest(reported);
      const cur = snapshot();
      for (let p = 0; p < npages; p++) {
        const a = new Uint8Array(prev.buffer, p * PAGE_SIZE, PAGE_SIZE);
        const b = new Uint8Array(cur.buffer, p * PAGE_SIZE, PAGE_SIZE);
        const dirty = ((reported[p >>> 5] >>> (p & 31)) & 1) !== 0;
        if (dirty) res.reported++;
        if (Buffer.compare(a, b) === 0) continue;
        res.changed++;
        if (!dirty) {
          res.missed++;
          if (res.firstMissed.length < 5) res.firstMissed.push(p);
        }
      }
      for (let p = npages; p < reported.length * 32; p++)
        assert.equal((reported[p >>> 5] >>> (p & 31)) & 1, 0, `bit ${p} is past the end of the slot`);
      prev = cur;
      res.rounds++;
    }
  } finally {
    await vm.stop();
  }
  return res;
}

for (const wp of ["locked", "lockless"] as const) {
  for (const kind of ["dirty_log", "dirty_log_incr"] as const) {
    test(
      `${wp}, ${kind} guest: every page changed between quiesced harvests was reported`,
      { timeout: 60_000 },
      async () => {
        const r = await e2e(wp, kind);
        assert.equal(r.rounds, 8);
        assert.ok(r.changed > 0, "the guests changed pages");
        assert.equal(r.missed, 0, `pages changed but not reported: ${r.firstMissed.join(", ")}`);
        assert.ok(r.reported >= r.changed);
      },
    );
  }
}

test(
  "negative control: the same check fails when the harvester drops bits",
  { timeout: 60_000 },
  async () => {
    const r = await e2e("lockless", "dirty_log", true);
    assert.ok(r.changed > 0);
    assert.ok(r.missed > 0, "dropped bits are noticed");
  },
);

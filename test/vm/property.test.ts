/**
 * Property-based tests of the public Vm API (fast-check): random sequences of calls, valid and
 * invalid, with vCPUs stopped, running, paused, and after a worker failed. After every call:
 *   - a refused call throws KvmError with an errno code, its message naming the argument;
 *   - a refused call changes nothing observable (memslots, flags; the dirty bitmaps too when no
 *     vCPU can write);
 *   - no call takes longer than CALL_BOUND_MS (no promise stays pending);
 * and at the end: no dirty bit was lost (every page the guests wrote was reported by a harvest
 * or is still pending), and the next legal calls work.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { VCPU } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import { Vm, VCPU_WAIT_MS } from "../../src/vm.js";
import type { GuestArgs } from "../../src/workload/guest.js";
import { vmKvm } from "../../src/vm/internal.js";

const MiB = 1 << 20;
const PAGES = 64;
/** No call may take longer: the bound on waiting for a vCPU, plus slack for a loaded machine. */
const CALL_BOUND_MS = VCPU_WAIT_MS + 5000;
const ERRNO_MSG = /^E[A-Z]+: [A-Za-z]+( \d+)?: /;

type Cmd =
  | { t: "region"; slot: number; flags: number; gpa: number; size: number; hvaOff: number }
  | { t: "log"; slot: number; out: string }
  | { t: "vcpu"; id: number }
  | { t: "run"; guest: string }
  | { t: "stop" }
  | { t: "pause" }
  | { t: "resume" }
  | { t: "mmap"; bytes: number }
  | { t: "read"; gpa: number };

const cmd: fc.Arbitrary<Cmd> = fc.oneof(
  fc.record({
    t: fc.constant("region" as const),
    slot: fc.constantFrom(0, 1, 2, -1, 40, 1.5),
    flags: fc.constantFrom(0, 1, 2, 3, 4),
    gpa: fc.constantFrom(0, 2 * MiB, 4 * MiB, 4097, -4096),
    size: fc.constantFrom(0, 2 * MiB, MiB, 3),
    hvaOff: fc.constantFrom(0, 2 * MiB, 64 * MiB),
  }),
  fc.record({
    t: fc.constant("log" as const),
    slot: fc.constantFrom(0, 1, 5, 32),
    out: fc.constantFrom("none", "u32", "short", "i32", "array", "null"),
  }),
  fc.record({ t: fc.constant("vcpu" as const), id: fc.constantFrom(0, 1, 2, -1) }),
  fc.record({
    t: fc.constant("run" as const),
    guest: fc.constantFrom("ok", "ok", "null", "throws", "unknown"),
  }),
  fc.constant({ t: "stop" as const }),
  fc.constant({ t: "pause" as const }),
  fc.constant({ t: "resume" as const }),
  fc.record({ t: fc.constant("mmap" as const), bytes: fc.constantFrom(4096, 100, 0, 2 ** 40) }),
  fc.record({ t: fc.constant("read" as const), gpa: fc.constantFrom(0, 2 * MiB + 8, 64 * MiB) }),
);

const memstress: GuestArgs = {
  kind: "memstress",
  baseGfn: 0,
  pages: PAGES,
  writePercent: 100,
  random: false,
  seed: 1,
};

function guestOf(g: string): unknown {
  switch (g) {
    case "ok":
      return () => memstress;
    case "null":
      return null;
    case "throws":
      return () => {
        throw new Error("factory");
      };
    default:
      return () => ({ kind: "unknown-kind" });
  }
}

function outOf(o: string): unknown {
  return {
    none: undefined,
    u32: new Uint32Array(64),
    short: new Uint32Array(1),
    i32: new Int32Array(64),
    array: [0, 0],
    null: null,
  }[o];
}

/** What a refused call must leave as it was. */
function observable(vm: Vm, withBitmaps: boolean): unknown {
  const k = vmKvm(vm);
  return { slots: [...k.slots], vcpus: vm.vcpuIds, bitmap: withBitmaps ? [...k.bitmapPool] : null };
}

/** f's result, or a failure if it is still pending after CALL_BOUND_MS (a hang guard). */
async function bounded<T>(what: string, f: () => T | Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      Promise.resolve().then(f),
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(new Error(`${what}: pending after ${CALL_BOUND_MS} ms`)), CALL_BOUND_MS);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function runSequence(cmds: Cmd[]): Promise<void> {
  const vm = Vm.create({ memory: 8 * MiB, wp: "lockless", maxVcpus: 2, maxSlotPages: 2048 });
  const hva = vm.mmap(4 * MiB);
  // Slot 0 is dirty-logged from its creation and never deleted: every guest write is logged.
  vm.setUserMemoryRegion({ slot: 0, flags: 1, guestPhysAddr: 0, memorySize: 2 * MiB, userspaceAddr: hva });
  const harvested = new Set<number>();
  let running = false;
  let paused = false;
  try {
    for (const c of cmds) {
      // With no vCPU able to write, the dirty bitmaps must not change under a refused call.
      const quiet: boolean = !running || paused;
      const before = observable(vm, quiet);
      const call = async (): Promise<unknown> => {
        switch (c.t) {
          case "region":
            // slot 0: only its flags may change, and logging stays on
            if (c.slot === 0 && (c.size === 0 || (c.flags & 1) === 0)) return;
            return vm.setUserMemoryRegion({
              slot: c.slot,
              flags: c.flags,
              guestPhysAddr: c.gpa,
              memorySize: c.size,
              userspaceAddr: hva + c.hvaOff,
            });
          case "log": {
            const log = vm.getDirtyLog(c.slot, outOf(c.out) as Uint32Array | undefined);
            if (c.slot === 0)
              for (let p = 0; p < PAGES; p++) if ((log[p >>> 5] >>> (p & 31)) & 1) harvested.add(p);
            return;
          }
          case "vcpu":
            return vm.createVcpu(c.id);
          case "run":
            await vm.run(guestOf(c.guest) as (id: number) => GuestArgs);
            running = true;
            paused = false;
            return;
          case "stop":
            await vm.stop();
            running = false;
            return;
          case "pause":
            await vm.pause();
            paused = true;
            return;
          case "resume":
            vm.resume();
            paused = false;
            return;
          case "mmap":
            return vm.mmap(c.bytes);
          case "read":
            return vm.readGuestU64(c.gpa);
        }
      };
      try {
        await bounded(JSON.stringify(c), call);
      } catch (e) {
        assert.ok(e instanceof KvmError, `${JSON.stringify(c)}: not a KvmError: ${String(e)}`);
        assert.match(e.message, ERRNO_MSG, JSON.stringify(c));
        // A failed worker is reported by the calls after it; the VM itself is what it was.
        if (c.t !== "mmap")
          assert.deepEqual(observable(vm, quiet), before, `${JSON.stringify(c)} changed the VM`);
      }
    }
  } finally {
    await bounded("stop", () => vm.stop());
  }
  // Nothing lost: the guests wrote every page of their region in pass 0.
  const wrote = [0, 1].some((id) => Atomics.load(vmKvm(vm).vcpu, VCPU.passes(id)) > 0);
  const last = vm.getDirtyLog(0);
  for (let p = 0; p < PAGES; p++) if ((last[p >>> 5] >>> (p & 31)) & 1) harvested.add(p);
  if (wrote) assert.equal(harvested.size, PAGES, `pages never reported: ${PAGES - harvested.size}`);
  // The next legal calls work.
  if (vm.vcpuIds.length === 0) vm.createVcpu(0);
  await bounded("run", () => vm.run(() => memstress));
  await bounded("stop", () => vm.stop());
  assert.equal(vm.error, null);
}

test("property: random Vm call sequences keep the error, no-change, bound and no-lost-bit contracts", async () => {
  await fc.assert(fc.asyncProperty(fc.array(cmd, { minLength: 1, maxLength: 14 }), runSequence), {
    numRuns: Number(process.env["KVMMU_FC_RUNS"] ?? 20),
    seed: Number(process.env["KVMMU_FC_SEED"] ?? 42),
    endOnFailure: true,
  });
});

// The sequence (a worker that fails at once, then pause and stop), run as a fixed case.
test("fixed sequence: a guest of unknown kind, then pause, then stop", async () => {
  await runSequence([{ t: "vcpu", id: 0 }, { t: "run", guest: "unknown" }, { t: "pause" }, { t: "stop" }]);
});

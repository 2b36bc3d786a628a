/**
 * The interpreter example's host: live migration of a guest of the user's own making.
 *
 *  1. VM A (dirty-logged slot) runs the interpreter on two vCPUs.
 *  2. Round by round, the host harvests A's dirty log and copies the dirty pages into VM B
 *     (pages never written are zero in both VMs, so the dirty pages are all that differ).
 *     A vCPU that reaches `migrateAfterSteps` halts there until the stop request, so every vCPU
 *     is mid-program when A stops.
 *  3. It asks the guests to stop (a word in guest memory), waits until both parked between two
 *     instructions, stops A, and copies the last dirty pages.
 *  4. VM B runs the same module from the copied state to the end; a third VM runs the program
 *     without interruption; registers and data must be the same.
 *
 * Run it: `node dist/examples/interpreter/host.js` (prints the result as JSON).
 */
import { fileURLToPath } from "node:url";
import { copyDirtyPages, KVM_MEM_LOG_DIRTY_PAGES, Vm } from "kvmmu";
import {
  DATA_PAGES,
  dataOf,
  GPA_BASE,
  PAGE,
  program,
  PROGRAM,
  reg,
  S_DONE,
  S_PARK_AT,
  S_PARKED,
  S_STEPS,
  SLOT_PAGES,
  stateOf,
  STOP_REQ,
} from "./layout.js";

const GUEST = new URL("./guest.js", import.meta.url);
const VCPUS = 2;

function word(vm: Vm, gpa: number): number {
  return new DataView(vm.readGuest(gpa, 4).buffer).getInt32(0, true);
}

function setWord(vm: Vm, gpa: number, x: number): void {
  vm.writeGuest(gpa, new Uint8Array(new Int32Array([x]).buffer));
}

function makeVm(logged: boolean): Vm {
  const vm = Vm.create({ memory: 4 << 20, wp: "lockless" });
  const hva = vm.mmap(SLOT_PAGES * PAGE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: logged ? KVM_MEM_LOG_DIRTY_PAGES : 0,
    guestPhysAddr: GPA_BASE,
    memorySize: SLOT_PAGES * PAGE,
    userspaceAddr: hva,
  });
  for (let id = 0; id < VCPUS; id++) vm.createVcpu(id);
  return vm;
}

/** Loads the program and each vCPU's registers (r7 = data base, r6 = data end). */
function load(vm: Vm, rounds: number): void {
  vm.writeGuest(PROGRAM, program(rounds));
  for (let id = 0; id < VCPUS; id++) {
    setWord(vm, stateOf(id) + reg(7), dataOf(id));
    setWord(vm, stateOf(id) + reg(6), dataOf(id) + DATA_PAGES * PAGE);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, ok: () => boolean, vm: Vm, timeoutMs = 120_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    vm.throwIfFailed();
    if (Date.now() > end) throw new Error(`interpreter example: timed out waiting for ${what}`);
    await sleep(2);
  }
}

const allDone = (vm: Vm): boolean => [0, 1].every((id) => word(vm, stateOf(id) + S_DONE) === 1);

/** What must match: every vCPU's registers and data. */
function outcome(vm: Vm): { sums: number[]; data: string[] } {
  const sums = [0, 1].map((id) => word(vm, stateOf(id) + reg(2)));
  const data = [0, 1].map((id) =>
    Buffer.from(vm.readGuest(dataOf(id), DATA_PAGES * PAGE)).toString("base64"),
  );
  return { sums, data };
}

export interface MigrationResult {
  rounds: number;
  pagesCopied: number[];
  stepsAtMigration: number[];
  totalSteps: number[];
  sums: number[];
  same: boolean;
}

export async function migrate(
  opts: { rounds?: number; migrateAfterSteps?: number } = {},
): Promise<MigrationResult> {
  const passes = opts.rounds ?? 6;
  const migrateAfter = opts.migrateAfterSteps ?? 50_000;
  const spec = (): { module: URL } => ({ module: GUEST });

  // The reference: the program without interruption.
  const ref = makeVm(false);
  load(ref, passes);
  await ref.run(spec);
  await until("the reference run", () => allDone(ref), ref);
  await ref.stop();
  const want = outcome(ref);
  const totalSteps = [0, 1].map((id) => word(ref, stateOf(id) + S_STEPS));

  // A runs; B receives.
  const a = makeVm(true);
  const b = makeVm(false);
  load(a, passes);
  for (let id = 0; id < VCPUS; id++) setWord(a, stateOf(id) + S_PARK_AT, migrateAfter);
  await a.run(spec);
  const pagesCopied: number[] = [];
  const bitmap = new Uint32Array(SLOT_PAGES / 32);
  const steps = (): number[] => [0, 1].map((id) => word(a, stateOf(id) + S_STEPS));
  do {
    a.getDirtyLog(0, bitmap);
    pagesCopied.push(copyDirtyPages(a, 0, bitmap, b));
    await sleep(20);
  } while (steps().some((s) => s < migrateAfter) && !allDone(a));
  // Stop and copy: the guests park between instructions, then the last dirty pages go over.
  setWord(a, STOP_REQ, 1);
  await until(
    "the guests to park",
    () => [0, 1].every((id) => word(a, stateOf(id) + S_PARKED) === 1 || word(a, stateOf(id) + S_DONE) === 1),
    a,
  );
  await a.stop();
  const stepsAtMigration = steps();
  a.getDirtyLog(0, bitmap);
  pagesCopied.push(copyDirtyPages(a, 0, bitmap, b));

  // B continues.
  setWord(b, STOP_REQ, 0);
  for (let id = 0; id < VCPUS; id++) setWord(b, stateOf(id) + S_PARK_AT, 0);
  await b.run(spec);
  await until("the migrated run", () => allDone(b), b);
  await b.stop();
  const got = outcome(b);
  return {
    rounds: pagesCopied.length,
    pagesCopied,
    stepsAtMigration,
    totalSteps,
    sums: got.sums,
    same: JSON.stringify(got) === JSON.stringify(want),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const r = await migrate();
  console.log(JSON.stringify(r));
  if (!r.same) process.exitCode = 1;
}

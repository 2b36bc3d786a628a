/**
 * The runtime trace on real runs: each tracepoint appears, with exactly its declared fields, on a
 * run that must produce it; every file is well formed (checkTraceEvents).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { Vm } from "../../src/vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../../src/kvm_host.js";
import { DLG, DLG_VCPU, dlgCtlWords } from "../../src/workload/dirty_log_guest.js";
import { checkTraceEvents, memoryTraceSink, TraceEvent, TraceWriter } from "../../src/sync/trace_event.js";
import { TRACEPOINTS, type Tracepoint, type TracepointName } from "../../src/sync/tracepoints.js";
import { TraceTimeline } from "../../src/vm/trace.js";
import { migrateLocal } from "../../src/migration/local.js";
import { KvmError } from "../../src/errors.js";

const PAGES = 4096;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A timeline in memory: `trace(vm, name)` before the VM's vCPUs exist; `events()` closes it. */
function timeline(): { trace: (vm: Vm, name: string) => void; events: () => TraceEvent[] } {
  const m = memoryTraceSink();
  const tl = new TraceTimeline(new TraceWriter(m.sink));
  tl.start(20);
  return {
    trace: (vm, name) => {
      vm.enableTrace(1);
      tl.add(vm.traceSource(name)!);
    },
    events: () => {
      tl.close();
      const ev = (JSON.parse(m.text()) as { traceEvents: TraceEvent[] }).traceEvents;
      // Records lost to a full ring (a burst of faults at sample 1) leave the file well formed.
      assert.deepEqual(checkTraceEvents(ev), [], "well formed");
      return ev;
    },
  };
}

/** `name` appears (as an instant, a slice's B or a flow's end) with exactly its declared fields. */
function assertTracepoint(ev: TraceEvent[], name: TracepointName): void {
  const tp = TRACEPOINTS.find((t) => t.name === name) as Tracepoint;
  const ph = tp.kind === "slice" ? "B" : tp.kind === "i" ? "i" : "X";
  const hits = ev.filter((e) => e.name === name && e.ph === ph);
  assert.ok(hits.length > 0, `${name} appears (${ph})`);
  for (const e of hits.slice(0, 20)) {
    assert.deepEqual(Object.keys(e.args ?? {}), [...tp.fields], `${name}'s fields`);
    for (const f of tp.fields) assert.equal(typeof e.args![f], "number", `${name}.${f}`);
  }
  if (tp.kind === "slice") {
    const ends = ev.filter((e) => e.name === name && e.ph === "E");
    assert.ok(ends.length > 0, `${name} ends`);
    if (tp.endFields) assert.ok(ends.some((e) => Object.keys(e.args ?? {}).join() === tp.endFields!.join()));
  }
}

/** A VM of `pages` logged pages and two worker vCPUs writing them (memstress). */
async function running(
  wp: "tdp-mmu" | "locked",
  trace: (vm: Vm, n: string) => void,
  thp: boolean,
): Promise<{ vm: Vm; hva: number }> {
  const vm = Vm.create({ memory: 2 * PAGES * PAGE_SIZE, wp, maxVcpus: 2 });
  trace(vm, wp);
  const hva = vm.mmap(PAGES * PAGE_SIZE, { thp });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: 0,
    guestPhysAddr: 0,
    memorySize: PAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  for (let i = 0; i < 2; i++) vm.createVcpu(i);
  await vm.run((id) => ({
    kind: "memstress",
    baseGfn: (id * PAGES) / 2,
    pages: PAGES / 2,
    writePercent: 100,
    random: false,
    seed: 1,
  }));
  await vm.waitPasses(1, { timeoutMs: 60_000 });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: PAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  return { vm, hva };
}

test("tdp-mmu run: faults, pages, spte changes, splits, zaps, mmu_lock, GET, flushes to acks, NUMA scans", async () => {
  const t = timeline();
  const { vm, hva } = await running("tdp-mmu", t.trace, true);
  try {
    vm.setNumaBalancing({ scanPeriodMs: 20, scanBytes: 64 * PAGE_SIZE });
    for (let i = 0; i < 10; i++) {
      await sleep(30);
      vm.getDirtyLog(0);
    }
    // Logging off: the TDP MMU zaps the split tables to map huge pages again.
    vm.setUserMemoryRegion({
      slot: 0,
      flags: 0,
      guestPhysAddr: 0,
      memorySize: PAGES * PAGE_SIZE,
      userspaceAddr: hva,
    });
    await sleep(50);
  } finally {
    await vm.stop();
  }
  const ev = t.events();
  for (const n of [
    "kvm_mmu_spte_requested",
    "kvm_mmu_set_spte",
    "kvm_mmu_get_page",
    "kvm_tdp_mmu_spte_changed",
    "kvm_mmu_split_huge_page",
    "kvm_mmu_prepare_zap_page",
    "mmu_lock_read",
    "mmu_lock_write",
    "kvm_vm_ioctl_get_dirty_log",
    "kvm_flush_remote_tlbs",
    "tlb_flush_request",
    "tlb_flush_ack",
    "task_numa_work",
  ] as const)
    assertTracepoint(ev, n);
  const flows = ev.filter((e) => e.ph === "s" || e.ph === "f");
  assert.ok(
    flows.some((e) => e.ph === "f"),
    "a flush request's flow reaches a vCPU's ack",
  );
  const names = ev.filter((e) => e.name === "thread_name").map((e) => (e.args as { name: string }).name);
  assert.ok(
    names.includes("vcpu 0") && names.includes("vcpu 1") && names.includes("main (ioctls)"),
    names.join(),
  );
  assert.ok(ev.some((e) => e.ph === "C" && e.name === "guest writes/s"));
  assert.ok(ev.some((e) => e.ph === "C" && e.name === "faults/s"));
});

test("locked run with manual protect: fast_page_fault after KVM_CLEAR_DIRTY_LOG", async () => {
  const t = timeline();
  const vm = Vm.create({ memory: 2 * PAGES * PAGE_SIZE, wp: "locked", maxVcpus: 2 });
  t.trace(vm, "locked");
  vm.enableManualDirtyLogProtect(1);
  const hva = vm.mmap(PAGES * PAGE_SIZE, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: PAGES * PAGE_SIZE,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  await vm.run(() => ({
    kind: "memstress",
    baseGfn: 0,
    pages: PAGES,
    writePercent: 100,
    random: false,
    seed: 1,
  }));
  try {
    await vm.waitPasses(1, { timeoutMs: 60_000 });
    for (let i = 0; i < 5; i++) {
      const b = vm.getDirtyLog(0);
      vm.clearDirtyLog(0, 0, PAGES, b);
      await sleep(30);
    }
  } finally {
    await vm.stop();
  }
  const ev = t.events();
  for (const n of ["fast_page_fault", "kvm_vm_ioctl_clear_dirty_log", "kvm_vm_ioctl_get_dirty_log"] as const)
    assertTracepoint(ev, n);
  assert.ok(
    ev.some((e) => e.name === "fast_page_fault" && (e.args as { ret: number }).ret === 1),
    "one fixed",
  );
});

test("dirty ring run: pushes, a ring-full exit, the reset", async () => {
  const t = timeline();
  const vm = Vm.create({ memory: 16 << 20, wp: "lockless", maxVcpus: 1, maxSlotPages: 2048 });
  t.trace(vm, "lockless ring");
  vm.enableDirtyRing(256);
  const pages = 2048;
  vm.setUserMemoryRegion({
    slot: 1,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: pages * PAGE_SIZE,
    userspaceAddr: vm.mmap(pages * PAGE_SIZE, { thp: false }),
  });
  vm.createVcpu(0);
  const ctl = new Int32Array(new SharedArrayBuffer(dlgCtlWords(1) * 4));
  Atomics.store(ctl, DLG.iteration, 1);
  const full = vm.waitDirtyRingFull({ since: 0, timeoutMs: 20_000 });
  await vm.run(() => ({ kind: "dirty_log", ctl: ctl.buffer, baseGfn: 0, pages, seed: 3 }));
  try {
    assert.ok((await full) >= 1);
    assert.ok(Atomics.load(ctl, DLG_VCPU.writes(0)) > 0);
    vm.harvestDirtyRing(0);
    vm.resetDirtyRings();
  } finally {
    await vm.stop();
  }
  const ev = t.events();
  for (const n of [
    "kvm_dirty_ring_push",
    "kvm_dirty_ring_exit",
    "kvm_dirty_ring_reset",
    "kvm_vm_ioctl_reset_dirty_pages",
  ] as const)
    assertTracepoint(ev, n);
});

test("migration: the source's rounds and its switch-over", async () => {
  const t = timeline();
  const { source } = await migrateLocal({
    memoryBytes: 1 << 20,
    vcpus: 1,
    warmupMs: 50,
    destination: "inline",
    wp: "locked",
    minRounds: 2,
    downtimeLimitMs: 1000,
    onVm: t.trace,
  });
  assert.equal(source.status, "completed");
  const ev = t.events();
  for (const n of ["migration_round", "migration_switchover"] as const) assertTracepoint(ev, n);
  assert.ok(ev.filter((e) => e.name === "migration_round" && e.ph === "B").length >= 2);
});

test("enableTrace: after a vCPU exists EINVAL, twice EEXIST, a bad sample EINVAL; the VM unchanged", () => {
  const vm = Vm.create({ memory: 4 << 20, wp: "locked", maxVcpus: 1 });
  const err = (fn: () => void, code: string): void =>
    assert.throws(fn, (e: unknown) => e instanceof KvmError && e.code === code);
  err(() => vm.enableTrace(0), "EINVAL");
  err(() => vm.enableTrace(1.5), "EINVAL");
  assert.equal(vm.traceSource("x"), null, "a refused call leaves no trace");
  vm.enableTrace(2);
  err(() => vm.enableTrace(2), "EEXIST");
  const late = Vm.create({ memory: 4 << 20, wp: "locked", maxVcpus: 1 });
  late.createVcpu(0);
  err(() => late.enableTrace(1), "EINVAL");
  assert.equal(late.traceSource("x"), null);
});

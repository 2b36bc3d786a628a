import { afterEach, test } from "node:test";
import assert from "node:assert/strict";
import { once } from "node:events";
import { Worker } from "node:worker_threads";
import {
  CTL,
  EXITING_GUEST_MODE,
  IN_GUEST_MODE,
  Kvm,
  KVM_REQ_MMU_RELOAD,
  KVM_REQ_TLB_FLUSH,
  OUTSIDE_GUEST_MODE,
  READING_SHADOW_PAGE_TABLES,
  VCPU,
} from "../../src/kvm_host.js";
import {
  kvm_flush_remote_tlbs,
  kvm_make_request,
  make_all_cpus_request,
  VcpuState,
} from "../../src/kvm/requests.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";
import { KVM_MEM_LOG_DIRTY_PAGES, Vm } from "../../src/index.js";
import { ST } from "../../src/kvm_host.js";
import { makeKvm } from "../helpers/kvm.js";
import { FAKE_GFN, FAKE_PFN, FakeVcpuData, FakeVcpuWords } from "../workers/fake_vcpu.js";
import { vmKvm } from "../../src/vm/internal.js";

const mode = (kvm: Kvm, id: number): number => Atomics.load(kvm.vcpu, VCPU.mode(id));
const requests = (kvm: Kvm, id: number): number => Atomics.load(kvm.vcpu, VCPU.requests(id));

function kvmWithVcpus(n: number): Kvm {
  const kvm = makeKvm();
  Atomics.store(kvm.ctl, CTL.nr_vcpus, n);
  return kvm;
}

interface Fake {
  out: Int32Array;
  worker: Worker;
  exit: Promise<unknown[]>;
}

function fakeVcpu(kvm: Kvm, id: number, script: FakeVcpuData["script"], holdMs = 0, busyUs = 0): Fake {
  const out = new Int32Array(new SharedArrayBuffer(FakeVcpuWords.Count * 4));
  const data: FakeVcpuData = {
    shared: kvm.shared,
    id,
    out: out.buffer,
    script,
    holdMs,
    busyUs,
  };
  const worker = new Worker(new URL("../workers/fake_vcpu.js", import.meta.url), { workerData: data });
  worker.on("error", (e) => {
    throw e;
  });
  live.add(worker);
  return { out, worker, exit: once(worker, "exit") };
}

// A failed assertion while a fake vCPU waits (for "go", or in guest mode) must not keep the test
// process alive: every test's workers are terminated after it.
const live = new Set<Worker>();
afterEach(async () => {
  for (const w of live) await w.terminate();
  live.clear();
});

/** Waits (without blocking the event loop) until out[i] >= v. */
async function until(out: Int32Array, i: number, v: number, polls = 1000): Promise<void> {
  // Bounded by polls (each waits at most 20 ms for a change), not by reading a clock.
  for (let n = 0; ; n++) {
    const x = Atomics.load(out, i);
    if (x >= v) return;
    if (n > polls) throw new Error(`word ${i} stayed at ${x} over ${polls} polls, wanted ${v}`);
    const r = Atomics.waitAsync(out, i, x, 20);
    if (r.async) await r.value;
  }
}

test("requests: kvm_make_request sets bits without clearing others", () => {
  const kvm = kvmWithVcpus(2);
  kvm_make_request(kvm, 1, KVM_REQ_MMU_RELOAD);
  kvm_make_request(kvm, 1, KVM_REQ_TLB_FLUSH);
  assert.equal(requests(kvm, 1), KVM_REQ_MMU_RELOAD | KVM_REQ_TLB_FLUSH);
  assert.equal(requests(kvm, 0), 0);
});

test("requests: vCPUs outside guest mode are not waited for; they flush at their next entry", () => {
  const kvm = kvmWithVcpus(3);
  const vcpu = new Vcpu(kvm, 0, 4);
  vcpu.enterGuest();
  assert.equal(mode(kvm, 0), IN_GUEST_MODE);
  vcpu.tlb.fill(FAKE_GFN, FAKE_PFN, true);
  vcpu.exitGuest();
  assert.equal(mode(kvm, 0), OUTSIDE_GUEST_MODE);
  // vCPUs 1 and 2 never ran: OUTSIDE_GUEST_MODE too
  assert.equal(make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH), false, "nobody had to be kicked");
  kvm_flush_remote_tlbs(kvm);
  assert.equal(Atomics.load(kvm.ctl, CTL.remote_flushes), 1);
  for (const id of [0, 1, 2]) {
    assert.equal(requests(kvm, id), KVM_REQ_TLB_FLUSH, `vcpu ${id} has the request`);
    assert.equal(mode(kvm, id), OUTSIDE_GUEST_MODE, `vcpu ${id} was not kicked`);
  }
  assert.notEqual(vcpu.tlb.lookup(FAKE_GFN), -1, "nothing flushed yet: the vCPU is outside guest mode");
  vcpu.enterGuest();
  assert.equal(vcpu.tlb.lookup(FAKE_GFN), -1, "the entry is gone once the vCPU enters guest mode");
  assert.equal(vcpu.tlb.flushes, 1);
  assert.equal(requests(kvm, 0), 0, "the request was consumed");
  assert.equal(mode(kvm, 0), IN_GUEST_MODE);
});

test("requests: a vCPU thread sleeping outside guest mode does not hold up the flusher", async () => {
  const kvm = kvmWithVcpus(1);
  const f = fakeVcpu(kvm, 0, "outside");
  await until(f.out, FakeVcpuWords.Ready, 1);
  assert.equal(mode(kvm, 0), OUTSIDE_GUEST_MODE);
  // The worker is blocked in Atomics.wait: it could never acknowledge, and is not waited for.
  assert.equal(make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH), false, "returned without waiting");
  kvm_flush_remote_tlbs(kvm);
  Atomics.store(f.out, FakeVcpuWords.Go, 1);
  Atomics.notify(f.out, FakeVcpuWords.Go);
  await f.exit;
  assert.equal(f.out[FakeVcpuWords.Result], 0, "the vCPU's TLB entry did not survive its next entry");
  assert.equal(f.out[FakeVcpuWords.Flushes], 1);
});

test("requests: kvm_flush_remote_tlbs returns only after a vCPU in guest mode acknowledged", async () => {
  const kvm = kvmWithVcpus(2); // vCPU 1 never runs and must not be waited for
  const f = fakeVcpu(kvm, 0, "poll", 0, 200);
  try {
    await until(f.out, FakeVcpuWords.Ready, 1);
    const ROUNDS = 200;
    for (let r = 1; r <= ROUNDS; r++) {
      Atomics.store(f.out, FakeVcpuWords.ReqFill, r);
      await until(f.out, FakeVcpuWords.Filled, r);
      assert.equal(make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH), true, "the vCPU in guest mode was kicked");
      // the vCPU acknowledged: it is no longer in EXITING_GUEST_MODE
      assert.notEqual(mode(kvm, 0), EXITING_GUEST_MODE);
      Atomics.store(f.out, FakeVcpuWords.Done, r);
      await until(f.out, FakeVcpuWords.Missed, r);
    }
    // the same through kvm_flush_remote_tlbs
    for (let r = ROUNDS + 1; r <= ROUNDS + 10; r++) {
      Atomics.store(f.out, FakeVcpuWords.ReqFill, r);
      await until(f.out, FakeVcpuWords.Filled, r);
      kvm_flush_remote_tlbs(kvm);
      Atomics.store(f.out, FakeVcpuWords.Done, r);
      await until(f.out, FakeVcpuWords.Missed, r);
    }
    Atomics.store(f.out, FakeVcpuWords.Stop, 1);
    await f.exit;
    assert.equal(
      f.out[FakeVcpuWords.Violations],
      0,
      "a TLB use after the flush returned still hit the old entry",
    );
    assert.ok(f.out[FakeVcpuWords.Flushes] >= ROUNDS + 10, `${f.out[FakeVcpuWords.Flushes]} TLB flushes`);
    assert.equal(Atomics.load(kvm.ctl, CTL.remote_flushes), 10);
    assert.equal(mode(kvm, 1), OUTSIDE_GUEST_MODE);
  } finally {
    Atomics.store(f.out, FakeVcpuWords.Stop, 1);
    await f.worker.terminate();
  }
});

test("requests: a vCPU reading shadow page tables is waited for, not kicked", async () => {
  const kvm = kvmWithVcpus(1);
  const f = fakeVcpu(kvm, 0, "reading", 150);
  await until(f.out, FakeVcpuWords.Ready, 1);
  kvm_flush_remote_tlbs(kvm);
  // The worker records the mode it sees at the end of its walk, then leaves guest mode: the
  // flusher returning means it has seen the walk end.
  assert.equal(
    Atomics.load(f.out, FakeVcpuWords.Result),
    READING_SHADOW_PAGE_TABLES,
    "the flusher waited for the end of the walk, and the mode was left alone during it",
  );
  await f.exit;
  assert.equal(mode(kvm, 0), OUTSIDE_GUEST_MODE);
});

test("requests: a Dead vCPU left in guest mode does not hang the flusher", async () => {
  // already dead before the flush
  const kvm = kvmWithVcpus(2);
  for (const id of [0, 1]) {
    Atomics.store(kvm.vcpu, VCPU.mode(id), id === 0 ? IN_GUEST_MODE : READING_SHADOW_PAGE_TABLES);
    Atomics.store(kvm.vcpu, VCPU.state(id), VcpuState.Dead);
  }
  // Waited for, and returned (waiting for an acknowledgement would end in ETIMEDOUT).
  assert.equal(make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH), true);
  assert.equal(mode(kvm, 0), EXITING_GUEST_MODE, "it was kicked, but nobody acknowledged");

  // dies while the flusher waits for it
  const kvm2 = kvmWithVcpus(1);
  const f = fakeVcpu(kvm2, 0, "dies", 150);
  await until(f.out, FakeVcpuWords.Ready, 1);
  kvm_flush_remote_tlbs(kvm2); // returns (no ETIMEDOUT) once the vCPU is Dead
  // the mode never leaves IN/EXITING: only the vCPU's death lets the flusher go
  assert.equal(
    Atomics.load(kvm2.vcpu, VCPU.state(0)),
    VcpuState.Dead,
    "the flusher waited while it was alive",
  );
  await f.exit;
  assert.equal(f.out[FakeVcpuWords.Flushes], 0, "the dead vCPU never acknowledged");
  assert.equal(mode(kvm2, 0), EXITING_GUEST_MODE);
});

test("requests: a guest that only hits its TLB still acknowledges flushes, pause and stop", async () => {
  // No per-access countdown: the hit compares its tag with gfn + mode, so the kick alone must
  // send the next access to the safe point. The guest below never misses, stores or checkpoints.
  const vm = Vm.create({ memory: 8 << 20, wp: "lockless", maxVcpus: 1 });
  const hva = vm.mmap(4 << 20, { thp: false });
  vm.setUserMemoryRegion({
    slot: 0,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: 0,
    memorySize: 4 << 20,
    userspaceAddr: hva,
  });
  vm.createVcpu(0);
  try {
    const fixture = new URL("../guest/fixtures/hits_only.js", import.meta.url);
    await vm.run(() => ({ module: fixture, args: { page: 5 } }));
    await vm.waitPasses(1, { timeoutMs: 30_000 });
    await new Promise((r) => setTimeout(r, 50)); // now in its loop of hits
    const flushes0 = Atomics.load(vmKvm(vm).ctl, CTL.remote_flushes);
    for (let round = 0; round < 5; round++) {
      // The dirty page makes GET_DIRTY_LOG protect it and flush: the vCPU in guest mode is
      // kicked and waited for (ETIMEDOUT if it never acknowledged: the call throws).
      vm.getDirtyLog(0);
      await vm.pause();
      vm.resume();
    }
    assert.ok(Atomics.load(vmKvm(vm).ctl, CTL.remote_flushes) > flushes0, "the GETs flushed remotely");
    await vm.pause();
    const s = vmKvm(vm).vcpuStats;
    assert.ok(s[ST.flushes_handled(0)] >= 1, "the vCPU flushed its TLB");
    assert.ok(s[ST.tlb_miss(0)] < 100, `it missed only after flushes (${s[ST.tlb_miss(0)]} misses)`);
    vm.resume();
  } finally {
    await vm.stop();
  }
  assert.equal(vm.error, null);
});

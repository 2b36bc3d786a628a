/**
 * A fake vCPU for test/kvm/requests.test.ts: a real `Vcpu` on its own thread that, instead of
 * running a guest, does one of a few scripted things (see FakeVcpuData.script) and reports
 * through the `out` words (FakeVcpuWords).
 *
 * `node --test dist/test/` also runs this file by itself: outside a worker it does nothing.
 */
import { isMainThread, workerData } from "node:worker_threads";
import { Kvm, KvmShared, READING_SHADOW_PAGE_TABLES, VCPU } from "../../src/kvm_host.js";
import { VcpuState } from "../../src/kvm/requests.js";
import { Vcpu } from "../../src/vcpu/vcpu.js";

export interface FakeVcpuData {
  shared: KvmShared;
  id: number;
  out: SharedArrayBuffer;
  /**
   * poll:    in guest mode, polls safePoint() and uses its TLB in a loop (fill on request, then
   *          count uses that still hit after the main thread said a flush returned);
   * outside: fills its TLB, exits guest mode and sleeps until Go, then enters guest mode again;
   * reading: sits in READING_SHADOW_PAGE_TABLES for holdMs, then exits guest mode;
   * dies:    sits in guest mode for holdMs without polling, then becomes Dead (mode unchanged).
   */
  script: "poll" | "outside" | "reading" | "dies";
  holdMs: number;
  /** poll: microseconds between a safe point and the next TLB use. */
  busyUs: number;
}

export const FAKE_GFN = 77;
export const FAKE_PFN = 300;

export const enum FakeVcpuWords {
  Ready = 0,
  Stop = 1,
  /** poll: the main thread asks for a fill in round n. */
  ReqFill = 2,
  /** poll: the round of the last fill. */
  Filled = 3,
  /** poll: the last round whose kvm_flush_remote_tlbs has returned (main thread). */
  Done = 4,
  /** poll: the last round in which a TLB use after the flush missed. */
  Missed = 5,
  /** poll: TLB uses that still hit after the flush of their fill's round returned. */
  Violations = 6,
  Uses = 7,
  /** TLB flushes the vCPU performed (SoftTlb.flushes), at exit. */
  Flushes = 8,
  /** outside: go back into guest mode. */
  Go = 9,
  /** outside: 1 if the TLB entry survived re-entry, 0 if not; reading: the mode seen before exit. */
  Result = 10,
  Exited = 11,
  Count = 12,
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function busy(us: number): void {
  const t = performance.now() + us / 1000;
  while (performance.now() < t);
}

function main(d: FakeVcpuData): void {
  const kvm = new Kvm(d.shared);
  const out = new Int32Array(d.out);
  const vcpu = new Vcpu(kvm, d.id, 4);
  const id = d.id;
  const ready = (): void => {
    Atomics.store(out, FakeVcpuWords.Ready, 1);
    Atomics.notify(out, FakeVcpuWords.Ready);
  };
  Atomics.store(kvm.vcpu, VCPU.state(id), VcpuState.Running);
  switch (d.script) {
    case "poll": {
      vcpu.enterGuest();
      ready();
      let filled = 0;
      while (Atomics.load(out, FakeVcpuWords.Stop) === 0) {
        vcpu.safePoint();
        const req = Atomics.load(out, FakeVcpuWords.ReqFill);
        if (req > filled) {
          vcpu.tlb.fill(FAKE_GFN, FAKE_PFN, true);
          filled = req;
          Atomics.store(out, FakeVcpuWords.Filled, req);
          Atomics.notify(out, FakeVcpuWords.Filled);
        }
        busy(d.busyUs);
        const done = Atomics.load(out, FakeVcpuWords.Done);
        const hit = vcpu.tlb.lookup(FAKE_GFN) !== -1;
        Atomics.add(out, FakeVcpuWords.Uses, 1);
        if (filled > 0 && done >= filled) {
          if (hit) Atomics.add(out, FakeVcpuWords.Violations, 1);
          else if (Atomics.load(out, FakeVcpuWords.Missed) < filled) {
            Atomics.store(out, FakeVcpuWords.Missed, filled);
            Atomics.notify(out, FakeVcpuWords.Missed);
          }
        }
      }
      vcpu.exitGuest();
      break;
    }
    case "outside": {
      vcpu.enterGuest();
      vcpu.tlb.fill(FAKE_GFN, FAKE_PFN, true);
      vcpu.exitGuest();
      ready();
      while (Atomics.load(out, FakeVcpuWords.Go) === 0) Atomics.wait(out, FakeVcpuWords.Go, 0);
      vcpu.enterGuest();
      Atomics.store(out, FakeVcpuWords.Result, vcpu.tlb.lookup(FAKE_GFN) !== -1 ? 1 : 0);
      vcpu.exitGuest();
      break;
    }
    case "reading": {
      Atomics.store(kvm.vcpu, VCPU.mode(id), READING_SHADOW_PAGE_TABLES);
      ready();
      sleep(d.holdMs);
      Atomics.store(out, FakeVcpuWords.Result, Atomics.load(kvm.vcpu, VCPU.mode(id)));
      vcpu.exitGuest();
      break;
    }
    case "dies": {
      vcpu.enterGuest();
      ready();
      sleep(d.holdMs);
      // as vcpu_worker.ts would if the thread died without leaving guest mode
      Atomics.store(kvm.vcpu, VCPU.state(id), VcpuState.Dead);
      Atomics.notify(kvm.vcpu, VCPU.state(id));
      Atomics.store(out, FakeVcpuWords.Flushes, vcpu.tlb.flushes);
      Atomics.store(out, FakeVcpuWords.Exited, 1);
      return;
    }
  }
  Atomics.store(out, FakeVcpuWords.Flushes, vcpu.tlb.flushes);
  Atomics.store(kvm.vcpu, VCPU.state(id), VcpuState.Stopped);
  Atomics.store(out, FakeVcpuWords.Exited, 1);
}

if (!isMainThread) main(workerData as FakeVcpuData);

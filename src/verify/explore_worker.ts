/**
 * A thread of a controlled run. It waits for the controller to start a run, attaches to that
 * run's VM (posted for every run: the worker keeps nothing from one run to the next), installs
 * the controlled hook and runs its part of the scenario: production MMU code, stepped by the
 * controller in runs of shared-memory operations.
 */
import { MessagePort, receiveMessageOnPort, workerData } from "node:worker_threads";
import { Kvm, KvmShared } from "../kvm_host.js";
import { kvm_load_design } from "../mmu/design.js";
import {
  finishControlled,
  installControlledHook,
  SCHED,
  SCHED_T,
  SchedAbort,
  TS_ABORTED,
  TS_DONE,
  TS_FAILED,
  handOffWait,
} from "../sync/sched.js";
import { Scenario, SCENARIOS } from "./scenarios.js";
import { programScenario } from "./program.js";
import { kfunc_record } from "../sync/kfunc.js";
import { ThreadRecorder } from "./explore_record.js";

interface Data {
  sc: SharedArrayBuffer;
  tid: number;
  port: MessagePort;
}

interface RunMsg {
  shared: KvmShared;
  scenario: string;
  /** Set for generated programs: the threads are rebuilt from it. */
  program?: unknown;
  scratch: SharedArrayBuffer;
}

const d = workerData as Data;
const sc = new Int32Array(d.sc);
let go = 0;
/** The VM of the last message: the controller sends one only when the VM changes. */
let vm: RunMsg | null = null;
/** The scenario of `vm` (a generated one is rebuilt once per message). */
let scenario: Scenario | null = null;
for (;;) {
  handOffWait(sc, SCHED.go, go);
  go = Atomics.load(sc, SCHED.go);
  if (go < 0) break;
  // The run has fewer threads than the crew has workers: sit it out.
  if (Atomics.load(sc, SCHED_T.run(d.tid)) !== go) continue;
  const msg = receiveMessageOnPort(d.port)?.message as RunMsg | undefined;
  if (msg) {
    // A design a test or a library caller registered: its module, before the first Kvm.
    await kvm_load_design(msg.shared);
    vm = msg;
    scenario = msg.program !== undefined ? programScenario(msg.program) : SCENARIOS[msg.scenario];
  }
  if (!vm || !scenario) throw new Error("explore worker: no VM to run on");
  const m = vm;
  // A new Kvm for every run: nothing one run leaves in the thread's own objects reaches the next.
  const kvm = new Kvm(m.shared);
  const scratch = new Int32Array(m.scratch);
  let state = TS_DONE;
  // A traced run: this thread's kernel function stack, and its steps, recorded as it takes them.
  const traced = Atomics.load(sc, SCHED.trace) !== 0;
  kfunc_record(traced ? sc : null, SCHED_T.kstack(d.tid));
  const rec = traced ? new ThreadRecorder(sc, d.tid, kvm, scratch) : null;
  installControlledHook(
    sc,
    d.tid,
    [
      m.shared.spt,
      m.shared.rmapPool,
      m.shared.desc,
      m.shared.bitmapPool,
      m.shared.vcpu,
      m.shared.ctl,
      m.shared.mem,
      m.shared.hpt,
      m.shared.spHdr,
      m.shared.dirtyRing,
    ],
    rec,
  );
  try {
    scenario.threads[d.tid].run(kvm, scratch);
  } catch (e) {
    if (e instanceof SchedAbort) state = TS_ABORTED;
    else {
      state = TS_FAILED;
      d.port.postMessage({ error: (e as Error).message });
    }
  }
  if (rec !== null) {
    // The last step ends here; the steps reach the controller before the thread hands back.
    rec.point();
    d.port.postMessage({ recorded: rec.steps });
  }
  finishControlled(sc, d.tid, state);
}

/**
 * A thread of a controlled run. It waits for the controller to start a run, attaches to that
 * run's VM, installs the controlled hook and runs its part of the scenario: production MMU
 * code, stepped one shared-memory operation at a time by the controller.
 */
import { MessagePort, receiveMessageOnPort, workerData } from "node:worker_threads";
import { Kvm, KvmShared } from "../kvm_host.js";
import {
  finishControlled,
  installControlledHook,
  SCHED,
  SchedAbort,
  TS_ABORTED,
  TS_DONE,
  TS_FAILED,
  waitChange,
} from "../sync/sched.js";
import { SCENARIOS } from "./scenarios.js";

interface Data {
  sc: SharedArrayBuffer;
  tid: number;
  port: MessagePort;
}

interface RunMsg {
  shared: KvmShared;
  scenario: string;
  scratch: SharedArrayBuffer;
}

const d = workerData as Data;
const sc = new Int32Array(d.sc);
let go = 0;
for (;;) {
  waitChange(sc, SCHED.go, go);
  go = Atomics.load(sc, SCHED.go);
  if (go < 0) break;
  const m = receiveMessageOnPort(d.port)?.message as RunMsg | undefined;
  if (!m) throw new Error("explore worker: no run message");
  const kvm = new Kvm(m.shared);
  const scenario = SCENARIOS[m.scenario];
  const scratch = new Int32Array(m.scratch);
  let state = TS_DONE;
  installControlledHook(sc, d.tid, [
    m.shared.spt,
    m.shared.rmapPool,
    m.shared.desc,
    m.shared.bitmapPool,
    m.shared.vcpu,
    m.shared.ctl,
    m.shared.mem,
    m.shared.hpt,
    m.shared.spHdr,
  ]);
  try {
    scenario.threads[d.tid].run(kvm, scratch);
  } catch (e) {
    if (e instanceof SchedAbort) state = TS_ABORTED;
    else {
      state = TS_FAILED;
      d.port.postMessage({ error: (e as Error).message });
    }
  }
  finishControlled(sc, d.tid, state);
}

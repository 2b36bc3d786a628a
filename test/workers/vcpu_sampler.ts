/**
 * Worker for test/migration/converge.test.ts: samples a migrating guest's vCPU every `everyMs`
 * while `ctl[ACTIVE]` is 1: the throttle it is under and whether it is halted (outside guest
 * mode). Counts go to `ctl` (see SAMPLER), so the main thread, busy with the migration stream,
 * does not have to run a timer: on a loaded machine its timers fired too seldom to sample the
 * short unthrottled phase. Outside a worker this file does nothing.
 */
import { isMainThread, workerData } from "node:worker_threads";

/** Words of the sampler's control array. */
export const SAMPLER = {
  /** 1 while the migration is active (the main thread sets it). */
  ACTIVE: 0,
  /** 1: stop sampling and exit. */
  STOP: 1,
  /** Samples with throttle 0, and how many of them found the vCPU halted. */
  FREE: 2,
  FREE_HALTED: 3,
  /** Samples with throttle >= HARD_PCT, and how many of them found the vCPU halted. */
  HARD: 4,
  HARD_HALTED: 5,
  /** Samples at any throttle in between. */
  OTHER: 6,
  WORDS: 7,
} as const;
export const HARD_PCT = 50;

export interface SamplerData {
  /** Int32 words, SAMPLER. */
  ctl: SharedArrayBuffer;
  /** The guest's control words and the index of its throttle word. */
  guestCtl: SharedArrayBuffer;
  throttleIndex: number;
  /** kvm.vcpu's buffer, the index of vCPU 0's mode word and the mode that means halted. */
  vcpu: SharedArrayBuffer;
  modeIndex: number;
  outsideMode: number;
  everyMs: number;
}

function sample(d: SamplerData): void {
  const c = new Int32Array(d.ctl);
  const g = new Int32Array(d.guestCtl);
  const v = new Int32Array(d.vcpu);
  while (Atomics.load(c, SAMPLER.STOP) === 0) {
    Atomics.wait(c, SAMPLER.STOP, 0, d.everyMs);
    if (Atomics.load(c, SAMPLER.ACTIVE) !== 1) continue;
    const throttle = Atomics.load(g, d.throttleIndex);
    const halted = Atomics.load(v, d.modeIndex) === d.outsideMode ? 1 : 0;
    if (throttle === 0) {
      Atomics.add(c, SAMPLER.FREE, 1);
      Atomics.add(c, SAMPLER.FREE_HALTED, halted);
    } else if (throttle >= HARD_PCT) {
      Atomics.add(c, SAMPLER.HARD, 1);
      Atomics.add(c, SAMPLER.HARD_HALTED, halted);
    } else Atomics.add(c, SAMPLER.OTHER, 1);
  }
}

if (!isMainThread) sample(workerData as SamplerData);

/**
 * Auto-converge's CPU throttle, as QEMU's: when the guest dirtied more than half of what was
 * sent in a sync period, twice in a row (migration_trigger_throttle), the guest is slowed down
 * (mig_throttle_guest_down): 20% at first, 10% more each time, at most 99%. The guest reads the
 * percentage from its control words and sleeps that share of its time.
 */
import { MIG_CTL } from "./guest.js";

/** QEMU's cpu-throttle-initial, cpu-throttle-increment and the most it allows. */
export const CPU_THROTTLE_INITIAL = 20;
export const CPU_THROTTLE_INCREMENT = 10;
export const CPU_THROTTLE_MAX = 99;
/** Periods in a row over the threshold before a step (QEMU's dirty_rate_high_cnt >= 2). */
const HIGH_PERIODS = 2;

export class CpuThrottle {
  private dirtyRateHighCnt = 0;

  /** `ctl`: the guest's control words (MIG_CTL); the throttle word is written with Atomics. */
  constructor(private readonly ctl: Int32Array) {}

  get percentage(): number {
    return Atomics.load(this.ctl, MIG_CTL.throttle);
  }

  /** After a sync: the bytes the guest dirtied in the period and the bytes sent in it. */
  trigger(dirtiedBytes: number, sentBytes: number): void {
    if (this.triggered(dirtiedBytes, sentBytes)) this.guestDown();
  }

  /**
   * migration_trigger_throttle's test alone: true when the guest dirtied more than half of what
   * was sent, the second period in a row (then the count starts over). dirty-limit uses it too.
   */
  triggered(dirtiedBytes: number, sentBytes: number): boolean {
    if (dirtiedBytes > sentBytes / 2) this.dirtyRateHighCnt++;
    else this.dirtyRateHighCnt = 0;
    if (this.dirtyRateHighCnt < HIGH_PERIODS) return false;
    this.dirtyRateHighCnt = 0;
    return true;
  }

  /** mig_throttle_guest_down: one step up. */
  guestDown(): void {
    const cur = this.percentage;
    const next = cur === 0 ? CPU_THROTTLE_INITIAL : Math.min(CPU_THROTTLE_MAX, cur + CPU_THROTTLE_INCREMENT);
    Atomics.store(this.ctl, MIG_CTL.throttle, next);
  }

  /** cpu_throttle_stop: the guest runs at full speed again. */
  stop(): void {
    Atomics.store(this.ctl, MIG_CTL.throttle, 0);
  }

  /** Wakes a guest asleep in its throttle slice (it then sees a pause request at once). */
  wake(): void {
    Atomics.notify(this.ctl, MIG_CTL.sleep);
  }
}

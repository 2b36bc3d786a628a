/**
 * The outgoing stream's rate limit, as QEMU's migration_rate_limit: bytes are counted in time
 * slices (BUFFER_DELAY, 100 ms); once a slice's bytes exceed what the rate allows for the time
 * spent in it, the sender waits. The same slices measure the link's bandwidth, which the
 * switch-over decision uses. The clock is a parameter so tests control time.
 */

export interface MigrationClock {
  /** Milliseconds, monotonic. */
  now(): number;
  sleep(ms: number): Promise<void>;
}

export const realClock: MigrationClock = {
  now: () => performance.now(),
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
};

/** QEMU's BUFFER_DELAY: the slice over which bytes are counted and bandwidth is measured. */
export const BUFFER_DELAY_MS = 100;

export class RateLimiter {
  private sliceStart: number;
  private sliceBytes = 0;
  /** Bytes per ms over the last full slice; 0 before one has ended. */
  bandwidth = 0;
  /** Off for the completion stage (QEMU does not rate-limit it: the guest is stopped). */
  enabled = true;

  /** `maxBandwidth` in bytes per second; 0: no limit (bandwidth is still measured). */
  constructor(
    readonly maxBandwidth: number,
    private readonly clock: MigrationClock = realClock,
  ) {
    this.sliceStart = clock.now();
  }

  /**
   * Counts `n` bytes just written; waits until the slice's bytes fit the rate. A write bigger
   * than a slice's share spreads over several slices (waits under 1 ms add up to the next one).
   */
  async account(n: number): Promise<void> {
    this.sliceBytes += n;
    let now = this.clock.now();
    if (this.maxBandwidth > 0 && this.enabled) {
      const due = this.sliceStart + (this.sliceBytes * 1000) / this.maxBandwidth;
      if (due - now >= 1) {
        await this.clock.sleep(due - now);
        now = this.clock.now();
      }
    }
    if (now - this.sliceStart >= BUFFER_DELAY_MS) {
      this.bandwidth = this.sliceBytes / (now - this.sliceStart);
      this.sliceStart = now;
      this.sliceBytes = 0;
    }
  }
}

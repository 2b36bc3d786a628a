/**
 * dirty-limit, as QEMU's (system/dirtylimit.c; the migration capability `dirty-limit` with
 * `vcpu-dirty-limit`): a per-vCPU quota of dirty MB/s, measured through the dirty ring and held
 * by making each vCPU sleep in its ring-full exit (vm.setDirtyRingThrottle). Where auto-converge
 * (throttle.ts) slows every vCPU by the same share of time, dirty-limit slows a vCPU only for the
 * pages it dirties: a vCPU that reads, or dirties little, never fills its ring and never sleeps.
 *
 * Here the owner thread does what QEMU's vCPU threads and its dirtyrate-stat thread do: at each
 * ring-full exit it reaps the rings (so the vCPU can go on, into its sleep), and every period it
 * reaps again, measures each vCPU's dirty rate from the entries reaped and adjusts its sleep
 * (dirtylimit_set_throttle). "MB" is QEMU's: 2^20 bytes, rates in whole MB/s.
 */
import { PAGE_SIZE } from "../kvm_host.js";
import { einval } from "../errors.js";
import type { GuestVm } from "./guest_vm.js";
import type { DirtyRingLog } from "./log_sync.js";

/** The controller stops adjusting when the rate is this close to the quota (MB/s). */
export const DIRTYLIMIT_TOLERANCE_RANGE = 25;
/** An error above this percentage of the larger rate steps the sleep linearly, else by 1/10. */
export const DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT = 50;
/** The sleep is at most this share of a ring-full-and-sleep cycle. */
export const DIRTYLIMIT_THROTTLE_PCT_MAX = 99;
/** QEMU's vcpu-dirty-limit-period default: ms between two measurements. */
export const DEFAULT_DIRTY_LIMIT_PERIOD_MS = 1000;
/** How often the owner looks for a ring-full exit to reap (ms): bounds the stop's wait too. */
const POLL_MS = 10;

/** dirtylimit_done: the rate is within the tolerance of the quota. */
export function dirtylimit_done(quota: number, current: number): boolean {
  return Math.abs(quota - current) <= DIRTYLIMIT_TOLERANCE_RANGE;
}

/** dirtylimit_need_linear_adjustment: the error is over 50% of the larger of the two. */
export function dirtylimit_need_linear_adjustment(quota: number, current: number): boolean {
  const max = Math.max(quota, current);
  return max > 0 && Math.floor((Math.abs(quota - current) * 100) / max) > DIRTYLIMIT_LINEAR_ADJUSTMENT_PCT;
}

/**
 * dirtylimit_dirty_ring_full_time: us a vCPU dirtying at `maxRate` MB/s takes to fill a ring of
 * `ringMiB` (QEMU divides by the highest rate seen so far: the caller passes that).
 */
export function dirtylimit_dirty_ring_full_time(ringMiB: number, maxRate: number): number {
  return maxRate > 0 ? Math.floor((ringMiB * 1_000_000) / maxRate) : 0;
}

/**
 * dirtylimit_set_throttle: the next sleep per ring-full exit (us) of a vCPU sleeping
 * `throttleUs`, with quota and current rate in MB/s, steps measured in ring-full times: over
 * 50% off, a step of ringFull * pct / (100 - pct), pct the error's share of the larger rate;
 * otherwise ringFull / 10; then clamped to 0..99 ring-full times.
 */
export function dirtylimit_set_throttle(
  throttleUs: number,
  quota: number,
  current: number,
  ringFullUs: number,
): number {
  if (current === 0) return 0;
  let t = throttleUs;
  if (dirtylimit_need_linear_adjustment(quota, current)) {
    const pct =
      quota < current
        ? Math.floor(((current - quota) * 100) / current)
        : Math.floor(((quota - current) * 100) / quota);
    const step = Math.floor((ringFullUs * pct) / (100 - pct));
    t += quota < current ? step : -step;
  } else t += (quota < current ? 1 : -1) * Math.floor(ringFullUs / 10);
  return Math.max(0, Math.min(t, ringFullUs * DIRTYLIMIT_THROTTLE_PCT_MAX));
}

/** Whole MB/s (QEMU's do_calculate_dirtyrate: MB floored, then per second). */
export function dirtyRateMBps(pages: number, ms: number): number {
  return ms > 0 ? Math.floor((Math.floor((pages * PAGE_SIZE) / 2 ** 20) * 1000) / ms) : 0;
}

export interface DirtyLimitOptions {
  /** Quota per vCPU, MB/s (QEMU's vcpu-dirty-limit; >= 1). */
  quotaMBps: number;
  /** ms between two measurements (QEMU's x-vcpu-dirty-limit-period, default 1000). */
  periodMs?: number;
}

/** Checks dirty-limit's options (EINVAL naming the option). */
export function checkDirtyLimit(quotaMBps: number | undefined, periodMs: number | undefined): void {
  if (typeof quotaMBps !== "number" || !Number.isSafeInteger(quotaMBps) || quotaMBps < 1)
    throw einval("dirtyLimit", `must be an integer >= 1 (MB/s), got ${String(quotaMBps)}`);
  if (
    periodMs !== undefined &&
    (typeof periodMs !== "number" || !Number.isSafeInteger(periodMs) || periodMs < 1)
  )
    throw einval("dirtyLimitPeriodMs", `must be an integer >= 1, got ${String(periodMs)}`);
}

/**
 * One VM's ring reaper and dirty limit. run(): from now on each ring-full exit is reaped at once
 * (as QEMU's vCPU threads do), instead of waiting for the next sync. start(): the limit itself
 * (the migration's trigger), if a quota was given. stop(): both end, no vCPU sleeps.
 */
export class DirtyLimit {
  /** MB/s per vCPU; 0: reap only, never limit. */
  readonly quota: number;
  readonly periodMs: number;
  /** Per vCPU: the sleep per ring-full exit (us) and the last measured rate (MB/s). Owner only. */
  readonly throttleUs: number[];
  readonly rates: number[];
  /** Ring-full exits reaped, and measurements made. */
  reaps = 0;
  periods = 0;
  private maxRate = 0;
  private running: Promise<void> | null = null;
  private stopped = false;
  private limiting = false;
  /** A failure of the loop (the VM failed): the migration reports it. */
  error: Error | null = null;

  constructor(
    private readonly g: GuestVm,
    private readonly ring: DirtyRingLog,
    o: DirtyLimitOptions | null,
  ) {
    if (o) checkDirtyLimit(o.quotaMBps, o.periodMs);
    this.quota = o?.quotaMBps ?? 0;
    this.periodMs = o?.periodMs ?? DEFAULT_DIRTY_LIMIT_PERIOD_MS;
    this.throttleUs = new Array<number>(g.layout.vcpus).fill(0);
    this.rates = new Array<number>(g.layout.vcpus).fill(0);
  }

  /** stop() was called. */
  get ended(): boolean {
    return this.stopped;
  }

  /** The limit runs (started, not stopped). */
  get active(): boolean {
    return this.limiting && !this.stopped;
  }

  /** The ring's size in MiB (QEMU's qemu_target_pages_to_MiB(kvm_dirty_ring_size())). */
  private get ringMiB(): number {
    return (this.ring.ringEntries * PAGE_SIZE) / 2 ** 20;
  }

  /** QEMU's dirtylimit_throttle_time_per_round: the longest sleep per ring-full of any vCPU (us). */
  get throttleTimePerRound(): number {
    return Math.max(0, ...this.throttleUs);
  }

  /** QEMU's dirtylimit_ring_full_time: the ring-full time at the vCPUs' mean rate (us). */
  get ringFullTime(): number {
    const mean = this.rates.reduce((a, b) => a + b, 0) / this.rates.length;
    return mean > 0 ? dirtylimit_dirty_ring_full_time(this.ringMiB, Math.max(this.maxRate, mean)) : 0;
  }

  /** Reaps each ring-full exit from now on (the vCPU goes on without waiting for a sync). */
  run(): void {
    if (this.running || this.stopped) return;
    this.running = this.loop().catch((e: unknown) => {
      this.error = e instanceof Error ? e : new Error(String(e));
    });
  }

  /** qmp_set_vcpu_dirty_limit for every vCPU: measures each period and adjusts the sleeps. */
  start(): void {
    if (this.quota === 0 || this.stopped) return;
    this.limiting = true;
    this.run();
  }

  /** qmp_cancel_vcpu_dirty_limit: every vCPU back to no sleep; resolves once the loop is over. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    await this.running;
    for (let v = 0; v < this.throttleUs.length; v++) this.setThrottle(v, 0);
  }

  private setThrottle(v: number, us: number): void {
    this.throttleUs[v] = us;
    this.g.vm.setDirtyRingThrottle(v, Math.round(us));
  }

  private async loop(): Promise<void> {
    const vm = this.g.vm;
    let seen = vm.dirtyRingStats().fullExits;
    let t0 = 0;
    let base: number[] = [];
    while (!this.stopped) {
      const n = await vm.waitDirtyRingFull({ since: seen, timeoutMs: POLL_MS });
      if (this.stopped) break;
      if (n > seen) {
        // The ring-full exit's reap (kvm_dirty_ring_reap): the vCPU goes on, into its sleep.
        seen = n;
        this.ring.reap(this.g);
        this.reaps++;
      }
      if (!this.limiting) continue;
      const now = performance.now();
      if (t0 === 0) {
        // The limit's first period starts here.
        this.ring.reap(this.g);
        base = Array.from(this.ring.dirtyPages.subarray(0, this.rates.length));
        t0 = now;
        continue;
      }
      if (now - t0 < this.periodMs) continue;
      // vcpu_dirty_rate_stat_collect, then dirtylimit_process.
      this.ring.reap(this.g);
      const pages = Array.from(this.ring.dirtyPages.subarray(0, this.rates.length));
      for (let v = 0; v < this.rates.length; v++) this.rates[v] = dirtyRateMBps(pages[v] - base[v], now - t0);
      this.adjust();
      base = pages;
      t0 = now;
      this.periods++;
    }
  }

  /** dirtylimit_process: each vCPU off its quota by more than the tolerance gets a new sleep. */
  private adjust(): void {
    for (let v = 0; v < this.rates.length; v++) {
      const current = this.rates[v];
      if (current > this.maxRate) this.maxRate = current;
      if (dirtylimit_done(this.quota, current)) continue;
      const full = dirtylimit_dirty_ring_full_time(this.ringMiB, this.maxRate);
      this.setThrottle(v, dirtylimit_set_throttle(this.throttleUs[v], this.quota, current, full));
    }
  }
}

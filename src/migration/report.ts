/** What a migration reports: per round as QEMU's query-migrate, and at the end on each side. */
import type { MigrationOutcome } from "./state.js";
import type { PostcopyStats } from "./postcopy.js";

/** One round, shaped like QEMU's query-migrate (MigrationStats plus the timing fields). */
export interface RoundRecord {
  round: number;
  "time-ms": number;
  transferred: number;
  remaining: number;
  total: number;
  duplicate: number;
  normal: number;
  "normal-bytes": number;
  "dirty-pages-rate": number;
  mbps: number;
  "dirty-sync-count": number;
  "expected-downtime": number;
  "cpu-throttle-percentage": number;
  /** dirty-limit only (QEMU's names): the longest sleep per ring-full exit, and the ring-full time (us). */
  "dirty-limit-throttle-time-per-round"?: number;
  "dirty-limit-ring-full-time"?: number;
}

/** What dirty-limit did in a migration (dirtylimit.ts). */
export interface DirtyLimitReport {
  /** The quota per vCPU, MB/s (QEMU's vcpu-dirty-limit). */
  "vcpu-dirty-limit": number;
  periodMs: number;
  /** The trigger fired (the guest dirtied faster than the link sent): the limit ran. */
  started: boolean;
  /** Per vCPU at the stop: the sleep per ring-full exit (us) and the last measured rate (MB/s). */
  throttleUsPerFull: number[];
  rates: number[];
  /** Reaps made at a ring-full exit, and measurements (periods) made. */
  ringFullReaps: number;
  periods: number;
}

/** Where the stop went: pause, final sync, final send, destination load, verify, release. */
export interface SwitchoverTimes {
  /** Parking the source's vCPUs. */
  pauseMs: number;
  /** The last dirty-log sync (with the vCPUs parked). */
  syncMs: number;
  /** Writing the last pages, the vCPU state and EOF. */
  sendMs: number;
  /** EOF written to the destination's page hashes received, less its hashing. */
  loadMs: number;
  /** "go" written to "running" received: the destination releases its started vCPUs. */
  startMs: number;
  /** Guest stopped to running on the destination, verification included (downtimeMs + verifyMs). */
  stopMs: number;
}

export interface MigrationReport {
  status: MigrationOutcome;
  mode: "precopy" | "postcopy";
  logMode: string;
  rounds: RoundRecord[];
  /** Source vCPU stop to guest running on the destination, verification left out (QEMU's). */
  downtimeMs: number;
  /** The expected downtime of the round that decided the switch-over (0 before it). */
  expectedDowntimeMs: number;
  /** Page-hash verification: the destination's hashing plus the source's hashing and compare. */
  verifyMs: number;
  switchover?: SwitchoverTimes;
  /** Guest increments per second (all vCPUs) from the start of the migration to the stop. */
  guestRate: number;
  setupTimeMs: number;
  totalTimeMs: number;
  transferredBytes: number;
  throttlePercentage: number;
  verify: { pagesCompared: number; mismatches: number; guestInvariant: boolean | null; problems: string[] };
  /** The guest's increment counts at switch-over (the work it had done). */
  countsAtSwitchover?: number[];
  /**
   * The source gave the guest away ("go" or postcopy-run was sent): whatever the status, the
   * source must not run it again (two running copies would diverge). False: it runs on here.
   */
  switchedOver: boolean;
  /** Post-copy failed after postcopy-run: neither side holds the whole guest (the source stays paused). */
  guestLost?: boolean;
  /** Post-copy only: blocktime and requests (QEMU's names). */
  postcopy?: PostcopyStats;
  /** With dirtyLimit: what the limit did. */
  dirtyLimit?: DirtyLimitReport;
  /** multifd: the channels (absent with the main stream only), and the bytes each carried. */
  channels?: number;
  channelBytes?: number[];
  /** What failed: its code, and its message led by the code once (MigrationError.report). */
  error?: { code: string; message: string };
}

export interface DestinationReport {
  status: MigrationOutcome;
  sections: number;
  pagesApplied: number;
  receivedBytes: number;
  /** Hashing the loaded pages for the source's check (before the vCPUs are released). */
  hashMs: number;
  guestInvariant: boolean | null;
  problems: string[];
  /** Post-copy only: pages that arrived after the guest started here, and the vCPUs' waits. */
  postcopy?: {
    discardedPages: number;
    pagesPlaced: number;
    requests: number;
    vcpus: { id: number; blockedMs: number; maxBlockedMs: number; faults: number }[];
    /** Links dropped and recovered (postcopy-paused, then resumed), and the time paused (ms). */
    recoveries: number;
    pausedMs: number;
  };
  /** multifd: the channels, and the pages they applied (in pagesApplied too). */
  channels?: number;
  channelPages?: number;
  /** What failed: its code, and its message led by the code once (MigrationError.report). */
  error?: { code: string; message: string };
}

/**
 * The migration's state, as QEMU's MigrationStatus names it, with the transitions QEMU makes
 * (migrate_set_state): a transition not in the table is a bug in the caller and throws.
 *
 *   none -> setup -> active -> device ----------> completed
 *                       |  \-> postcopy-active -> completed
 *                       |        ^          \-> postcopy-paused -> postcopy-recover
 *                       |        \---------------------------------------/   (or back to paused)
 *                       \-> cancelling -> cancelled
 *   and failed from any state that is not final.
 *
 * "device" is QEMU's completion stage: the guest is stopped and the last pages and the device
 * (vCPU) state go over. "postcopy-paused": the link dropped during post-copy, both sides wait
 * for a new connection (the destination's vCPUs on their missing pages, the source with its
 * pages); "postcopy-recover": the new connection's handshake (recover.ts). The destination uses
 * the same states (QEMU's incoming side does too).
 */

export const MIGRATION_STATUSES = [
  "none",
  "setup",
  "cancelling",
  "cancelled",
  "active",
  "postcopy-active",
  "completed",
  "failed",
  "device",
  "postcopy-paused",
  "postcopy-recover",
] as const;
export type MigrationStatus = (typeof MIGRATION_STATUSES)[number];

/** The final states: what a report's status says. */
export type MigrationOutcome = Extract<MigrationStatus, "completed" | "failed" | "cancelled">;

const NEXT: Record<MigrationStatus, readonly MigrationStatus[]> = {
  none: ["setup", "failed"],
  setup: ["active", "cancelling", "failed"],
  active: ["device", "postcopy-active", "cancelling", "failed"],
  device: ["completed", "failed"],
  "postcopy-active": ["completed", "failed", "postcopy-paused"],
  "postcopy-paused": ["postcopy-recover", "failed"],
  "postcopy-recover": ["postcopy-active", "postcopy-paused", "failed"],
  cancelling: ["cancelled", "failed"],
  completed: [],
  failed: [],
  cancelled: [],
};

/** A transition the table does not allow: a bug in the code driving the migration. */
export class MigrationStateError extends Error {
  constructor(
    readonly from: MigrationStatus,
    readonly to: MigrationStatus,
  ) {
    super(`illegal migration state transition ${from} -> ${to}`);
    this.name = "MigrationStateError";
  }
}

export class MigrationState {
  private cur: MigrationStatus = "none";
  /** Every state entered, "none" first. */
  readonly history: MigrationStatus[] = ["none"];

  /** Called after each transition (e.g. the fault injector arms itself on "device"). */
  constructor(private readonly onChange?: (to: MigrationStatus, from: MigrationStatus) => void) {}

  get status(): MigrationStatus {
    return this.cur;
  }

  get final(): boolean {
    return NEXT[this.cur].length === 0;
  }

  /** migrate_set_state: moves to `to`; throws MigrationStateError if the table does not allow it. */
  set(to: MigrationStatus): void {
    const from = this.cur;
    if (!NEXT[from].includes(to)) throw new MigrationStateError(from, to);
    this.cur = to;
    this.history.push(to);
    this.onChange?.(to, from);
  }

  /** The outcome once final; throws before (a report must not be read before the end). */
  outcome(): MigrationOutcome {
    if (!this.final) throw new MigrationStateError(this.cur, this.cur);
    return this.cur as MigrationOutcome;
  }
}

/** Whether `from -> to` is a transition the table allows. */
export function isLegalTransition(from: MigrationStatus, to: MigrationStatus): boolean {
  return NEXT[from].includes(to);
}

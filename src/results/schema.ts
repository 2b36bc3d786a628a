/**
 * The one schema of every saved result (`--output FILE`), written once here with TypeBox: the
 * JSON Schema published as schema/kvmmu-result.schema.json is generated from these definitions
 * (npm run schema), and every file `compare` and `report` read is checked against them.
 *
 * A document is the envelope (schemaVersion, command, options, gitCommit, machine, timestamp)
 * plus `results`, whose shape depends on `command`. Objects accept extra properties, so a
 * command may add fields without a new schema version; removing or retyping one needs one.
 */
import { Type, type Static, type TSchema } from "@sinclair/typebox";
import { doc, Int, Machine, Mode, NsStats, Num, NumOrNull, Ratio, Summary, Wp } from "./schema_base.js";
import { Value } from "@sinclair/typebox/value";
import { READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION } from "../bench/result.js";
import { einval } from "../errors.js";

export { READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION };
export { Machine, Summary };
export const SCHEMA_ID = "https://github.com/kvmmu/kvmmu/schema/kvmmu-result.schema.json";

// ---- dirty-log-perf -------------------------------------------------------------------------

const Contention = Type.Object({
  migrateRate: Num,
  invalidateRate: Num,
  invalidatePages: Type.Optional(Int),
});

export const PerfOptions = Type.Object({
  vcpus: Int,
  bytesPerVcpu: Int,
  iterations: Int,
  writePercent: Int,
  random: Type.Boolean(),
  wp: Type.Array(Wp),
  baseline: Type.Optional(Wp),
  thp: Type.Boolean(),
  contention: Contention,
  park: Type.Boolean(),
  relog: Type.Optional(Type.Boolean()),
  seed: Int,
  warmup: Type.Optional(Int),
  lock: Type.Optional(Type.Union([Type.Literal("sleep"), Type.Literal("spin")])),
  preset: Type.Optional(Type.String()),
  mode: Type.Optional(Mode),
  guestHuge: Type.Optional(Type.Boolean()),
  threads: Type.Optional(Type.Object({})),
  windowMs: Type.Optional(Num),
  harvestIntervalMs: Type.Optional(Num),
  numaScanPeriodMs: Type.Optional(Int),
  numaScanBytes: Type.Optional(Int),
  pin: Type.Optional(Type.Union([Type.Literal("auto"), Type.Array(Int)])),
});

export const PerfIteration = Type.Object({
  warmup: Type.Boolean(),
  dirtyMemoryNs: Num,
  getDirtyLogNs: Num,
  lockWaitNs: Num,
  protectNs: Num,
  flushNs: Num,
  dirtyPages: Int,
  guestThroughput: Num,
  vcpuLockWaitNs: Type.Optional(Num),
  hostLockWaitNs: Type.Optional(Num),
  switches: Type.Optional(Int),
  writes: Type.Optional(Num),
  harvests: Type.Optional(Int),
  clearDirtyLogNs: Type.Optional(Num),
  ringHarvestNs: Type.Optional(Num),
  ringResetNs: Type.Optional(Num),
  ringEntries: Type.Optional(Int),
  dirtyMemoryCpuNs: Type.Optional(Num),
  enableLoggingNs: Type.Optional(Num),
  enableLoggingCpuNs: Type.Optional(Num),
});

export const PerfStrategy = Type.Object({
  iterations: Type.Array(PerfIteration),
  getDirtyLog: NsStats,
  lockWait: NsStats,
  vcpuLockWait: Type.Optional(NsStats),
  hostLockWait: Type.Optional(NsStats),
  protect: NsStats,
  flush: NsStats,
  dirtyMemory: NsStats,
  nsPerDirtyPage: Num,
  nsPerDirtyPageByCall: Type.Optional(
    Type.Record(Type.String(), Num, { description: "per call, keyed by KVM's name (version 3)" }),
  ),
  logMode: Type.Optional(Type.String()),
  guestThroughput: Summary,
  guestWritesPerSec: NumOrNull,
  populateNs: Num,
  enableLoggingNs: Num,
  firstPassNs: Type.Optional(Num),
  firstPassCpuNs: Type.Optional(Num),
  dirtyMemoryCpu: Type.Optional(NsStats),
  enableLogging: Type.Optional(NsStats),
  enableLoggingCpu: Type.Optional(NsStats),
  disableLoggingNs: Type.Optional(Num),
  numa: Type.Optional(Type.Object({ scans: Int, pagesScanned: Int })),
  kernel: Type.Optional(
    Type.Object(
      { flavour: Type.String(), ringFullExits: Int, stats: Type.Record(Type.String(), Num) },
      { description: "the real kernel's run: its KVM (pvm, vmx, svm) and KVM_GET_STATS_FD counters" },
    ),
  ),
});

const DesignRatio = Type.Object({
  getDirtyLog: Ratio,
  guestThroughput: Ratio,
  clearDirtyLog: Type.Optional(Ratio),
  calls: Type.Optional(
    Type.Record(Type.String(), Ratio, { description: "per call by KVM's name (version 3)" }),
  ),
  dirtyMemory: Type.Optional(Ratio),
  dirtyMemoryCpu: Type.Optional(Ratio),
  enableLogging: Type.Optional(Ratio),
  enableLoggingCpu: Type.Optional(Ratio),
});

const perfExtra = {
  pinned: Type.Optional(
    Type.Union([
      Type.Object({
        vcpus: Type.Array(Int),
        harvester: Type.Union([Int, Type.Null()]),
        others: Type.Optional(Int),
      }),
      Type.Object({ error: Type.String() }),
      Type.Null(),
    ]),
  ),
  /** lockless/locked (kept from version 1); null unless both ran. */
  ratio: Type.Union([DesignRatio, Type.Null()]),
  baseline: Type.Optional(Wp),
  ratios: Type.Optional(
    Type.Record(Type.String(), DesignRatio, {
      description: 'each design against the baseline, keyed "<design>/<baseline>", paired by iteration',
    }),
  ),
  guestMemoryBytes: Int,
  metadataPercent: Num,
  peakRssBytes: Num,
};
/** Keyed by design name. */
const perfResults = Type.Record(Type.String(), PerfStrategy);

export const DirtyLogPerfDoc = doc(
  "dirty-log-perf",
  "kvmmu dirty-log-perf: get-dirty-log time and guest throughput per write-protect design, per iteration",
  PerfOptions,
  perfResults,
  perfExtra,
);

// ---- kernbench ------------------------------------------------------------------------------

export const KernbenchRun = Type.Object({
  warmup: Type.Boolean(),
  realNs: Num,
  opsPerSec: Num,
  harvests: Int,
  dirtyPages: Int,
});

const KernbenchCell = Type.Object({
  runs: Type.Array(KernbenchRun),
  real: Summary,
  realAvgNs: Num,
  realStdNs: Num,
  throughput: Summary,
  opsPerSec: Num,
  harvestsPerSec: NumOrNull,
});

/** Keyed by logging setting: "off" or a design's name. */
const Logging = Type.Record(Type.String(), KernbenchCell);

export const KernbenchDoc = doc(
  "kernbench",
  "kvmmu kernbench: elapsed time of a fixed guest workload per MMU mode and dirty-logging setting, per run",
  Type.Object({
    vcpus: Int,
    processes: Int,
    jobs: Int,
    runs: Int,
    modes: Type.Array(Mode),
    logging: Type.Array(Type.String({ description: '"off" or a design\'s name' })),
  }),
  Type.Object({ tdp: Type.Optional(Logging), shadow: Type.Optional(Logging) }),
  { ratio: Type.Record(Type.String(), Type.Record(Type.String(), Ratio)) },
);

// ---- dirty-log-test -------------------------------------------------------------------------

const OracleResult = Type.Object({
  iterations: Int,
  pagesChecked: Int,
  violations: Int,
  dirtyPages: Int,
  cleanPages: Int,
  guestWrites: Num,
  harvests: Int,
  durationMs: Num,
  verifyMs: Num,
  pagesCheckedPerSec: NumOrNull,
});

export const DirtyLogTestDoc = doc(
  "dirty-log-test",
  "kvmmu dirty-log-test: every reported dirty bit checked, per write-protect design and oracle",
  Type.Object({
    vcpus: Int,
    bytesPerVcpu: Int,
    intervalMs: Int,
    wp: Type.Array(Wp),
    oracles: Type.Array(Type.String()),
    seed: Int,
  }),
  Type.Record(Type.String(), Type.Record(Type.String(), OracleResult)),
  {
    iterations: Int,
    pagesChecked: Int,
    violations: Int,
    pagesCheckedPerSec: NumOrNull,
    durationMs: Num,
    firstViolations: Type.Array(Type.Object({})),
  },
);

// ---- explore and the catalog ----------------------------------------------------------------

export const ExploreDoc = doc(
  "explore",
  "kvmmu explore: schedules of one scenario under the controlled scheduler",
  Type.Object({ scenario: Type.String(), strategy: Type.String(), schedules: Int, seed: Int }),
  Type.Object({
    scenario: Type.String(),
    mode: Mode,
    bug: Type.Union([Type.String(), Type.Null()]),
    strategy: Type.String(),
    seed: Int,
    schedules: Int,
    violations: Int,
    firstViolation: Type.Union([Type.Object({}), Type.Null()]),
    steps: Int,
    stepsPerSec: NumOrNull,
    elapsedMs: Num,
  }),
  {},
);

export const CatalogRow = Type.Object({
  bug: Type.String(),
  toFind: Type.Array(Type.Union([Int, Type.Null()]), {
    description: "schedules until the bug was found, one per seed; null: not found in the budget",
  }),
  median: Type.Union([Int, Type.Null()]),
  fixedSchedules: Int,
  fixedViolations: Int,
  stepsPerSec: NumOrNull,
});

export const CatalogDoc = doc(
  "catalog",
  "node dist/src/bench/catalog.js: schedules for explore to find each catalog bug, and the fixed code's run",
  Type.Object({ mode: Mode, budget: Int, seeds: Int }),
  Type.Array(CatalogRow),
  {},
);

// ---- migrate-perf ---------------------------------------------------------------------------

export const MigratePerfOptions = Type.Object({
  runs: Int,
  warmup: Int,
  memoryBytes: Int,
  vcpus: Int,
  mode: Mode,
  logMode: Type.String(),
  maxBandwidth: Int,
  downtimeLimitMs: Int,
  minRounds: Int,
  autoConverge: Type.Boolean(),
  timeoutMs: Int,
  warmupMs: Int,
  wp: Type.Optional(Type.Array(Wp)),
  baseline: Type.Optional(Wp),
  throttle: Type.Optional(
    Type.Array(Type.String(), { description: "throttles compared instead of designs (version 3)" }),
  ),
  dirtyLimit: Type.Optional(Int),
  dirtyLimitPeriodMs: Type.Optional(Int),
  dirtyRingSize: Type.Optional(Int),
  channels: Type.Optional(
    Type.Array(Int, { description: "multifd channel counts compared instead of designs (version 3)" }),
  ),
});

const MigrateRun = Type.Object({
  seq: Int,
  wp: Wp,
  throttle: Type.Optional(Type.String()),
  channels: Type.Optional(Int),
  warmup: Type.Boolean(),
  status: Type.String(),
  exitCode: Int,
  totalTimeMs: Num,
  convergeMs: Type.Optional(Num),
  downtimeMs: Num,
  expectedDowntimeMs: Num,
  verifyMs: Num,
  rounds: Int,
  transferredBytes: Num,
  guestRate: Num,
  finalSyncMs: Num,
  bulkBytesPerSec: Type.Optional(Num),
  verified: Type.Boolean(),
  error: Type.Optional(Type.String()),
});

const MigrateMetrics = {
  totalTimeMs: Type.Optional(Summary),
  convergeMs: Type.Optional(Summary),
  downtimeMs: Type.Optional(Summary),
  rounds: Type.Optional(Summary),
  transferredBytes: Type.Optional(Summary),
  guestRate: Type.Optional(Summary),
  finalSyncMs: Type.Optional(Summary),
  bulkBytesPerSec: Type.Optional(Summary),
};

const MigratePerfDesign = Type.Object({
  runs: Type.Array(MigrateRun),
  completed: Int,
  stats: Type.Object(MigrateMetrics),
});

const MigratePerfRatio = Type.Object({
  totalTimeMs: Type.Optional(Ratio),
  convergeMs: Type.Optional(Ratio),
  downtimeMs: Type.Optional(Ratio),
  rounds: Type.Optional(Ratio),
  transferredBytes: Type.Optional(Ratio),
  guestRate: Type.Optional(Ratio),
  finalSyncMs: Type.Optional(Ratio),
  bulkBytesPerSec: Type.Optional(Ratio),
});

const migratePerfExtra = {
  ratio: Type.Union([MigratePerfRatio, Type.Null()], {
    description: "lockless/locked medians, paired bootstrap CI over the pairs where both runs completed",
  }),
  ratios: Type.Optional(
    Type.Record(Type.String(), Type.Union([MigratePerfRatio, Type.Null()]), {
      description: 'each design against the baseline, keyed "<design>/<baseline>", as ratio (null: no pair)',
    }),
  ),
  pairs: Int,
  loopback: Type.Optional(
    Type.Array(Type.Object({ bytes: Num, ms: Num, bytesPerSec: Num }), {
      description: "the raw loopback reference (a plain socket pair), before the runs and after them",
    }),
  ),
  loopbackBytesPerSec: Type.Optional(Num),
  bulkVsLoopback: Type.Optional(
    Type.Record(Type.String(), Type.Union([Summary, Type.Null()]), {
      description: "per design: the bulk round's throughput over loopbackBytesPerSec",
    }),
  ),
  elapsedMs: Num,
};
/** Keyed by design name. */
const migratePerfResults = Type.Record(Type.String(), MigratePerfDesign);

export const MigratePerfDoc = doc(
  "migrate-perf",
  "kvmmu migrate-perf: the same live migration with the locked and the lockless harvester, alternated, per run and with bootstrap CIs",
  MigratePerfOptions,
  migratePerfResults,
  migratePerfExtra,
);

// ---- npm run bench --------------------------------------------------------------------------

const TlbHitTaskRound = Type.Object({ p50Ns: Num, meanNs: Num, rme: Num, samples: Int });
const tlbHitTasks = <T extends TSchema>(t: T) =>
  Type.Object({
    "plain-read": t,
    "vcpu-read": t,
    "ctx-read": Type.Optional(t),
    "plain-write": t,
    "vcpu-write": t,
    "ctx-write": Type.Optional(t),
    "guest-read": Type.Optional(t),
    "guest-write": Type.Optional(t),
  });
const TlbHit = Type.Object({
  options: Type.Object({ rounds: Int, warmup: Int, accesses: Int, timeMs: Type.Optional(Num) }),
  /** The measuring library (tinybench) and the build measured. */
  harness: Type.Optional(Type.String()),
  impl: Type.Optional(Type.String()),
  tlbNsPerAccess: Summary,
  plainNsPerAccess: Summary,
  ratio: Ratio,
  tasks: Type.Optional(tlbHitTasks(Summary)),
  ratios: Type.Optional(
    Type.Object({
      vcpuRead: Ratio,
      vcpuWrite: Ratio,
      ctxRead: Type.Optional(Ratio),
      ctxWrite: Type.Optional(Ratio),
      guestRead: Type.Optional(Ratio),
      guestWrite: Type.Optional(Ratio),
    }),
  ),
  rounds: Type.Array(
    Type.Object({
      warmup: Type.Boolean(),
      tlbNs: Num,
      plainNs: Num,
      tasks: Type.Optional(tlbHitTasks(TlbHitTaskRound)),
    }),
  ),
});

export const BenchDoc = doc(
  "bench",
  "npm run bench: the software-TLB micro-benchmark and a short dirty-log-perf comparison",
  Type.Object({}),
  Type.Object({
    tlbHit: TlbHit,
    dirtyLogPerf: Type.Object({ options: PerfOptions, results: perfResults, ...perfExtra }),
    migratePerf: Type.Optional(
      Type.Object({
        options: MigratePerfOptions,
        results: migratePerfResults,
        ratio: migratePerfExtra.ratio,
        pairs: Int,
      }),
    ),
  }),
  {},
);

// ---- migrate --------------------------------------------------------------------------------

/** One round, named as QEMU's query-migrate names its fields. */
export const MigrateRound = Type.Object({
  round: Type.Optional(Int),
  "time-ms": Type.Optional(Num),
  transferred: Type.Optional(Num),
  remaining: Type.Optional(Num),
  total: Type.Optional(Num),
  duplicate: Type.Optional(Num),
  normal: Type.Optional(Num),
  "dirty-pages-rate": Type.Optional(Num),
  mbps: Type.Optional(Num),
  "dirty-sync-count": Type.Optional(Num),
  "expected-downtime": Type.Optional(Num),
  "cpu-throttle-percentage": Type.Optional(Num),
  "dirty-limit-throttle-time-per-round": Type.Optional(Num),
  "dirty-limit-ring-full-time": Type.Optional(Num),
});

export const MigrateDoc = doc(
  "migrate",
  "kvmmu migrate: one live migration, its rounds, downtime and verification",
  Type.Object({ wp: Type.Optional(Wp), mode: Type.Optional(Mode) }),
  Type.Object({
    status: Type.Union([Type.Literal("completed"), Type.Literal("failed"), Type.Literal("cancelled")]),
    mode: Type.Union([Type.Literal("precopy"), Type.Literal("postcopy")]),
    rounds: Type.Array(MigrateRound),
    downtimeMs: Num,
    expectedDowntimeMs: Type.Optional(Num),
    verifyMs: Type.Optional(Num),
    guestRate: Type.Optional(Num),
    switchover: Type.Optional(
      Type.Object({
        pauseMs: Num,
        syncMs: Num,
        sendMs: Num,
        loadMs: Num,
        startMs: Num,
        stopMs: Num,
      }),
    ),
    totalTimeMs: Num,
    transferredBytes: Num,
    downtimeLimitMs: Type.Optional(Num),
    downtimeExceeded: Type.Optional(
      Type.Boolean({ description: "completed, but the downtime went past downtimeLimitMs (version 3)" }),
    ),
    verify: Type.Object({
      pagesCompared: Int,
      mismatches: Int,
      guestInvariant: Type.Union([Type.Boolean(), Type.Null()]),
    }),
    switchedOver: Type.Optional(
      Type.Boolean({
        description: "the source gave the guest away (go or postcopy-run sent): it must not run it",
      }),
    ),
    guestLost: Type.Optional(Type.Boolean({ description: "post-copy failed after postcopy-run" })),
    postcopy: Type.Optional(
      Type.Object({
        "postcopy-blocktime": Num,
        "postcopy-vcpu-blocktime": Type.Array(Num),
        "postcopy-vcpu-blocktime-max": Type.Array(Num),
        "postcopy-requests": Int,
        "postcopy-vcpu-requests": Type.Array(Int),
        discardedPages: Int,
        requestedPages: Int,
        backgroundPages: Int,
        postcopyTimeMs: Num,
        recoveries: Type.Optional(Int),
        pausedMs: Type.Optional(Num),
        resentPages: Type.Optional(Int),
      }),
    ),
    dirtyLimit: Type.Optional(
      Type.Object({
        "vcpu-dirty-limit": Int,
        periodMs: Int,
        started: Type.Boolean(),
        throttleUsPerFull: Type.Array(Num),
        rates: Type.Array(Num),
        ringFullReaps: Int,
        periods: Int,
      }),
    ),
    channels: Type.Optional(Int),
    channelBytes: Type.Optional(Type.Array(Num, { description: "multifd: bytes each channel carried" })),
    error: Type.Optional(Type.Object({ code: Type.String(), message: Type.String() })),
  }),
  {},
);

// ---- dirty-rate -----------------------------------------------------------------------------

export const DirtyRateDoc = doc(
  "dirty-rate",
  "kvmmu dirty-rate: QEMU's calc-dirty-rate on the migration-test guest",
  Type.Object({ mode: Type.String(), calcTimeMs: Int }),
  Type.Object({
    mode: Type.String(),
    "dirty-rate": Num,
    "calc-time-ms": Num,
    "sample-pages": Int,
    sampled: Type.Optional(Int),
    dirtySamples: Type.Optional(Int),
    dirtyPages: Type.Optional(Num),
    "vcpu-dirty-rate": Type.Optional(Type.Array(Type.Object({ id: Int, "dirty-rate": Num, pages: Num }))),
  }),
  {},
);

// ---- all of them ----------------------------------------------------------------------------

export const DOCS = {
  "dirty-log-perf": DirtyLogPerfDoc,
  kernbench: KernbenchDoc,
  "dirty-log-test": DirtyLogTestDoc,
  explore: ExploreDoc,
  catalog: CatalogDoc,
  bench: BenchDoc,
  migrate: MigrateDoc,
  "migrate-perf": MigratePerfDoc,
  "dirty-rate": DirtyRateDoc,
} as const;

export type CommandName = keyof typeof DOCS;
export const COMMANDS = Object.keys(DOCS) as CommandName[];

export type DirtyLogPerfDocT = Static<typeof DirtyLogPerfDoc>;
export type KernbenchDocT = Static<typeof KernbenchDoc>;
export type DirtyLogTestDocT = Static<typeof DirtyLogTestDoc>;
export type ExploreDocT = Static<typeof ExploreDoc>;
export type CatalogDocT = Static<typeof CatalogDoc>;
export type BenchDocT = Static<typeof BenchDoc>;
export type MigrateDocT = Static<typeof MigrateDoc>;
export type MigratePerfDocT = Static<typeof MigratePerfDoc>;
export type DirtyRateDocT = Static<typeof DirtyRateDoc>;
export type ResultDoc =
  | DirtyLogPerfDocT
  | KernbenchDocT
  | DirtyLogTestDocT
  | ExploreDocT
  | CatalogDocT
  | BenchDocT
  | MigrateDocT
  | MigratePerfDocT
  | DirtyRateDocT;

export const ResultSchema = Type.Union(Object.values(DOCS), {
  $id: SCHEMA_ID,
  title: "kvmmu result",
  description: `A saved kvmmu result (--output FILE), schema version ${SCHEMA_VERSION} (version 1 files also conform): the envelope plus the results of one command, told apart by "command".`,
});

/** The published JSON Schema: the TypeBox definition as plain JSON (its symbol keys dropped). */
export function jsonSchema(): Record<string, unknown> {
  return {
    $schema: "http://json-schema.org/draft-07/schema#",
    ...(JSON.parse(JSON.stringify(ResultSchema)) as Record<string, unknown>),
  };
}

/**
 * Checks `doc` (read from `name`) and returns it typed; a KvmError(EINVAL) naming the file and
 * the first offending field otherwise. Version and command are checked first, so that the
 * message says "schemaVersion 2" rather than listing every field of every command.
 */
export function validateResult(doc: unknown, name: string): ResultDoc {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc))
    throw einval(name, "is not a JSON object");
  const d = doc as Record<string, unknown>;
  const v = d["schemaVersion"];
  if (typeof v !== "number" || !READABLE_SCHEMA_VERSIONS.includes(v))
    throw einval(
      name,
      `schemaVersion ${JSON.stringify(v)}: this kvmmu reads schema versions ${READABLE_SCHEMA_VERSIONS.join(", ")}`,
    );
  const command = d["command"];
  // Own keys only: "__proto__" or "constructor" is no command (`in` would find Object.prototype's).
  if (typeof command !== "string" || !Object.hasOwn(DOCS, command))
    throw einval(name, `command ${JSON.stringify(command)} is not one of ${COMMANDS.join(", ")}`);
  const schema = DOCS[command as CommandName];
  const first = Value.Errors(schema, doc).First();
  if (first) throw einval(name, `${first.path || "/"}: ${first.message} (schema of ${command})`);
  return doc as ResultDoc;
}

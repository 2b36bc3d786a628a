/**
 * `kvmmu migrate-perf`: the same pre-copy migration with each design of a list (default locked
 * and lockless), run after run, alternated (locked, lockless, locked, ...), each a whole
 * migrateLocal() in fresh processes (migrateLocalForked: the source in one, the destination it
 * starts in another), so every design sees the same machine and no run inherits another's JIT or
 * heap. Per design: medians with bootstrap 95% CIs of total time, downtime, rounds, transferred
 * bytes and guest throughput during the migration; per design against the baseline, ratios with
 * paired bootstrap CIs (run k of each design is a pair); `ratio` keeps lockless/locked. With
 * `throttle` or `channels` (multifd) the arms are throttles or channel counts of one design.
 */
import { einval } from "../errors.js";
import { DEFAULT_BASELINE, DesignName, designInfo } from "../mmu/design.js";
import { migrateLocalForked } from "../migration/local.js";
import type { MigrationResult } from "../migration/migrate.js";
import { LogMode, needsDirtyRing } from "../migration/log_sync.js";
import { layoutFor } from "../migration/guest_vm.js";
import { measureLoopback, LoopbackFigure } from "./loopback.js";
import { MAX_CHANNELS } from "../migration/multifd.js";
import { formatRatio, median, pairedRatio, RatioSummary, summarize, Summary, verdict } from "./stats.js";

export interface MigratePerfOptions {
  /** Measured runs per design (pairs). */
  runs: number;
  /** Pairs run first and left out of the statistics. */
  warmup: number;
  memoryBytes: number;
  vcpus: number;
  mode: "tdp" | "shadow";
  logMode: string;
  /** Bytes per second (0: unlimited). */
  maxBandwidth: number;
  downtimeLimitMs: number;
  minRounds: number;
  autoConverge: boolean;
  /** Per run: cancel when not converged by then. */
  timeoutMs: number;
  /** Per run: the guest runs this long before the migration starts. */
  warmupMs: number;
  /** The designs compared, in the order they alternate (default locked, lockless). */
  wp?: DesignName[];
  /** The design the ratios divide by (default DEFAULT_BASELINE); one of `wp`. */
  baseline?: DesignName;
  /** The guest's workload (migrate's --working-set, --dirty-rate); absent: all of it, unbounded. */
  workingSetBytes?: number;
  dirtyRateBytes?: number;
  /** Bytes the loopback reference moves, before the runs and after them (default 256 MiB). */
  loopbackBytes?: number;
  /** The stream's protection (default TLS-PSK); "none": migrate's --insecure-plaintext. */
  tls?: "psk" | "none";
  /**
   * Compare throttles instead of designs (one design in `wp`): each run alternates these, the
   * first is the baseline. All run over the dirty ring with its ring-full reaper when the log is
   * the dirty ring, so they differ only in how they slow the guest.
   */
  throttle?: ThrottleName[];
  /** dirty-limit's quota per vCPU (MB/s, QEMU's vcpu-dirty-limit; default 1) and period (ms). */
  dirtyLimit?: number;
  dirtyLimitPeriodMs?: number;
  /** Entries per vCPU ring with the dirty-ring log (default 4096). */
  dirtyRingSize?: number;
  /**
   * Compare multifd channel counts instead of designs (one design in `wp`; not with throttle):
   * each run alternates these, the first is the baseline (e.g. [1, 4]).
   */
  channels?: number[];
}

/** What `throttle` compares: none, QEMU's auto-converge, QEMU's dirty-limit. */
export const THROTTLES = ["none", "auto-converge", "dirty-limit"] as const;
export type ThrottleName = (typeof THROTTLES)[number];

/** One arm of the comparison: a design, or a throttle with the one design. */
interface Variant {
  name: string;
  wp: DesignName;
  throttle?: ThrottleName;
  channels?: number;
}

/** The arm's name for a channel count. */
export function channelsName(n: number): string {
  return `channels-${n}`;
}

function variantsOf(o: MigratePerfOptions): Variant[] {
  if (o.throttle) return o.throttle.map((t) => ({ name: t, wp: designsOf(o)[0], throttle: t }));
  if (o.channels) return o.channels.map((n) => ({ name: channelsName(n), wp: designsOf(o)[0], channels: n }));
  return designsOf(o).map((d) => ({ name: d, wp: d }));
}

/** The arm the ratios divide by: the baseline design, or the first throttle. */
function baselineVariant(o: MigratePerfOptions): string {
  if (o.channels) return channelsName(o.channels[0]);
  return o.throttle ? o.throttle[0] : baselineOf(o);
}

/**
 * The default comparison: a 16 MiB, 1-vCPU guest (it and the two processes fit 2 cores) over a
 * link capped at 32 MiB/s, so that every round takes the same ~0.5 s whatever the loopback gives;
 * the guest rewrites all its pages every round, so the downtime limit is set where the whole guest
 * fits it and --min-rounds fixes the rounds: the designs differ only in the harvest and in how the
 * guest's write faults after each harvest fare, not in how lucky a bandwidth window was.
 */
export const MIGRATE_PERF_DEFAULTS: MigratePerfOptions = {
  runs: 7,
  warmup: 1,
  memoryBytes: 16 << 20,
  vcpus: 1,
  mode: "tdp",
  logMode: "dirty-log",
  maxBandwidth: 32 << 20,
  downtimeLimitMs: 1000,
  minRounds: 3,
  autoConverge: false,
  timeoutMs: 60_000,
  warmupMs: 200,
};

/** One migration, as measured. */
export interface MigrateRun {
  /** Order in which the runs were made, from 1 (the designs, or throttles, alternate). */
  seq: number;
  wp: DesignName;
  /** With --throttle: the throttle of this run. */
  throttle?: ThrottleName;
  /** With --channels: the multifd channels of this run. */
  channels?: number;
  warmup: boolean;
  status: string;
  exitCode: number;
  totalTimeMs: number;
  /** Start to the stop of the guest for switch-over: the convergence time. */
  convergeMs: number;
  downtimeMs: number;
  expectedDowntimeMs: number;
  verifyMs: number;
  rounds: number;
  transferredBytes: number;
  /** Guest increments per second, all vCPUs, from the migration's start to the stop. */
  guestRate: number;
  /** The dirty-log sync made with the vCPUs stopped (the harvest inside the downtime). */
  finalSyncMs: number;
  /** The bulk round: rounds[0].transferred over rounds[0]["time-ms"], in bytes per second. */
  bulkBytesPerSec: number;
  verified: boolean;
  error?: string;
}

export const MIGRATE_METRICS = [
  "totalTimeMs",
  "convergeMs",
  "downtimeMs",
  "rounds",
  "transferredBytes",
  "guestRate",
  "finalSyncMs",
  "bulkBytesPerSec",
] as const;
export type MigrateMetric = (typeof MIGRATE_METRICS)[number];

export interface MigratePerfDesign {
  runs: MigrateRun[];
  /** Measured runs that completed and verified (the statistics are over these). */
  completed: number;
  stats: Partial<Record<MigrateMetric, Summary>>;
}

export type MigrateRatio = Partial<Record<MigrateMetric, RatioSummary & { verdict: string }>>;

export interface MigratePerfResult {
  options: MigratePerfOptions;
  /** Per design, by name. */
  results: Record<DesignName, MigratePerfDesign>;
  /** lockless / locked per metric, over the pairs where both runs completed; null: < 1 pair or a design not run. */
  ratio: MigrateRatio | null;
  /** "<design>/<baseline>" for each other design, as `ratio` (null: < 1 pair). */
  ratios: Record<string, MigrateRatio | null>;
  /** Run indices where every design's run completed and verified. */
  pairs: number;
  /** The raw loopback reference (loopback.ts), measured before the runs and after them. */
  loopback: LoopbackFigure[];
  /** Their median, bytes per second: what the ratios below divide by. */
  loopbackBytesPerSec: number;
  /** Per design: the bulk round's throughput over loopbackBytesPerSec (median and CI of the runs). */
  bulkVsLoopback: Record<DesignName, Summary | null>;
  elapsedMs: number;
}

export function checkMigratePerfOptions(o: MigratePerfOptions): void {
  const int = (k: keyof MigratePerfOptions, lo: number, hi: number): void => {
    const v = o[k] as number;
    if (!Number.isSafeInteger(v) || v < lo || v > hi) throw einval(k, `must be an integer ${lo}..${hi}`);
  };
  int("runs", 1, 1000);
  int("warmup", 0, 100);
  int("vcpus", 1, 64);
  int("minRounds", 1, 1000);
  int("downtimeLimitMs", 1, 600_000);
  int("timeoutMs", 1, 86_400_000);
  int("warmupMs", 0, 600_000);
  if (!Number.isSafeInteger(o.memoryBytes) || o.memoryBytes <= 0) throw einval("memoryBytes", "must be > 0");
  if (!Number.isSafeInteger(o.maxBandwidth) || o.maxBandwidth < 0)
    throw einval("maxBandwidth", "must be >= 0");
  const designs = designsOf(o);
  if (designs.length === 0) throw einval("wp", "empty list");
  for (const d of designs) designInfo(d);
  if (new Set(designs).size !== designs.length) throw einval("wp", "a design is listed twice");
  if (!designs.includes(baselineOf(o)) && !o.throttle && !o.channels)
    throw einval("baseline", `"${baselineOf(o)}" is not one of the designs run (${designs.join(", ")})`);
  if (o.tls !== undefined && o.tls !== "psk" && o.tls !== "none")
    throw einval("tls", `must be "psk" or "none", got ${String(o.tls)}`);
  const lb = o.loopbackBytes ?? LOOPBACK_BYTES;
  if (!Number.isSafeInteger(lb) || lb < 1 << 20) throw einval("loopbackBytes", "must be an integer >= 1 MiB");
  layoutFor(o.memoryBytes, o.vcpus, { workingSetBytes: o.workingSetBytes, dirtyRateBytes: o.dirtyRateBytes });
  if (o.dirtyRingSize !== undefined) needsDirtyRing("dirtyRingSize", o.logMode);
  checkThrottles(o);
  checkChannelList(o);
}

function checkChannelList(o: MigratePerfOptions): void {
  const c = o.channels;
  if (c === undefined) return;
  if (!Array.isArray(c) || c.length === 0) throw einval("channels", "empty list");
  for (const n of c)
    if (!Number.isSafeInteger(n) || n < 1 || n > MAX_CHANNELS)
      throw einval("channels", `must be integers 1..${MAX_CHANNELS}, got ${String(n)}`);
  if (new Set(c).size !== c.length) throw einval("channels", "a count is listed twice");
  if (designsOf(o).length !== 1) throw einval("wp", "with channels: one design");
  if (o.throttle) throw einval("channels", "not with throttle (one comparison at a time)");
}

function checkThrottles(o: MigratePerfOptions): void {
  const t = o.throttle;
  if (t === undefined) return;
  if (!Array.isArray(t) || t.length === 0) throw einval("throttle", "empty list");
  for (const x of t)
    if (!(THROTTLES as readonly string[]).includes(x))
      throw einval("throttle", `"${String(x)}" is not one of ${THROTTLES.join(", ")}`);
  if (new Set(t).size !== t.length) throw einval("throttle", "a throttle is listed twice");
  if (designsOf(o).length !== 1) throw einval("wp", "with throttle: one design");
  if (o.autoConverge) throw einval("autoConverge", "with throttle: list auto-converge there instead");
  if (t.includes("dirty-limit")) needsDirtyRing("throttle", o.logMode, "dirty-limit ");
  const q = o.dirtyLimit ?? 1;
  if (!Number.isSafeInteger(q) || q < 1) throw einval("dirtyLimit", "must be an integer >= 1 (MB/s)");
}

export const LOOPBACK_BYTES = 256 << 20;

export function designsOf(o: MigratePerfOptions): DesignName[] {
  return o.wp ?? ["locked", "lockless"];
}

export function baselineOf(o: MigratePerfOptions): DesignName {
  return o.baseline ?? DEFAULT_BASELINE;
}

/** One migrateLocal() in fresh processes; the exit code is the CLI's (0: completed and verified). */
async function migrateOnce(
  o: MigratePerfOptions,
  v: Variant,
): Promise<MigrationResult & { exitCode: number }> {
  const ring = o.logMode === "dirty-ring";
  const { source: r } = await migrateLocalForked({
    wp: v.wp,
    mode: o.mode,
    logMode: o.logMode as LogMode,
    memoryBytes: o.memoryBytes,
    vcpus: o.vcpus,
    maxBandwidth: o.maxBandwidth,
    downtimeLimitMs: o.downtimeLimitMs,
    minRounds: o.minRounds,
    maxTimeMs: o.timeoutMs,
    warmupMs: o.warmupMs,
    autoConverge: v.throttle ? v.throttle === "auto-converge" : o.autoConverge,
    workingSetBytes: o.workingSetBytes,
    dirtyRateBytes: o.dirtyRateBytes,
    security: { tls: o.tls ?? "psk" },
    ...(v.throttle === "dirty-limit"
      ? { dirtyLimit: o.dirtyLimit ?? 1, dirtyLimitPeriodMs: o.dirtyLimitPeriodMs }
      : {}),
    // Throttles compared over the ring: each reaps a full ring at once, as QEMU does.
    ...(v.throttle && ring ? { dirtyRingReaper: true } : {}),
    ...(ring && o.dirtyRingSize !== undefined ? { dirtyRingSize: o.dirtyRingSize } : {}),
    ...(v.channels !== undefined ? { channels: v.channels } : {}),
  });
  const ok = r.status === "completed" && r.verify.mismatches === 0 && r.verify.guestInvariant === true;
  return { ...r, exitCode: ok ? 0 : 1 };
}

/** One migration's result as a run of the benchmark. */
export function toRun(
  seq: number,
  v: Variant,
  warmup: boolean,
  r: MigrationResult & { exitCode: number },
): MigrateRun {
  const last = r.rounds[r.rounds.length - 1];
  const run: MigrateRun = {
    seq,
    wp: v.wp,
    ...(v.throttle ? { throttle: v.throttle } : {}),
    ...(v.channels !== undefined ? { channels: v.channels } : {}),
    warmup,
    status: r.status,
    exitCode: r.exitCode,
    totalTimeMs: r.totalTimeMs,
    // The last record is the sync made with the vCPUs stopped: its time is the stop's.
    convergeMs: r.status === "completed" && last ? last["time-ms"] : r.totalTimeMs,
    downtimeMs: r.downtimeMs,
    expectedDowntimeMs: r.expectedDowntimeMs ?? 0,
    verifyMs: r.verifyMs ?? 0,
    // The last record is the sync made with the vCPUs stopped, not a round of its own.
    rounds: r.status === "completed" ? r.rounds.length - 1 : r.rounds.length,
    transferredBytes: r.transferredBytes,
    guestRate: r.guestRate ?? 0,
    finalSyncMs: r.switchover?.syncMs ?? 0,
    bulkBytesPerSec:
      r.rounds.length > 0 ? (r.rounds[0].transferred * 1000) / Math.max(r.rounds[0]["time-ms"], 1) : 0,
    verified: r.status === "completed" && r.verify.mismatches === 0 && r.verify.guestInvariant === true,
  };
  // The report's message is led by its code already.
  if (r.error) run.error = r.error.message;
  return run;
}

/** Per metric: what a ratio below 1 and above 1 says of the design divided. */
const VERDICTS: Record<MigrateMetric, [string, string]> = {
  totalTimeMs: ["faster", "slower"],
  convergeMs: ["faster", "slower"],
  downtimeMs: ["shorter", "longer"],
  rounds: ["fewer", "more"],
  transferredBytes: ["fewer", "more"],
  guestRate: ["lower", "higher"],
  finalSyncMs: ["faster", "slower"],
  bulkBytesPerSec: ["slower", "faster"],
};

/** Statistics of one design's completed measured runs. */
function designStats(runs: MigrateRun[]): MigratePerfDesign {
  const ok = runs.filter((r) => !r.warmup && r.verified);
  const stats: Partial<Record<MigrateMetric, Summary>> = {};
  if (ok.length > 0) for (const m of MIGRATE_METRICS) stats[m] = summarize(ok.map((r) => r[m]));
  return { runs, completed: ok.length, stats };
}

/** `a`'s runs over `b`'s, per metric, over the measured pairs both verified; null: no pair. */
function ratioOf(
  o: MigratePerfOptions,
  a: string,
  runsA: MigrateRun[],
  runsB: MigrateRun[],
): MigrateRatio | null {
  const pairs: [MigrateRun, MigrateRun][] = [];
  for (let i = o.warmup; i < o.warmup + o.runs; i++)
    if (runsA[i].verified && runsB[i].verified) pairs.push([runsA[i], runsB[i]]);
  if (pairs.length === 0) return null;
  const ratio: MigrateRatio = {};
  for (const m of MIGRATE_METRICS) {
    const xa = pairs.map((p) => p[0][m]);
    const xb = pairs.map((p) => p[1][m]);
    // A ratio over a zero median (e.g. a sync below the timer's resolution) says nothing.
    if (xb.some((x) => x <= 0) || xa.some((x) => x <= 0)) continue;
    const r = pairedRatio(xa, xb);
    const [below, above] = VERDICTS[m];
    ratio[m] = { ...r, verdict: verdict(r, `${a} ${below}`, `${a} ${above}`) };
  }
  return ratio;
}

export async function migratePerf(
  o: MigratePerfOptions,
  onRun?: (r: MigrateRun, index: number, of: number) => void,
  onStatus?: (msg: string) => void,
): Promise<MigratePerfResult> {
  checkMigratePerfOptions(o);
  const variants = variantsOf(o);
  const names = variants.map((v) => v.name);
  const baseline = baselineVariant(o);
  const t0 = performance.now();
  onStatus?.("the raw loopback reference");
  const loopback = [await measureLoopback(o.loopbackBytes ?? LOOPBACK_BYTES)];
  const runs: Record<string, MigrateRun[]> = Object.fromEntries(names.map((d) => [d, []]));
  const total = (o.warmup + o.runs) * variants.length;
  let k = 0;
  for (let i = 0; i < o.warmup + o.runs; i++)
    for (const v of variants) {
      // What runs now (a heartbeat repeats the last status: it must not be the previous run's).
      onStatus?.(`migration ${k + 1}/${total} (${v.name}${i < o.warmup ? ", warm-up" : ""}): running`);
      const r = toRun(++k, v, i < o.warmup, await migrateOnce(o, v));
      runs[v.name].push(r);
      onRun?.(r, k, total);
    }
  onStatus?.("the raw loopback reference, again");
  loopback.push(await measureLoopback(o.loopbackBytes ?? LOOPBACK_BYTES));
  const loopbackBytesPerSec = median(loopback.map((x) => x.bytesPerSec));
  const bulkVsLoopback: Record<string, Summary | null> = {};
  for (const d of names) {
    const ok = runs[d].filter((r) => !r.warmup && r.verified);
    bulkVsLoopback[d] =
      ok.length > 0 ? summarize(ok.map((r) => r.bulkBytesPerSec / loopbackBytesPerSec)) : null;
  }
  let pairs = 0;
  for (let i = o.warmup; i < o.warmup + o.runs; i++) if (names.every((d) => runs[d][i].verified)) pairs++;
  const ratios: Record<string, MigrateRatio | null> = {};
  for (const d of names)
    if (d !== baseline) ratios[`${d}/${baseline}`] = ratioOf(o, d, runs[d], runs[baseline]);
  const both = "locked" in runs && "lockless" in runs;
  return {
    options: o,
    results: Object.fromEntries(names.map((d) => [d, designStats(runs[d])])),
    ratio: both ? ratioOf(o, "lockless", runs["lockless"], runs["locked"]) : null,
    ratios,
    pairs,
    loopback,
    loopbackBytesPerSec,
    bulkVsLoopback,
    elapsedMs: performance.now() - t0,
  };
}

const LABELS: Record<MigrateMetric, [string, (x: number) => string]> = {
  totalTimeMs: ["total time", (x) => `${x.toFixed(0)} ms`],
  convergeMs: ["convergence", (x) => `${x.toFixed(0)} ms`],
  downtimeMs: ["downtime", (x) => `${x.toFixed(1)} ms`],
  rounds: ["rounds", (x) => x.toFixed(1)],
  transferredBytes: ["transferred", (x) => `${(x / 2 ** 20).toFixed(1)} MiB`],
  guestRate: ["guest throughput", (x) => `${(x / 1e6).toFixed(2)}M/s`],
  finalSyncMs: ["final sync", (x) => `${x.toFixed(2)} ms`],
  bulkBytesPerSec: ["bulk round", (x) => `${(x / 2 ** 20).toFixed(1)} MiB/s`],
};

/** The human table: per metric, each design's median [CI], and each ratio with its verdict. */
export function formatMigratePerf(r: MigratePerfResult): string {
  const o = r.options;
  const designs = variantsOf(o).map((v) => v.name);
  const keys = Object.keys(r.ratios);
  const out = [
    `migrate-perf: ${o.runs} runs per ${o.throttle ? "throttle" : o.channels ? "channel count" : "design"} (+${o.warmup} warm-up), alternated ${designs.join("/")}, each a migrateLocal in fresh processes`,
    `  guest ${(o.memoryBytes / 2 ** 20).toFixed(0)} MiB x ${o.vcpus} vCPU${o.workingSetBytes ? `, working set ${(o.workingSetBytes / 2 ** 20).toFixed(0)} MiB` : ""}, ${o.mode}, ${o.logMode}, ${o.tls === "none" ? "INSECURE plaintext" : "TLS-PSK"}, max-bandwidth ${o.maxBandwidth > 0 ? `${(o.maxBandwidth / 2 ** 20).toFixed(1)} MiB/s` : "unlimited"}, downtime-limit ${o.downtimeLimitMs} ms, min-rounds ${o.minRounds}${o.autoConverge ? ", auto-converge" : ""}${o.throttle ? `, design ${designsOf(o)[0]}, dirty-limit ${o.dirtyLimit ?? 1} MB/s per vCPU` : ""}${o.channels ? `, design ${designsOf(o)[0]}` : ""}`,
    `  completed and verified: ${designs.map((d) => `${d} ${r.results[d].completed}/${o.runs}`).join(", ")}; pairs ${r.pairs}`,
    "",
    `  ${"metric".padEnd(17)} ${designs.map((d) => `${d} median [95% CI]`.padEnd(34)).join(" ")} ${keys.join("  ")}`,
  ];
  for (const m of MIGRATE_METRICS) {
    const [label, f] = LABELS[m];
    const cell = (s: Summary | undefined): string =>
      s ? `${f(s.median)} [${f(s.ci95[0])}, ${f(s.ci95[1])}]` : "-";
    const ratios = keys.map((key) => {
      const ra = r.ratios[key]?.[m];
      return ra ? `${formatRatio(ra)} ${ra.verdict}` : "-";
    });
    out.push(
      `  ${label.padEnd(17)} ${designs.map((d) => cell(r.results[d].stats[m]).padEnd(34)).join(" ")} ${ratios.join("  ")}`,
    );
  }
  const lb = r.loopback.map((x) => `${(x.bytesPerSec / 2 ** 20).toFixed(0)}`).join(", ");
  out.push(
    `  loopback reference (a plain socket pair, ${(r.loopback[0].bytes / 2 ** 20).toFixed(0)} MiB, before and after): ${lb} MiB/s; bulk round / loopback: ` +
      designs
        .map((d) => {
          const s = r.bulkVsLoopback[d];
          return `${d} ${s ? `${s.median.toFixed(2)}x [${s.ci95[0].toFixed(2)}, ${s.ci95[1].toFixed(2)}]` : "-"}`;
        })
        .join(", "),
  );
  const failed = designs.flatMap((d) => r.results[d].runs).filter((x) => !x.verified);
  for (const x of failed.slice(0, 6))
    out.push(
      `  ${x.throttle ?? (x.channels !== undefined ? channelsName(x.channels) : x.wp)}${x.warmup ? " (warm-up)" : ""}: ${x.status}${x.error ? `, ${x.error}` : ""}`,
    );
  out.push(`  ${(r.elapsedMs / 1000).toFixed(1)} s in all`);
  return out.join("\n");
}

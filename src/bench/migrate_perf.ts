/**
 * `kvmmu migrate-perf`: the same pre-copy migration with the locked and the lockless harvester,
 * run after run, alternated (locked, lockless, locked, ...), each a whole `kvmmu migrate --local`
 * in fresh processes (source, and the destination it starts on loopback), so both designs see
 * the same machine and no run inherits another's JIT or heap. Per design: medians with bootstrap
 * 95% CIs of total time, downtime, rounds, transferred bytes and guest throughput during the
 * migration; lockless/locked ratios with paired bootstrap CIs (run k of each design is a pair).
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { einval, KvmError } from "../errors.js";
import type { MigrationReport } from "../migration/precopy.js";
import type { WpName } from "../vm.js";
import { formatRatio, pairedRatio, RatioSummary, summarize, Summary, verdict } from "./stats.js";

const BIN = fileURLToPath(new URL("../../../bin/kvmmu.js", import.meta.url));

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
  /** Order in which the runs were made, from 1 (the designs alternate). */
  seq: number;
  wp: WpName;
  warmup: boolean;
  status: string;
  exitCode: number;
  totalTimeMs: number;
  downtimeMs: number;
  expectedDowntimeMs: number;
  verifyMs: number;
  rounds: number;
  transferredBytes: number;
  /** Guest increments per second, all vCPUs, from the migration's start to the stop. */
  guestRate: number;
  /** The dirty-log sync made with the vCPUs stopped (the harvest inside the downtime). */
  finalSyncMs: number;
  verified: boolean;
  error?: string;
}

export const MIGRATE_METRICS = [
  "totalTimeMs",
  "downtimeMs",
  "rounds",
  "transferredBytes",
  "guestRate",
  "finalSyncMs",
] as const;
export type MigrateMetric = (typeof MIGRATE_METRICS)[number];

export interface MigratePerfDesign {
  runs: MigrateRun[];
  /** Measured runs that completed and verified (the statistics are over these). */
  completed: number;
  stats: Partial<Record<MigrateMetric, Summary>>;
}

export interface MigratePerfResult {
  options: MigratePerfOptions;
  results: { locked: MigratePerfDesign; lockless: MigratePerfDesign };
  /** lockless / locked per metric, over the pairs where both runs completed; null: < 1 pair. */
  ratio: Partial<Record<MigrateMetric, RatioSummary & { verdict: string }>> | null;
  pairs: number;
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
}

/** Runs one `kvmmu migrate --local --json` and reads its report (exit 1 still reports). */
async function migrateOnce(
  o: MigratePerfOptions,
  wp: WpName,
): Promise<MigrationReport & { exitCode: number }> {
  const args = [
    BIN,
    "migrate",
    "--local",
    "--json",
    "--wp",
    wp,
    "--mode",
    o.mode,
    "--log-mode",
    o.logMode,
    "-b",
    String(o.memoryBytes),
    "-v",
    String(o.vcpus),
    "--max-bandwidth",
    String(o.maxBandwidth),
    "--downtime-limit",
    String(o.downtimeLimitMs),
    "--min-rounds",
    String(o.minRounds),
    "--timeout",
    String(o.timeoutMs),
    "--warmup",
    String(o.warmupMs),
    ...(o.autoConverge ? ["--auto-converge"] : []),
  ];
  const child = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (c: Buffer) => (out += c.toString()));
  child.stderr.on("data", (c: Buffer) => (err += c.toString()));
  const code = await new Promise<number>((res) => child.once("close", (c) => res(c ?? 3)));
  const line = out.trim().split("\n").pop() ?? "";
  try {
    return { ...(JSON.parse(line) as MigrationReport), exitCode: code };
  } catch {
    throw new KvmError(
      "EIO",
      `migrate-perf: kvmmu migrate --wp ${wp} exited ${code} without a report: ${err.trim().slice(-500)}`,
    );
  }
}

function toRun(
  seq: number,
  wp: WpName,
  warmup: boolean,
  r: MigrationReport & { exitCode: number },
): MigrateRun {
  const run: MigrateRun = {
    seq,
    wp,
    warmup,
    status: r.status,
    exitCode: r.exitCode,
    totalTimeMs: r.totalTimeMs,
    downtimeMs: r.downtimeMs,
    expectedDowntimeMs: r.expectedDowntimeMs ?? 0,
    verifyMs: r.verifyMs ?? 0,
    // The last record is the sync made with the vCPUs stopped, not a round of its own.
    rounds: r.status === "completed" ? r.rounds.length - 1 : r.rounds.length,
    transferredBytes: r.transferredBytes,
    guestRate: r.guestRate ?? 0,
    finalSyncMs: r.switchover?.syncMs ?? 0,
    verified: r.status === "completed" && r.verify.mismatches === 0 && r.verify.guestInvariant === true,
  };
  if (r.error) run.error = `${r.error.code}: ${r.error.message}`;
  return run;
}

const VERDICTS: Record<MigrateMetric, [string, string]> = {
  totalTimeMs: ["lockless faster", "lockless slower"],
  downtimeMs: ["lockless shorter", "lockless longer"],
  rounds: ["lockless fewer", "lockless more"],
  transferredBytes: ["lockless fewer", "lockless more"],
  guestRate: ["lockless lower", "lockless higher"],
  finalSyncMs: ["lockless faster", "lockless slower"],
};

/** Statistics of one design's completed measured runs. */
function designStats(runs: MigrateRun[]): MigratePerfDesign {
  const ok = runs.filter((r) => !r.warmup && r.verified);
  const stats: Partial<Record<MigrateMetric, Summary>> = {};
  if (ok.length > 0) for (const m of MIGRATE_METRICS) stats[m] = summarize(ok.map((r) => r[m]));
  return { runs, completed: ok.length, stats };
}

export async function migratePerf(
  o: MigratePerfOptions,
  onRun?: (r: MigrateRun, index: number, of: number) => void,
): Promise<MigratePerfResult> {
  checkMigratePerfOptions(o);
  const t0 = performance.now();
  const runs: Record<WpName, MigrateRun[]> = { locked: [], lockless: [] };
  const total = (o.warmup + o.runs) * 2;
  let k = 0;
  for (let i = 0; i < o.warmup + o.runs; i++)
    for (const wp of ["locked", "lockless"] as const) {
      const r = toRun(++k, wp, i < o.warmup, await migrateOnce(o, wp));
      runs[wp].push(r);
      onRun?.(r, k, total);
    }
  // Pairs: run k of each design, both completed and verified.
  const pairs: [MigrateRun, MigrateRun][] = [];
  for (let i = o.warmup; i < o.warmup + o.runs; i++) {
    const a = runs.lockless[i];
    const b = runs.locked[i];
    if (a.verified && b.verified) pairs.push([a, b]);
  }
  let ratio: MigratePerfResult["ratio"] = null;
  if (pairs.length > 0) {
    ratio = {};
    for (const m of MIGRATE_METRICS) {
      const a = pairs.map((p) => p[0][m]);
      const b = pairs.map((p) => p[1][m]);
      // A ratio over a zero median (e.g. a sync below the timer's resolution) says nothing.
      if (b.some((x) => x <= 0) || a.some((x) => x <= 0)) continue;
      const r = pairedRatio(a, b);
      ratio[m] = { ...r, verdict: verdict(r, ...VERDICTS[m]) };
    }
  }
  return {
    options: o,
    results: { locked: designStats(runs.locked), lockless: designStats(runs.lockless) },
    ratio,
    pairs: pairs.length,
    elapsedMs: performance.now() - t0,
  };
}

const LABELS: Record<MigrateMetric, [string, (x: number) => string]> = {
  totalTimeMs: ["total time", (x) => `${x.toFixed(0)} ms`],
  downtimeMs: ["downtime", (x) => `${x.toFixed(1)} ms`],
  rounds: ["rounds", (x) => x.toFixed(1)],
  transferredBytes: ["transferred", (x) => `${(x / 2 ** 20).toFixed(1)} MiB`],
  guestRate: ["guest throughput", (x) => `${(x / 1e6).toFixed(2)}M/s`],
  finalSyncMs: ["final sync", (x) => `${x.toFixed(2)} ms`],
};

/** The human table: per metric, each design's median [CI], and the ratio with its verdict. */
export function formatMigratePerf(r: MigratePerfResult): string {
  const o = r.options;
  const out = [
    `migrate-perf: ${o.runs} runs per design (+${o.warmup} warm-up), alternated locked/lockless, each a kvmmu migrate --local`,
    `  guest ${(o.memoryBytes / 2 ** 20).toFixed(0)} MiB x ${o.vcpus} vCPU, ${o.mode}, ${o.logMode}, max-bandwidth ${o.maxBandwidth > 0 ? `${(o.maxBandwidth / 2 ** 20).toFixed(1)} MiB/s` : "unlimited"}, downtime-limit ${o.downtimeLimitMs} ms, min-rounds ${o.minRounds}${o.autoConverge ? ", auto-converge" : ""}`,
    `  completed and verified: locked ${r.results.locked.completed}/${o.runs}, lockless ${r.results.lockless.completed}/${o.runs}; pairs ${r.pairs}`,
    "",
    `  ${"metric".padEnd(17)} ${"locked median [95% CI]".padEnd(34)} ${"lockless median [95% CI]".padEnd(34)} lockless/locked`,
  ];
  for (const m of MIGRATE_METRICS) {
    const [label, f] = LABELS[m];
    const cell = (s: Summary | undefined): string =>
      s ? `${f(s.median)} [${f(s.ci95[0])}, ${f(s.ci95[1])}]` : "-";
    const ra = r.ratio?.[m];
    out.push(
      `  ${label.padEnd(17)} ${cell(r.results.locked.stats[m]).padEnd(34)} ${cell(r.results.lockless.stats[m]).padEnd(34)} ${ra ? `${formatRatio(ra)} ${ra.verdict}` : "-"}`,
    );
  }
  const failed = [...r.results.locked.runs, ...r.results.lockless.runs].filter((x) => !x.verified);
  for (const x of failed.slice(0, 6))
    out.push(`  ${x.wp}${x.warmup ? " (warm-up)" : ""}: ${x.status}${x.error ? `, ${x.error}` : ""}`);
  out.push(`  ${(r.elapsedMs / 1000).toFixed(1)} s in all`);
  return out.join("\n");
}

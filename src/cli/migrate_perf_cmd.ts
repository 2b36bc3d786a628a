/**
 * `kvmmu migrate-perf`: designs (default locked and lockless) compared end to end, over whole
 * local migrations alternated between the designs (src/bench/migrate_perf.ts).
 * A command of its own, as dirty-log-perf is beside dirty-log-test: it runs many migrations and
 * prints statistics, where `migrate` runs one and verifies it.
 */
import { Command } from "commander";
import {
  formatMigratePerf,
  migratePerf,
  MIGRATE_PERF_DEFAULTS,
  MigratePerfOptions,
  THROTTLES,
} from "../bench/migrate_perf.js";
import { checkOutput, envelope, finished, writeResult } from "../bench/result.js";
import { LOG_MODES } from "../migration/log_sync.js";
import { DEFAULT_BASELINE, designNames, parseDesignList } from "../mmu/design.js";
import { einval } from "../errors.js";
import { MAX_CHANNELS } from "../migration/multifd.js";
import { parseIntIn, parseList, parseNumberIn, parseSize, progress, withFlagNames } from "./parse.js";

/** --working-set: a whole number of pages, at least one. */
export function workingSetArg(v: unknown): number {
  const ws = parseSize("--working-set", String(v));
  if (ws < 4096 || ws % 4096 !== 0)
    throw einval("--working-set", `must be a multiple of 4K, at least 4K, got ${String(v)}`);
  return ws;
}

function baselineArg(v: unknown): string {
  const l = parseDesignList("--baseline", String(v));
  if (l.length !== 1) throw einval("--baseline", "takes one design");
  return l[0];
}

/** migrate-perf's flags as MigratePerfOptions; bad values are usage errors (EINVAL). */
/** `wpIsDefault`: --wp was not given (commander's value source), so --throttle may pick one design. */
function perfOptions(
  a: Record<string, string | boolean | undefined>,
  wpIsDefault: boolean,
): MigratePerfOptions {
  const mode = parseList("--mode", String(a["mode"]), ["tdp", "shadow"] as const);
  const logMode = parseList("--log-mode", String(a["logMode"]), LOG_MODES);
  if (mode.length !== 1) throw einval("--mode", "takes one value");
  if (logMode.length !== 1) throw einval("--log-mode", "takes one value");
  const o: MigratePerfOptions = {
    runs: parseIntIn("--runs", String(a["runs"]), 1, 1000),
    warmup: parseIntIn("--warmup", String(a["warmup"]), 0, 100),
    memoryBytes: parseSize("--memory", String(a["memory"])),
    vcpus: parseIntIn("--vcpus", String(a["vcpus"]), 1, 64),
    mode: mode[0],
    logMode: logMode[0],
    maxBandwidth: parseSize("--max-bandwidth", String(a["maxBandwidth"])),
    downtimeLimitMs: parseIntIn("--downtime-limit", String(a["downtimeLimit"]), 1, 600_000),
    minRounds: parseIntIn("--min-rounds", String(a["minRounds"]), 1, 1000),
    autoConverge: a["autoConverge"] === true,
    timeoutMs: parseIntIn("--timeout", String(a["timeout"]), 1, 86_400_000),
    warmupMs: parseIntIn("--guest-warmup", String(a["guestWarmup"]), 0, 600_000),
    wp: parseDesignList("--wp", String(a["wp"])),
    baseline: baselineArg(a["baseline"]),
    loopbackBytes: parseSize("--loopback", String(a["loopback"])),
  };
  if (a["workingSet"] !== undefined) o.workingSetBytes = workingSetArg(a["workingSet"]);
  if (a["dirtyRate"] !== undefined)
    o.dirtyRateBytes = parseNumberIn("--dirty-rate", String(a["dirtyRate"]), 0.01, 1e6) * 2 ** 20;
  if (o.loopbackBytes! < 1 << 20) throw einval("--loopback", "must be at least 1M");
  if (a["insecurePlaintext"] === true) o.tls = "none";
  throttleArgs(a, o, wpIsDefault);
  channelArgs(a, o);
  return o;
}

/** --channels LIST: multifd channel counts compared, alternated, with one design. */
function channelArgs(a: Record<string, string | boolean | undefined>, o: MigratePerfOptions): void {
  if (a["channels"] === undefined) return;
  const list = String(a["channels"]).split(",");
  o.channels = list.map((x) => parseIntIn("--channels", x, 1, MAX_CHANNELS));
  if (new Set(o.channels).size !== o.channels.length) throw einval("--channels", "a count is listed twice");
  if (o.throttle) throw einval("--channels", "not with --throttle (one comparison at a time)");
  // --wp's default is a pair of designs: with --channels, migrate's default design.
  if (a["wp"] === "locked,lockless") o.wp = ["lockless"];
  if (o.wp!.length !== 1) throw einval("--wp", "with --channels: one design");
}

/** --throttle and the dirty ring's flags into `o`; usage errors are EINVAL naming the flag. */
function throttleArgs(
  a: Record<string, string | boolean | undefined>,
  o: MigratePerfOptions,
  wpIsDefault: boolean,
): void {
  if (a["throttle"] !== undefined) {
    o.throttle = parseList("--throttle", String(a["throttle"]), THROTTLES);
    // --wp's default is a pair of designs: with --throttle, migrate's default design. A --wp
    // given as the default's value is the user's: two designs, refused below.
    if (wpIsDefault) o.wp = ["lockless"];
    if (o.wp!.length !== 1) throw einval("--wp", "with --throttle: one design");
    if (o.autoConverge) throw einval("--auto-converge", "with --throttle: list auto-converge there instead");
    o.dirtyLimit = parseIntIn("--dirty-limit", String(a["dirtyLimit"]), 1, 1_000_000);
    o.dirtyLimitPeriodMs = parseIntIn("--dirty-limit-period", String(a["dirtyLimitPeriod"]), 1, 600_000);
  }
  if (a["dirtyRingSize"] !== undefined)
    o.dirtyRingSize = parseIntIn("--dirty-ring-size", String(a["dirtyRingSize"]), 256, 65536);
}

const THROTTLE_HELP = `compare throttles instead of designs, alternated: ${THROTTLES.join(", ")} (a comma list; --wp then names one design; dirty-limit needs --log-mode dirty-ring)`;

/** --throttle's companions. */
function throttleOptions(c: Command): Command {
  return c
    .option(
      "--dirty-limit <MB/s>",
      "with --throttle dirty-limit: the quota per vCPU (QEMU's vcpu-dirty-limit)",
      "1",
    )
    .option("--dirty-limit-period <ms>", "with --throttle dirty-limit: ms between two measurements", "1000")
    .option(
      "--dirty-ring-size <entries>",
      "with --log-mode dirty-ring: entries per vCPU ring (default 4096)",
    );
}

/** The library's option names as this command's flags, for its usage errors. */
const PERF_FLAGS: Record<string, string> = {
  throttle: "--throttle",
  logMode: "--log-mode",
  dirtyLimit: "--dirty-limit",
  dirtyLimitPeriodMs: "--dirty-limit-period",
  dirtyRingSize: "--dirty-ring-size",
  autoConverge: "--auto-converge",
  wp: "--wp",
};

export function registerMigratePerf(program: Command): void {
  const d = MIGRATE_PERF_DEFAULTS;
  throttleOptions(program.command("migrate-perf"))
    .description(
      "the same live migration with each design (default locked and lockless), alternated, with bootstrap CIs",
    )
    .option(
      "--wp <list>",
      `designs, alternated in this order: ${designNames().join(", ")}, a comma list, or all`,
      "locked,lockless",
    )
    .option("--baseline <design>", "the design the ratios divide by", DEFAULT_BASELINE)
    .option("-n, --runs <n>", "measured migrations per design", String(d.runs))
    .option("--warmup <n>", "warm-up pairs, left out of the statistics", String(d.warmup))
    .option("-b, --memory <size>", "guest memory (suffix k/m/g)", "16M")
    .option("-v, --vcpus <n>", "vCPUs", String(d.vcpus))
    .option("--mode <mode>", "tdp or shadow", d.mode)
    .option("--log-mode <mode>", `dirty page collection: ${LOG_MODES.join(", ")}`, d.logMode)
    .option("--max-bandwidth <size>", "bytes per second (suffix k/m/g); 0: unlimited", "32M")
    .option("--downtime-limit <ms>", "longest the guest may stop at switch-over", String(d.downtimeLimitMs))
    .option("--min-rounds <n>", "pre-copy rounds before switch-over may happen", String(d.minRounds))
    .option("--auto-converge", "throttle the guest when it dirties faster than the link sends", false)
    .option("--throttle <list>", THROTTLE_HELP)
    .option(
      "--channels <list>",
      `compare multifd channel counts instead of designs, alternated (e.g. 1,4; 1..${MAX_CHANNELS}; --wp then names one design)`,
    )
    .option("--timeout <ms>", "per migration: cancel when not converged by then", String(d.timeoutMs))
    .option("--guest-warmup <ms>", "per migration: the guest runs this long first", String(d.warmupMs))
    .option(
      "--working-set <size>",
      "per migration: the guest fills all its memory, then rewrites only this much (as migrate's)",
    )
    .option("--dirty-rate <MB/s>", "per migration: bound the guest's dirtying (MiB/s, as migrate's)")
    .option(
      "--loopback <size>",
      "bytes the raw loopback reference (a plain socket pair) moves, before the runs and after",
      "256M",
    )
    .option(
      "--insecure-plaintext",
      "INSECURE: migrate without TLS (as migrate's), to measure the stream without the cipher",
      false,
    )
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the result, in the saved-results schema, to this file")
    .action(async (a: Record<string, string | boolean | undefined>, cmd: Command) => {
      if (a["output"] !== undefined) checkOutput(String(a["output"]));
      const o = perfOptions(a, cmd.getOptionValueSource("wp") === "default");
      const r = await withFlagNames(PERF_FLAGS, () =>
        migratePerf(
          o,
          (run, k, of) =>
            progress(
              `migration ${k}/${of} (${run.wp}${run.channels !== undefined ? `, ${run.channels} channels` : ""}${run.warmup ? ", warm-up" : ""}): ${run.status}, ${run.totalTimeMs.toFixed(0)} ms, downtime ${run.downtimeMs.toFixed(1)} ms`,
            ),
          progress,
        ),
      );
      const doc = finished({
        ...envelope("migrate-perf", r.options),
        results: r.results,
        ratio: r.ratio,
        ratios: r.ratios,
        pairs: r.pairs,
        loopback: r.loopback,
        loopbackBytesPerSec: r.loopbackBytesPerSec,
        bulkVsLoopback: r.bulkVsLoopback,
        elapsedMs: r.elapsedMs,
      });
      if (a["output"] !== undefined) writeResult(String(a["output"]), doc);
      process.stdout.write(a["json"] ? JSON.stringify(doc) + "\n" : formatMigratePerf(r) + "\n");
      // Every measured migration must complete and verify: a benchmark over failures means nothing.
      const all = Object.values(r.results)
        .flatMap((d) => d.runs)
        .filter((x) => !x.warmup);
      if (!all.every((x) => x.verified)) process.exitCode = 1;
    });
}

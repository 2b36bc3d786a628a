/**
 * `kvmmu migrate` and `kvmmu migrate-incoming`: pre-copy (or, with --postcopy, post-copy) live migration of the migration-test
 * guest between two kvmmu processes over TCP (or, with --local, to a destination process this
 * command starts itself on loopback).
 */
import { Command } from "commander";
import { einval } from "../errors.js";
import { designNames, parseDesignList } from "../mmu/design.js";
import { FAULTS } from "../migration/fault.js";
import { LOG_MODES } from "../migration/log_sync.js";
import { layoutFor } from "../migration/guest_vm.js";
import type { DirtyLimitReport, MigrationReport, RoundRecord } from "../migration/report.js";
import {
  GuestMigrationOptions,
  IncomingResult,
  migrateIncoming,
  migrateTo,
  MigrationResult,
} from "../migration/migrate.js";
import { migrateLocal } from "../migration/local.js";
import { MAX_CHANNELS } from "../migration/multifd.js";
import type { MigrationSecurity } from "../migration/tls.js";
import { parseIntIn, parseNumberIn, parseOne, parseSize, progress, withFlagNames } from "./parse.js";
import { checkOutput, envelope, finished, writeResult } from "../bench/result.js";
import { CliTrace, openTrace, traceDone, traceFlags } from "./trace_opt.js";

const KEY_ENV = "KVMMU_MIGRATE_KEY";

function hostPort(opt: string, v: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(v.trim());
  if (!m || m[1] === "") throw einval(opt, `"${v}" is not HOST:PORT`);
  return { host: m[1].replace(/^\[(.*)\]$/, "$1"), port: parseIntIn(opt, m[2], 0, 65535) };
}

function keyOf(a: Record<string, unknown>): string {
  const k = (a["key"] as string | undefined) ?? process.env[KEY_ENV];
  if (k === undefined) throw einval("--key", `missing: give --key K or set ${KEY_ENV}`);
  if (k.length < 8) throw einval("--key", "must be at least 8 characters");
  return k;
}

/** --tls-psk (the default), --tls-creds DIR or --insecure-plaintext: at most one. */
function securityOf(a: Record<string, unknown>): MigrationSecurity {
  const given = ["tlsPsk", "tlsCreds", "insecurePlaintext"].filter(
    (k) => a[k] !== undefined && a[k] !== false,
  );
  if (given.length > 1)
    throw einval("--tls-psk", "give at most one of --tls-psk, --tls-creds DIR and --insecure-plaintext");
  if (a["insecurePlaintext"] === true) return { tls: "none" };
  if (a["tlsCreds"] !== undefined)
    return { tls: "x509", credsDir: a["tlsCreds"] as string, verifyPeer: a["tlsVerifyPeer"] === true };
  if (a["tlsVerifyPeer"] === true) throw einval("--tls-verify-peer", "needs --tls-creds DIR");
  return { tls: "psk" };
}

/** The flags both commands take to protect the stream. */
function securityOptions(c: Command): Command {
  return c
    .option("--tls-psk", "TLS 1.2 with a pre-shared key derived from --key (the default)", false)
    .option(
      "--tls-creds <dir>",
      "TLS 1.3 with x509 certificates from DIR: ca-cert.pem, and server-cert.pem + server-key.pem " +
        "(destination) or client-cert.pem + client-key.pem (source, optional)",
    )
    .option(
      "--insecure-plaintext",
      "INSECURE: no TLS; anyone on the path can read the guest's memory (the key's handshake and a " +
        "keyed end digest still refuse a changed stream)",
      false,
    );
}

/** The limit a migration's downtime was set against, and whether the measured one went past it. */
export function downtimeVerdict(
  r: Pick<MigrationReport, "status" | "downtimeMs">,
  limitMs: number,
): { downtimeLimitMs: number; downtimeExceeded: boolean } {
  return { downtimeLimitMs: limitMs, downtimeExceeded: r.status === "completed" && r.downtimeMs > limitMs };
}

/** "downtime 555.0 ms > limit 300 ms" when a completed migration went past its limit. */
export function downtimeText(r: {
  downtimeMs: number;
  downtimeLimitMs: number;
  downtimeExceeded: boolean;
}): string {
  return r.downtimeExceeded
    ? `downtime ${r.downtimeMs.toFixed(1)} ms > limit ${r.downtimeLimitMs} ms`
    : `downtime ${r.downtimeMs.toFixed(1)} ms (limit ${r.downtimeLimitMs} ms)`;
}

export function formatReport(
  r: MigrationReport & { downtimeLimitMs: number; downtimeExceeded: boolean },
): string {
  const out = [
    `migrate: ${r.status}${r.downtimeExceeded ? `, but downtime ${r.downtimeMs.toFixed(1)} ms > limit ${r.downtimeLimitMs} ms` : ""} (${r.mode}, ${r.logMode})`,
  ];
  for (const x of r.rounds)
    out.push(
      `  round ${String(x.round).padStart(2)}: transferred ${(x.transferred / 2 ** 20).toFixed(1)} MiB, remaining ${(x.remaining / 2 ** 20).toFixed(1)} MiB, ` +
        `${x.mbps} Mbit/s, dirty ${x["dirty-pages-rate"]} pages/s, expected downtime ${x["expected-downtime"]} ms, throttle ${x["cpu-throttle-percentage"]}%`,
    );
  out.push(
    `  total ${r.totalTimeMs.toFixed(0)} ms, ${downtimeText(r)}, transferred ${(r.transferredBytes / 2 ** 20).toFixed(1)} MiB`,
    `  verify: ${r.verify.pagesCompared} pages compared, ${r.verify.mismatches} mismatches, guest invariant ${String(r.verify.guestInvariant)}`,
  );
  const pc = r.postcopy;
  if (pc)
    out.push(
      `  post-copy: ${pc.discardedPages} pages owed at switch-over (${pc.requestedPages} requested, ${pc.backgroundPages} background) in ${pc.postcopyTimeMs.toFixed(0)} ms; ` +
        `${pc["postcopy-requests"]} page requests, blocktime ${pc["postcopy-blocktime"].toFixed(1)} ms ` +
        `(per vCPU ${pc["postcopy-vcpu-blocktime"].map((x) => x.toFixed(1)).join(", ")}; worst wait ${Math.max(0, ...pc["postcopy-vcpu-blocktime-max"]).toFixed(1)} ms)` +
        (pc.recoveries > 0
          ? `; link dropped and recovered ${pc.recoveries}x (paused ${pc.pausedMs.toFixed(0)} ms, ${pc.resentPages} pages sent again)`
          : ""),
    );
  if (r.dirtyLimit) out.push(`  ${dirtyLimitText(r.dirtyLimit)}`);
  for (const p of r.verify.problems) out.push(`    ${p}`);
  if (r.error) out.push(`  error: ${r.error.message}`);
  return out.join("\n");
}

/** One design from --wp (any registered name). */
/** What dirty-limit did: never triggered, triggered too late to measure, or ran. */
export function dirtyLimitText(dl: DirtyLimitReport): string {
  const head = `dirty-limit ${dl["vcpu-dirty-limit"]} MB/s per vCPU: `;
  if (!dl.started) return head + "never triggered (the guest did not outpace the link twice in a row)";
  // Started, but no period ended: no rate was measured and no vCPU was slowed.
  if (dl.periods === 0)
    return (
      head +
      `not engaged: the migration ended within the first period (${dl.periodMs} ms) after the trigger` +
      (dl.ringFullReaps > 0 ? `, ${dl.ringFullReaps} ring-full reaps` : "")
    );
  return (
    head +
    `ran (${dl.periods} period${dl.periods === 1 ? "" : "s"} of ${dl.periodMs} ms, ${dl.ringFullReaps} ring-full reaps); last rates ${dl.rates.join(", ")} MB/s, sleep per ring-full ${dl.throttleUsPerFull.map((x) => (x / 1000).toFixed(1)).join(", ")} ms`
  );
}

function oneDesign(v: unknown): string {
  const l = parseDesignList("--wp", String(v));
  if (l.length !== 1) throw einval("--wp", "takes one value");
  return l[0];
}

/** `kvmmu migrate`'s flags as the library's options; bad values are usage errors (EINVAL). */
function migrateArgs(a: Record<string, string | boolean | undefined>): {
  o: GuestMigrationOptions;
  local: boolean;
  to: { host: string; port: number } | null;
  key: string | null;
  security: MigrationSecurity;
  resumeTo?: { host: string; port: number };
} {
  const logMode = parseOne("--log-mode", String(a["logMode"]), LOG_MODES);
  const wp = oneDesign(a["wp"]);
  const mode = parseOne("--mode", String(a["mode"]), ["tdp", "shadow"] as const);
  const fault = a["fault"] === undefined ? undefined : parseOne("--fault", String(a["fault"]), FAULTS);
  const local = a["local"] === true;
  if (local === (a["to"] !== undefined))
    throw einval("--to", "give exactly one of --to HOST:PORT and --local");
  if (fault === "kill-destination" && !local) throw einval("--fault", "kill-destination needs --local");
  const resume = a["resume"] === true;
  if (resume && a["postcopy"] !== true) throw einval("--resume", "needs --postcopy (it recovers post-copy)");
  if (a["resumeTo"] !== undefined && (!resume || local))
    throw einval("--resume-to", "needs --resume and --to (a --local destination stays where it is)");
  const to = local ? null : hostPort("--to", String(a["to"]));
  const key = local ? null : keyOf(a);
  const security = securityOf(a);
  const memoryBytes = parseSize("--memory", String(a["memory"]));
  const ws = a["workingSet"] === undefined ? undefined : parseSize("--working-set", String(a["workingSet"]));
  if (ws !== undefined && (ws < 4096 || ws % 4096 !== 0))
    throw einval("--working-set", `must be a multiple of 4K, at least 4K, got ${String(a["workingSet"])}`);
  if (ws !== undefined && ws > memoryBytes - 4096)
    throw einval(
      "--working-set",
      `${String(a["workingSet"])} is more than the guest's memory (--memory less its state page)`,
    );
  const dirtyRateBytes =
    a["dirtyRate"] === undefined
      ? undefined
      : parseNumberIn("--dirty-rate", String(a["dirtyRate"]), 0.01, 1e6) * 2 ** 20;
  const layout = layoutFor(memoryBytes, parseIntIn("--vcpus", String(a["vcpus"]), 1, 64), {
    workingSetBytes: ws,
    dirtyRateBytes,
  });
  const o: GuestMigrationOptions = {
    wp,
    mode,
    memoryBytes: layout.memoryBytes,
    vcpus: layout.vcpus,
    workingSetBytes: ws,
    dirtyRateBytes,
    logMode,
    downtimeLimitMs: parseIntIn("--downtime-limit", String(a["downtimeLimit"]), 1, 600_000),
    maxBandwidth: parseSize("--max-bandwidth", String(a["maxBandwidth"])),
    autoConverge: a["autoConverge"] === true,
    minRounds: parseIntIn("--min-rounds", String(a["minRounds"]), 1, 1000),
    maxTimeMs: parseIntIn("--timeout", String(a["timeout"]), 1, 86_400_000),
    fault,
    postcopy: a["postcopy"] === true,
    postcopyAfter: parseIntIn("--postcopy-after", String(a["postcopyAfter"]), 1, 1000),
    warmupMs: parseIntIn("--warmup", String(a["warmup"]), 0, 600_000),
    resume,
    resumeTimeoutMs: parseIntIn("--resume-timeout", String(a["resumeTimeout"]), 1, 86_400_000),
    faultRepeat: parseIntIn("--fault-repeat", String(a["faultRepeat"]), 1, 1000),
    channels: channelsOf(a),
  };
  if (o.channels! > 1 && o.postcopy)
    throw einval("--channels", "not with --postcopy (post-copy over multifd channels is not built)");
  // That these need --log-mode dirty-ring is the library's check (checkGuestOptions).
  if (a["dirtyRingSize"] !== undefined)
    o.dirtyRingSize = parseIntIn("--dirty-ring-size", String(a["dirtyRingSize"]), 256, 65536);
  if (a["dirtyLimit"] !== undefined) {
    o.dirtyLimit = parseIntIn("--dirty-limit", String(a["dirtyLimit"]), 1, 1_000_000);
    o.dirtyLimitPeriodMs = parseIntIn("--dirty-limit-period", String(a["dirtyLimitPeriod"]), 1, 600_000);
  }
  const resumeTo = a["resumeTo"] === undefined ? undefined : hostPort("--resume-to", String(a["resumeTo"]));
  return { o, local, to, key, security, resumeTo };
}

/** The library's option names as `migrate`'s flags, for its usage errors (withFlagNames). */
const MIGRATE_FLAGS: Record<string, string> = {
  logMode: "--log-mode",
  dirtyLimit: "--dirty-limit",
  dirtyLimitPeriodMs: "--dirty-limit-period",
  dirtyRingSize: "--dirty-ring-size",
  autoConverge: "--auto-converge",
};

/**
 * Where `migrate --local` runs the destination: in a process of its own, but with --trace in this
 * one, so that one file holds both sides (a process each); kill-destination needs the process.
 */
function localWhere(trace: CliTrace | null, o: GuestMigrationOptions): "process" | "inline" {
  return trace !== null && o.fault !== "kill-destination" ? "inline" : "process";
}

/** --channels N (multifd): 1..MAX_CHANNELS. */
function channelsOf(a: Record<string, string | boolean | undefined>): number {
  return parseIntIn("--channels", String(a["channels"]), 1, MAX_CHANNELS);
}

/** `kvmmu migrate`: one migration through the library, printed (and saved) as before. */
async function migrateAction(a: Record<string, string | boolean | undefined>): Promise<void> {
  if (a["output"] !== undefined) checkOutput(String(a["output"]));
  const { o: o0, local, to, key, security, resumeTo } = migrateArgs(a);
  const trace = openTrace(a, "migrate");
  const o: GuestMigrationOptions = trace ? { ...o0, onVm: trace.onVm } : o0;
  const onRound = (r: RoundRecord): void =>
    progress(`round ${r.round}: remaining ${(r.remaining / 2 ** 20).toFixed(1)} MiB, ${r.mbps} Mbit/s`);
  const onPostcopyRun = (): void => progress("post-copy: the guest runs on the destination");
  let out: MigrationResult;
  try {
    out = await withFlagNames(MIGRATE_FLAGS, async () =>
      local
        ? (await migrateLocal({ ...o, destination: localWhere(trace, o), security, onRound, onPostcopyRun }))
            .source
        : await migrateTo({ ...o, ...to!, key: key!, security, resumeTo, onRound, onPostcopyRun }),
    );
  } finally {
    if (trace) traceDone(trace);
  }
  // One saved result, the same on stdout (--json) and in --output: the envelope every command has.
  const results = { ...out, ...downtimeVerdict(out, o.downtimeLimitMs ?? 300) };
  const doc = finished({
    ...envelope("migrate", {
      downtimeLimitMs: o.downtimeLimitMs,
      maxBandwidth: o.maxBandwidth,
      autoConverge: o.autoConverge,
      dirtyRingSize: o.dirtyRingSize,
      dirtyLimit: o.dirtyLimit,
      dirtyLimitPeriodMs: o.dirtyLimitPeriodMs,
      minRounds: o.minRounds,
      maxTimeMs: o.maxTimeMs,
      log: o.logMode,
      fault: o.fault,
      postcopy: o.postcopy,
      postcopyAfter: o.postcopyAfter,
      resume: o.resume,
      channels: o.channels,
      wp: o.wp,
      mode: o.mode,
      local,
      memoryBytes: out.memoryBytes,
      workingSetBytes: o.workingSetBytes,
      dirtyRateBytes: o.dirtyRateBytes,
    }),
    results,
  });
  if (a["output"] !== undefined) writeResult(String(a["output"]), doc);
  process.stdout.write(a["json"] ? JSON.stringify(doc) + "\n" : formatReport(results) + "\n");
  const ok = out.status === "completed" && out.verify.mismatches === 0 && out.verify.guestInvariant === true;
  if (!ok) process.exitCode = 1;
}

export function registerMigrate(program: Command): void {
  const cmd = program.command("migrate");
  securityOptions(cmd)
    .description(
      "live-migrate a running migration-test guest (pre-copy or post-copy) and verify it byte for byte",
    )
    .option("--to <host:port>", "destination (kvmmu migrate-incoming)")
    .option("--local", "start the destination as a second process on loopback", false)
    .option("--key <k>", `pre-shared key (or ${KEY_ENV}); --local makes one`)
    .option("--downtime-limit <ms>", "longest the guest may stop at switch-over", "300")
    .option("--max-bandwidth <size>", "bytes per second (suffix k/m/g); 0: unlimited", "0")
    .option("--auto-converge", "throttle the guest when it dirties faster than the link sends", false)
    .option("--log-mode <mode>", `dirty page collection: ${LOG_MODES.join(", ")}`, "dirty-log")
    .option(
      "--dirty-ring-size <entries>",
      "entries per vCPU ring with --log-mode dirty-ring (a power of two; default 4096)",
    )
    .option(
      "--dirty-limit <MB/s>",
      "QEMU's dirty-limit: once the guest dirties faster than the link sends, hold each vCPU to this many MB/s " +
        "(it sleeps in its ring-full exits); needs --log-mode dirty-ring",
    )
    .option(
      "--dirty-limit-period <ms>",
      "dirty-limit: ms between two measurements of each vCPU's rate",
      "1000",
    )
    .option("--wp <wp>", `design: ${designNames().join(", ")}`, "lockless")
    .option("-b, --memory <size>", "guest memory (suffix k/m/g)", "32M")
    .option("-v, --vcpus <n>", "vCPUs", "1")
    .option(
      "--working-set <size>",
      "the guest first fills all its memory with non-zero data, then rewrites only this much (suffix k/m/g; default: all of it)",
    )
    .option(
      "--dirty-rate <MB/s>",
      "bound the guest's dirtying to this many MiB per second (all vCPUs; after the fill)",
    )
    .option("--mode <mode>", "tdp or shadow", "tdp")
    .option("--min-rounds <n>", "pre-copy rounds (the bulk round counts) before switch-over may happen", "1")
    .option("--warmup <ms>", "let the guest run this long before migrating", "200")
    .option("--timeout <ms>", "cancel (the source keeps running) when not converged by then", "60000")
    .option(
      "--postcopy",
      "post-copy: after --postcopy-after rounds the guest runs on the destination, which fetches missing pages on demand. " +
        "If either side fails during post-copy the guest is lost (its memory is split between them), " +
        "unless the link merely dropped and both sides were given --resume",
      false,
    )
    .option(
      "--postcopy-after <rounds>",
      "pre-copy rounds (the bulk round counts) before post-copy starts",
      "1",
    )
    .option(
      "--resume",
      "post-copy recovery (QEMU's migrate -r): if the link drops during post-copy, pause (postcopy-paused) and " +
        "reconnect, with the same key and TLS, to the destination (started with --resume too), which says which " +
        "pages it holds; post-copy then goes on",
      false,
    )
    .option("--resume-to <host:port>", "with --resume: reconnect there instead of --to")
    .option("--resume-timeout <ms>", "with --resume: give up (guest lost) after this long paused", "60000")
    .option(
      "--fault <kind>",
      `inject a failure: ${FAULTS.join(", ")} (kill-destination with --postcopy: once post-copy has started; ` +
        "drop-link, post-copy only: cut the connection a few sections after postcopy-run, or after a resume)",
    )
    .option("--fault-repeat <n>", "inject --fault into this many connections (drop-link with --resume)", "1")
    .option(
      "--channels <n>",
      `multifd (QEMU's): pages over N extra connections, a worker each at both ends, synced every round (1..${MAX_CHANNELS}; pre-copy only)`,
      "1",
    )
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the result, in the saved-results schema, to this file");
  traceFlags(cmd).action(migrateAction);
  registerMigrateIncoming(program);
}

function registerMigrateIncoming(program: Command): void {
  const cmd = program.command("migrate-incoming");
  securityOptions(cmd)
    .option("--tls-verify-peer", "with --tls-creds: refuse a source without a client certificate", false)
    .option("--idle-timeout <ms>", "fail (ETIMEDOUT) when the source sends nothing this long", "30000")
    .description("wait for one authenticated `kvmmu migrate` and run the guest it brings")
    .option(
      "--listen <host:port>",
      "address to listen on (loopback by default; port 0: any)",
      "127.0.0.1:4444",
    )
    .option("--key <k>", `pre-shared key (or ${KEY_ENV})`)
    .option("--wp <wp>", `design: ${designNames().join(", ")}`, "lockless")
    .option("--mode <mode>", "tdp or shadow", "tdp")
    .option("--max-memory <size>", "largest guest accepted", "4G")
    .option("--run-after <ms>", "keep running the migrated guest this long, then stop", "1000")
    .option(
      "--resume",
      "post-copy recovery (QEMU's migrate-recover): if the link drops during post-copy, pause (the guest waits " +
        "on its missing pages), keep listening, and resume with the source that reconnects (`kvmmu migrate --resume`)",
      false,
    )
    .option("--resume-timeout <ms>", "with --resume: give up (guest lost) after this long paused", "60000")
    .option(
      "--channels <n>",
      `multifd channels to accept (1..${MAX_CHANNELS}; default: as many as the source asks)`,
    )
    .option("--json", "print one JSON object on stdout (the listening address goes to stderr)", false);
  traceFlags(cmd).action(async (a: Record<string, string | boolean | undefined>) => {
    const key = keyOf(a);
    const { host, port } = hostPort("--listen", String(a["listen"]));
    const trace = openTrace(a, "migrate-incoming");
    let rep: IncomingResult;
    try {
      rep = await migrateIncoming({
        onVm: trace?.onVm,
        host,
        port,
        key,
        security: securityOf(a),
        idleTimeoutMs: parseIntIn("--idle-timeout", String(a["idleTimeout"]), 1, 86_400_000),
        wp: oneDesign(a["wp"]),
        mode: parseOne("--mode", String(a["mode"]), ["tdp", "shadow"] as const),
        maxMemory: parseSize("--max-memory", String(a["maxMemory"])),
        runAfterMs: parseIntIn("--run-after", String(a["runAfter"]), 0, 86_400_000),
        resume: a["resume"] === true,
        resumeTimeoutMs: parseIntIn("--resume-timeout", String(a["resumeTimeout"]), 1, 86_400_000),
        channels: a["channels"] === undefined ? undefined : channelsOf(a),
        onListening: (p) => {
          const line = `kvmmu migrate-incoming: listening on ${host}:${p}\n`;
          if (a["json"]) process.stderr.write(line);
          else process.stdout.write(line);
        },
      });
    } finally {
      if (trace) traceDone(trace);
    }
    process.stdout.write(
      a["json"]
        ? JSON.stringify(rep) + "\n"
        : `migrate-incoming: ${rep.status}, ${rep.pagesApplied} pages applied, guest invariant ${String(rep.guestInvariant)}` +
            `${rep.postcopy?.recoveries ? `, link dropped and recovered ${rep.postcopy.recoveries}x` : ""}` +
            `${rep.error ? `; error: ${rep.error.message}` : ""}\n`,
    );
    if (rep.status !== "completed" || rep.guestInvariant !== true) process.exitCode = 1;
  });
}

/**
 * `kvmmu migrate` and `kvmmu migrate-incoming`: pre-copy (or, with --postcopy, post-copy) live migration of the migration-test
 * guest between two kvmmu processes over TCP (or, with --local, to a destination process this
 * command starts itself on loopback).
 */
import { spawn, ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { fileURLToPath } from "node:url";
import { Command } from "commander";
import { einval } from "../errors.js";
import { designNames } from "../mmu/design.js";
import type { MmuModeName, WpName } from "../vm.js";
import { connectOutgoing, listenIncoming } from "../migration/auth.js";
import { createGuestVm, layoutFor, runAndCheck, runGuest } from "../migration/guest_vm.js";
import {
  FAULTS,
  logStrategy,
  LOG_MODES,
  MigrationDestination,
  MigrationReport,
  MigrationSource,
} from "../migration/precopy.js";
import { MigrationError } from "../migration/stream.js";
import { parseIntIn, parseList, parseSize, progress } from "./parse.js";
import { checkOutput, envelope, writeResult } from "../bench/result.js";

const KEY_ENV = "KVMMU_MIGRATE_KEY";
const BIN = fileURLToPath(new URL("../../../bin/kvmmu.js", import.meta.url));

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

function one<T extends string>(opt: string, v: unknown, allowed: readonly T[]): T {
  const l = parseList(opt, String(v), allowed);
  if (l.length !== 1) throw einval(opt, "takes one value");
  return l[0];
}

function formatReport(r: MigrationReport): string {
  const out = [`migrate: ${r.status} (${r.mode}, ${r.logMode})`];
  for (const x of r.rounds)
    out.push(
      `  round ${String(x.round).padStart(2)}: transferred ${(x.transferred / 2 ** 20).toFixed(1)} MiB, remaining ${(x.remaining / 2 ** 20).toFixed(1)} MiB, ` +
        `${x.mbps} Mbit/s, dirty ${x["dirty-pages-rate"]} pages/s, expected downtime ${x["expected-downtime"]} ms, throttle ${x["cpu-throttle-percentage"]}%`,
    );
  out.push(
    `  total ${r.totalTimeMs.toFixed(0)} ms, downtime ${r.downtimeMs.toFixed(1)} ms, transferred ${(r.transferredBytes / 2 ** 20).toFixed(1)} MiB`,
    `  verify: ${r.verify.pagesCompared} pages compared, ${r.verify.mismatches} mismatches, guest invariant ${String(r.verify.guestInvariant)}`,
  );
  const pc = r.postcopy;
  if (pc)
    out.push(
      `  post-copy: ${pc.discardedPages} pages owed at switch-over (${pc.requestedPages} requested, ${pc.backgroundPages} background) in ${pc.postcopyTimeMs.toFixed(0)} ms; ` +
        `${pc["postcopy-requests"]} page requests, blocktime ${pc["postcopy-blocktime"].toFixed(1)} ms ` +
        `(per vCPU ${pc["postcopy-vcpu-blocktime"].map((x) => x.toFixed(1)).join(", ")}; worst wait ${Math.max(0, ...pc["postcopy-vcpu-blocktime-max"]).toFixed(1)} ms)`,
    );
  for (const p of r.verify.problems) out.push(`    ${p}`);
  if (r.error) out.push(`  error: ${r.error.message}`);
  return out.join("\n");
}

/** Starts `kvmmu migrate-incoming` on 127.0.0.1:0 and reads the port it prints. */
async function spawnDestination(
  key: string,
  wp: WpName,
  mode: MmuModeName,
): Promise<{ child: ChildProcess; port: number; err: () => string }> {
  const child = spawn(
    process.execPath,
    [BIN, "migrate-incoming", "--listen", "127.0.0.1:0", "--wp", wp, "--mode", mode, "--run-after", "0"],
    { env: { ...process.env, [KEY_ENV]: key }, stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  child.stderr.on("data", (c: Buffer) => (err += c.toString()));
  const port = await new Promise<number>((res, rej) => {
    const t = setTimeout(
      () => rej(new MigrationError("ETIMEDOUT", "the destination did not start listening in 20 s")),
      20_000,
    );
    child.stdout.on("data", (c: Buffer) => {
      out += c.toString();
      const m = /listening on [^\s]+:(\d+)/.exec(out);
      if (m) {
        clearTimeout(t);
        res(Number(m[1]));
      }
    });
    child.once("exit", (code) => {
      clearTimeout(t);
      rej(
        new MigrationError("EIO", `the destination exited (${String(code)}) before listening: ${err.trim()}`),
      );
    });
  });
  return { child, port, err: () => err };
}

export function registerMigrate(program: Command): void {
  program
    .command("migrate")
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
    .option("--wp <wp>", "MMU design (a registered name: locked, lockless, tdp-mmu, ...)", "lockless")
    .option("-b, --memory <size>", "guest memory (suffix k/m/g)", "32M")
    .option("-v, --vcpus <n>", "vCPUs", "1")
    .option("--mode <mode>", "tdp or shadow", "tdp")
    .option("--min-rounds <n>", "pre-copy rounds (the bulk round counts) before switch-over may happen", "1")
    .option("--warmup <ms>", "let the guest run this long before migrating", "200")
    .option("--timeout <ms>", "cancel (the source keeps running) when not converged by then", "60000")
    .option(
      "--postcopy",
      "post-copy: after --postcopy-after rounds the guest runs on the destination, which fetches missing pages on demand. " +
        "If either side fails during post-copy the guest is lost (its memory is split between them; no recovery)",
      false,
    )
    .option(
      "--postcopy-after <rounds>",
      "pre-copy rounds (the bulk round counts) before post-copy starts",
      "1",
    )
    .option(
      "--fault <kind>",
      `inject a failure: ${FAULTS.join(", ")} (kill-destination with --postcopy: once post-copy has started)`,
    )
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the result, in the saved-results schema, to this file")
    .action(async (a: Record<string, string | boolean | undefined>) => {
      if (a["output"] !== undefined) checkOutput(String(a["output"]));
      const logMode = one("--log-mode", a["logMode"], LOG_MODES);
      const log = logStrategy(logMode);
      const wp = one("--wp", a["wp"], designNames());
      const mode = one("--mode", a["mode"], ["tdp", "shadow"] as const);
      const fault = a["fault"] === undefined ? undefined : one("--fault", a["fault"], FAULTS);
      const local = a["local"] === true;
      if (local === (a["to"] !== undefined))
        throw einval("--to", "give exactly one of --to HOST:PORT and --local");
      if (fault === "kill-destination" && !local) throw einval("--fault", "kill-destination needs --local");
      const to = local ? null : hostPort("--to", String(a["to"]));
      const key = local ? randomBytes(18).toString("base64") : keyOf(a);
      const layout = layoutFor(
        parseSize("--memory", String(a["memory"])),
        parseIntIn("--vcpus", String(a["vcpus"]), 1, 64),
      );
      const opts = {
        downtimeLimitMs: parseIntIn("--downtime-limit", String(a["downtimeLimit"]), 1, 600_000),
        maxBandwidth: parseSize("--max-bandwidth", String(a["maxBandwidth"])),
        autoConverge: a["autoConverge"] === true,
        minRounds: parseIntIn("--min-rounds", String(a["minRounds"]), 1, 1000),
        maxTimeMs: parseIntIn("--timeout", String(a["timeout"]), 1, 86_400_000),
        log,
        fault: fault,
        postcopy: a["postcopy"] === true,
        postcopyAfter: parseIntIn("--postcopy-after", String(a["postcopyAfter"]), 1, 1000),
      };
      const warmup = parseIntIn("--warmup", String(a["warmup"]), 0, 600_000);

      const dst = local ? await spawnDestination(key, wp, mode) : null;
      const target = to ?? { host: "127.0.0.1", port: dst!.port };
      const g = createGuestVm(layout, { wp, mode, logged: true, prepare: (vm) => log.prepare(vm) });
      let report: MigrationReport;
      try {
        await runGuest(g);
        await new Promise((r) => setTimeout(r, warmup));
        const { sock, reader } = await connectOutgoing({ ...target, key });
        const src = new MigrationSource(g, {
          ...opts,
          onRound: (r) => {
            progress(
              `round ${r.round}: remaining ${(r.remaining / 2 ** 20).toFixed(1)} MiB, ${r.mbps} Mbit/s`,
            );
            if (fault === "kill-destination" && !opts.postcopy && r.round === 1) dst?.child.kill("SIGKILL");
          },
          onPostcopyRun: () => {
            progress("post-copy: the guest runs on the destination");
            if (fault === "kill-destination") dst?.child.kill("SIGKILL");
          },
        });
        report = await src.migrate(sock, reader);
        // After "go" (or postcopy-run) the guest is the destination's, or lost: never run it here.
        if (report.status !== "completed" && !report.switchedOver) {
          // Nothing lost: the guest runs on here, every page advancing, invariant intact.
          const chk = await runAndCheck(g);
          report.verify.guestInvariant = chk.ok;
          report.verify.problems = chk.problems;
        }
      } finally {
        await g.vm.stop();
      }
      if (dst) {
        await new Promise<void>((res) => {
          if (dst.child.exitCode !== null || dst.child.signalCode !== null) res();
          else {
            const t = setTimeout(() => {
              dst.child.kill("SIGKILL");
              res();
            }, 20_000);
            dst.child.once("exit", () => {
              clearTimeout(t);
              res();
            });
          }
        });
      }
      const out = {
        ...report,
        wp,
        guestMode: mode,
        memoryBytes: layout.memoryBytes,
        vcpus: layout.vcpus,
      };
      if (a["output"] !== undefined)
        writeResult(String(a["output"]), {
          ...envelope("migrate", { ...opts, log: logMode, wp, mode, local, memoryBytes: layout.memoryBytes }),
          results: out,
        });
      process.stdout.write(a["json"] ? JSON.stringify(out) + "\n" : formatReport(report) + "\n");
      const ok =
        report.status === "completed" &&
        report.verify.mismatches === 0 &&
        report.verify.guestInvariant === true;
      if (!ok) process.exitCode = 1;
    });

  program
    .command("migrate-incoming")
    .description("wait for one authenticated `kvmmu migrate` and run the guest it brings")
    .option(
      "--listen <host:port>",
      "address to listen on (loopback by default; port 0: any)",
      "127.0.0.1:4444",
    )
    .option("--key <k>", `pre-shared key (or ${KEY_ENV})`)
    .option("--wp <wp>", "MMU design (a registered name: locked, lockless, tdp-mmu, ...)", "lockless")
    .option("--mode <mode>", "tdp or shadow", "tdp")
    .option("--max-memory <size>", "largest guest accepted", "4G")
    .option("--run-after <ms>", "keep running the migrated guest this long, then stop", "1000")
    .option("--json", "print one JSON object on stdout (the listening address goes to stderr)", false)
    .action(async (a: Record<string, string | boolean | undefined>) => {
      const key = keyOf(a);
      const { host, port } = hostPort("--listen", String(a["listen"]));
      const wp = one("--wp", a["wp"], designNames());
      const mode = one("--mode", a["mode"], ["tdp", "shadow"] as const);
      const maxMemory = parseSize("--max-memory", String(a["maxMemory"]));
      const runAfter = parseIntIn("--run-after", String(a["runAfter"]), 0, 86_400_000);
      const inc = await listenIncoming({ host, port, key });
      const line = `kvmmu migrate-incoming: listening on ${host}:${inc.port}\n`;
      if (a["json"]) process.stderr.write(line);
      else process.stdout.write(line);
      const { sock, reader } = await inc.accepted;
      const dest = new MigrationDestination({ wp, mode, maxMemory });
      const rep = await dest.receive(sock, reader);
      if (dest.guest) {
        await new Promise((r) => setTimeout(r, runAfter));
        await dest.guest.vm.stop();
      }
      const out = { ...rep, refusedPeers: inc.refused };
      process.stdout.write(
        a["json"]
          ? JSON.stringify(out) + "\n"
          : `migrate-incoming: ${rep.status}, ${rep.pagesApplied} pages applied, guest invariant ${String(rep.guestInvariant)}${rep.error ? `; error: ${rep.error.message}` : ""}\n`,
      );
      if (rep.status !== "completed" || rep.guestInvariant !== true) process.exitCode = 1;
    });
}

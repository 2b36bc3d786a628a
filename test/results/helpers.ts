/** Small saved results for the results tests: real runs of each command, and synthetic variants. */
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { runKvmmu } from "../helpers/cli.js";
import { envelope } from "../../src/bench/result.js";

export const tmp = mkdtempSync(join(tmpdir(), "kvmmu-results-"));

export function read(file: string): Record<string, unknown> {
  return JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>;
}

/** A script under dist/src (catalog, bench) run as its own process. */
export function runScript(rel: string, args: string[]): Promise<{ code: number; out: string; err: string }> {
  const file = fileURLToPath(new URL(`../../src/${rel}`, import.meta.url));
  return new Promise((resolve) =>
    execFile(process.execPath, [file, ...args], { env: { ...process.env, CI: "1" } }, (e, out, err) =>
      resolve({ out, err, code: e ? ((e as { code?: number }).code ?? 1) : 0 }),
    ),
  );
}

/** A small dirty-log-perf run saved to `name`; returns its path. */
export async function perfRun(name: string, extra: string[] = []): Promise<string> {
  const file = join(tmp, name);
  const r = await runKvmmu([
    "dirty-log-perf",
    "-v",
    "1",
    "-b",
    "2M",
    "-i",
    "3",
    "--warmup",
    "0",
    "--contention",
    "none",
    "--output",
    file,
    ...extra,
  ]);
  if (r.code !== 0) throw new Error(`dirty-log-perf failed: ${r.err}`);
  return file;
}

const made = new Map<string, Promise<string>>();

/**
 * perfRun's file for tests that only read it (or copies of it): run once per test process, as a
 * dirty-log-perf run costs a process and its vCPU threads.
 */
export function perfRunOnce(name: string, extra: string[] = []): Promise<string> {
  let p = made.get(name);
  if (p === undefined) {
    p = perfRun(name, extra);
    made.set(name, p);
  }
  return p;
}

/** A migrate result as issue 12 defines `kvmmu migrate --json`, in the envelope. */
export function migrateDoc(wp: "locked" | "lockless", downtimeMs: number): Record<string, unknown> {
  const total = 64 << 20;
  // The lockless source converges a little faster (its rounds differ, so the plots show both).
  const k = wp === "locked" ? 1 : 0.7;
  const rounds = [0, 1, 2, 3].map((i) => ({
    round: i + 1,
    "time-ms": 120 * (i + 1),
    transferred: (total * (i + 1)) / 4,
    remaining: (k * total) / 4 ** (i + 1),
    total,
    "dirty-pages-rate": (k * 20000) / (i + 1),
    mbps: 900,
    "expected-downtime": 40 / (i + 1),
  }));
  return {
    ...envelope("migrate", { wp, mode: "tdp" }),
    results: {
      status: "completed",
      mode: "precopy",
      rounds,
      downtimeMs,
      totalTimeMs: 500,
      transferredBytes: total * 1.3,
      verify: { pagesCompared: total / 4096, mismatches: 0, guestInvariant: true },
    },
  };
}

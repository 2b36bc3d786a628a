/**
 * The envelope every benchmark's JSON result carries, so a result file says what produced it
 * and where: schema version, command and options, git commit, machine, time.
 */
import { execFileSync } from "node:child_process";
import { existsSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import os from "node:os";
import { einval, KvmError } from "../errors.js";

/**
 * 2: design names are any registered name, dirty-log-perf has `baseline` and `ratios`, results
 * are keyed by design. Files of version 1 still load (READABLE_SCHEMA_VERSIONS).
 */
export const SCHEMA_VERSION = 2;
/** The versions `compare` and `report` read: this one and every one it is a superset of. */
export const READABLE_SCHEMA_VERSIONS: readonly number[] = [1, 2];

export interface Machine {
  cpus: number;
  memoryBytes: number;
  node: string;
  platform: string;
}

export interface Envelope {
  schemaVersion: number;
  command: string;
  options: unknown;
  gitCommit: string | null;
  machine: Machine;
  timestamp: string;
}

export function machine(): Machine {
  return {
    cpus: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
  };
}

/** HEAD of the checkout the benchmark runs from; null outside a git work tree. */
export function gitCommit(): string | null {
  try {
    const out = execFileSync("git", ["rev-parse", "HEAD"], {
      cwd: new URL("../../..", import.meta.url),
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 5000,
    });
    const s = out.toString().trim();
    return /^[0-9a-f]{40}$/.test(s) ? s : null;
  } catch {
    return null;
  }
}

export function envelope(command: string, options: unknown): Envelope {
  return {
    schemaVersion: SCHEMA_VERSION,
    command,
    options,
    gitCommit: gitCommit(),
    machine: machine(),
    timestamp: new Date().toISOString(),
  };
}

/** `--output FILE`: the JSON, one object and a newline. */
export function writeResult(file: string, result: unknown): void {
  try {
    writeFileSync(file, JSON.stringify(result) + "\n");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new KvmError(
      err.code === "ENOENT" ? "ENOENT" : "EIO",
      `--output: cannot write ${file}: ${err.message}`,
    );
  }
}

/** Before a long run: the directory of `--output FILE` exists and FILE is not a directory. */
export function checkOutput(file: string, opt = "--output"): void {
  if (file === "") throw einval(opt, "empty file name");
  const dir = dirname(file);
  if (!existsSync(dir) || !statSync(dir).isDirectory())
    throw new KvmError("ENOENT", `${opt}: directory ${dir} does not exist`);
  if (existsSync(file) && statSync(file).isDirectory()) throw einval(opt, `${file} is a directory`);
}

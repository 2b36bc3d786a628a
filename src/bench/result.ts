/**
 * The envelope every benchmark's JSON result carries, so a result file says what produced it
 * and where: schema version, command and options, git commit, machine, time.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import os from "node:os";
import { einval, KvmError } from "../errors.js";

/**
 * 2: design names are any registered name, dirty-log-perf has `baseline` and `ratios`, results
 * are keyed by design. 3: the envelope says what made the result (argv, kvmmu's version, CPU
 * model, kernel, load average) and dirty-log-perf times disabling logging. Files of versions 1
 * and 2 still load (READABLE_SCHEMA_VERSIONS): every version only adds fields.
 */
export const SCHEMA_VERSION = 3;
/** The versions `compare` and `report` read: this one and every one it is a superset of. */
export const READABLE_SCHEMA_VERSIONS: readonly number[] = [1, 2, 3];

export interface Machine {
  cpus: number;
  memoryBytes: number;
  node: string;
  platform: string;
  /** os.cpus()[0].model, e.g. "AMD EPYC 7B13" (version 3). */
  cpuModel?: string;
  /** os.release(): the kernel, e.g. "6.1.0-18-amd64" (version 3). */
  kernel?: string;
  /** 1-minute load average when the command started and when it ended (version 3). */
  loadAverage?: { start: number; end: number | null };
}

export interface Envelope {
  schemaVersion: number;
  command: string;
  options: unknown;
  /** The command line as typed (process.argv after node and the script), version 3. */
  argv?: string[];
  /** kvmmu's own version, from its package.json (version 3). */
  kvmmuVersion?: string;
  /** kvmmu's commit when it runs from its own checkout; null otherwise (never the caller's repository). */
  gitCommit: string | null;
  machine: Machine;
  timestamp: string;
}

/** The package root: dist/src/bench/result.js lies three levels below it. */
const PACKAGE_ROOT = fileURLToPath(new URL("../../..", import.meta.url));

/** The load average when this process started (the envelope's `start`). */
const LOAD_AT_START = os.loadavg()[0];

export function machine(): Machine {
  return {
    cpus: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpuModel: os.cpus()[0]?.model.trim() ?? "unknown",
    kernel: os.release(),
    loadAverage: { start: LOAD_AT_START, end: null },
  };
}

/** kvmmu's version from its own package.json; "unknown" when it cannot be read. */
export function kvmmuVersion(root = PACKAGE_ROOT): string {
  try {
    const p = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as {
      name?: unknown;
      version?: unknown;
    };
    return p.name === "kvmmu" && typeof p.version === "string" ? p.version : "unknown";
  } catch {
    return "unknown";
  }
}

/**
 * HEAD of kvmmu's own checkout: only when the package root itself is the top of a git work tree
 * whose package.json names kvmmu. Installed as a dependency inside another repository, git
 * would find that repository's HEAD from node_modules/kvmmu; that is not kvmmu's commit: null.
 */
export function gitCommit(root = PACKAGE_ROOT): string | null {
  try {
    if (!existsSync(join(root, ".git")) || kvmmuVersion(root) === "unknown") return null;
    const out = execFileSync("git", ["rev-parse", "--show-toplevel", "HEAD"], {
      cwd: root,
      stdio: ["ignore", "pipe", "ignore"],
      timeout: 5000,
    });
    const [top, head] = out.toString().trim().split("\n");
    if (top === undefined || realpathSync(top) !== realpathSync(root)) return null;
    return head !== undefined && /^[0-9a-f]{40}$/.test(head) ? head : null;
  } catch {
    return null;
  }
}

export function envelope(command: string, options: unknown): Envelope {
  return {
    schemaVersion: SCHEMA_VERSION,
    command,
    options,
    argv: process.argv.slice(2),
    kvmmuVersion: kvmmuVersion(),
    gitCommit: gitCommit(),
    machine: machine(),
    timestamp: new Date().toISOString(),
  };
}

/** The envelope completed at the end of the run: the load average then. */
export function finished<T extends { machine: Machine }>(doc: T): T {
  const l = doc.machine.loadAverage;
  return l ? { ...doc, machine: { ...doc.machine, loadAverage: { ...l, end: os.loadavg()[0] } } } : doc;
}

/** `--output FILE`: the JSON, one object and a newline. */
export function writeResult(file: string, result: unknown): void {
  const r = result as { machine?: Machine };
  const doc = r?.machine?.loadAverage?.end === null ? finished(r as { machine: Machine }) : result;
  try {
    writeFileSync(file, JSON.stringify(doc) + "\n");
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

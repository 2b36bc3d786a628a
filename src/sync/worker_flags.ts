/**
 * The Node flags a worker thread is started with. A worker inherits the process's execArgv, but
 * Node refuses per-process flags there (`--max-old-space-size`, `--expose-gc`, `--stack-size`,
 * `--title`, ...: ERR_WORKER_INVALID_EXEC_ARGV), so a host started with one of them could not run
 * any vCPU. Each flag is tried once in a throw-away worker and kept only if a worker accepts it;
 * heap and stack sizes reach the workers through `resourceLimits` instead.
 */
import { Worker, type ResourceLimits } from "node:worker_threads";

export interface WorkerFlags {
  execArgv: string[];
  resourceLimits: ResourceLimits;
}

let cached: WorkerFlags | null = null;

/** Flags that apply to string input only (`node -e`): never a worker's. */
function inputOnly(a: string): boolean {
  return a.startsWith("--input-type") || a === "-e" || a === "--eval" || a === "-p" || a === "--print";
}

/** execArgv as flags with their values: "--flag value" is one entry of two tokens. */
function flagGroups(argv: readonly string[]): string[][] {
  const groups: string[][] = [];
  for (const a of argv) {
    if (!a.startsWith("-") && groups.length > 0) groups[groups.length - 1].push(a);
    else groups.push([a]);
  }
  return groups;
}

function workerAccepts(flag: string[]): boolean {
  try {
    const w = new Worker("", { eval: true, execArgv: flag });
    void w.terminate();
    return true;
  } catch (e) {
    if ((e as { code?: string }).code === "ERR_WORKER_INVALID_EXEC_ARGV") return false;
    throw e;
  }
}

/** The value of `--name=N` or `--name N` in a group, as a number (NaN if absent or not one). */
function flagNumber(group: string[], name: string): number {
  if (group[0] === name) return Number(group[1]);
  if (group[0].startsWith(`${name}=`)) return Number(group[0].slice(name.length + 1));
  return NaN;
}

/** Heap and stack flags of the process, as a worker's resourceLimits (MB). */
function limitsOf(groups: string[][]): ResourceLimits {
  const r: ResourceLimits = {};
  for (const g of groups) {
    const old = flagNumber(g, "--max-old-space-size");
    const young = flagNumber(g, "--max-semi-space-size");
    const stackKb = flagNumber(g, "--stack-size");
    if (old > 0) r.maxOldGenerationSizeMb = old;
    if (young > 0) r.maxYoungGenerationSizeMb = young;
    if (stackKb > 0) r.stackSizeMb = stackKb / 1024;
  }
  return r;
}

/** What every worker of this process is started with (computed once per process). */
export function workerFlags(argv: readonly string[] = process.execArgv): WorkerFlags {
  if (argv === process.execArgv && cached) return cached;
  const groups = flagGroups(argv).filter((g) => !inputOnly(g[0]));
  const f = {
    execArgv: groups.filter(workerAccepts).flat(),
    resourceLimits: limitsOf(groups),
  };
  if (argv === process.execArgv) cached = f;
  return f;
}

/** workerFlags().execArgv: the process's flags a worker takes. */
export function workerExecArgv(): string[] {
  return workerFlags().execArgv;
}

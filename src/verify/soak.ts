/**
 * The soak: the dirty-log-test oracles (kvm in one of its three modes per round, in turn:
 * dirty-log, clear-log, dirty-ring with a 1024-entry ring so that vCPUs exit on full rings; and
 * qemu) for both write-protect designs, in both MMU modes, with THP on and off in turn and
 * MMU-notifier churn, round after round until a budget of page checks is met. Prints pages checked, violations and the time taken.
 *
 *   node dist/src/verify/soak.js [--budget 1e8] [--seed 1] [--json]     (npm run soak)
 *
 * Exit status: 0 no violation, 1 a violation, 2 bad arguments, 130 interrupted (after the summary).
 */
import { pathToFileURL } from "node:url";
import { dirtyLogTest, MODES } from "./dirty_log_test.js";
import { einval, KvmError } from "../errors.js";
import type { MmuModeName } from "../vm.js";
import { designNames, designSupportsMode } from "../mmu/design.js";
import { MmuMode } from "../kvm_host.js";

export interface SoakOptions {
  /** Page checks to reach (default 1e8). */
  budget: number;
  seed: number;
  /** Guest memory per vCPU, bytes (default 16 MiB). */
  bytesPerVcpu?: number;
  signal?: AbortSignal;
  progress?: (msg: string) => void;
}

export interface SoakRound {
  mode: MmuModeName;
  thp: boolean;
  seed: number;
  pagesChecked: number;
  violations: number;
}

export interface SoakResult {
  budget: number;
  pagesChecked: number;
  violations: number;
  rounds: number;
  durationMs: number;
  /** The configurations run (mode x THP), each with its totals. */
  perConfig: Record<string, { rounds: number; pagesChecked: number; violations: number }>;
  firstViolation: string | null;
  interrupted: boolean;
}

const CONFIGS: { mode: MmuModeName; thp: boolean }[] = [
  { mode: "tdp", thp: true },
  { mode: "shadow", thp: true },
  { mode: "tdp", thp: false },
  { mode: "shadow", thp: false },
];

export async function soak(o: SoakOptions): Promise<SoakResult> {
  if (!Number.isSafeInteger(o.budget) || o.budget < 1)
    throw einval("budget", `must be an integer >= 1, got ${o.budget}`);
  if (!Number.isSafeInteger(o.seed) || o.seed < 0 || o.seed > 2 ** 31 - 2)
    throw einval("seed", `must be 0..${2 ** 31 - 2}, got ${o.seed}`);
  const t0 = performance.now();
  const r: SoakResult = {
    budget: o.budget,
    pagesChecked: 0,
    violations: 0,
    rounds: 0,
    durationMs: 0,
    perConfig: {},
    firstViolation: null,
    interrupted: false,
  };
  while (r.pagesChecked < o.budget) {
    if (o.signal?.aborted) {
      r.interrupted = true;
      break;
    }
    const c = CONFIGS[r.rounds % CONFIGS.length];
    const seed = (o.seed + r.rounds) % (2 ** 31 - 1);
    const x = await dirtyLogTest({
      iterations: 8,
      intervalMs: 10,
      vcpus: 2,
      bytesPerVcpu: o.bytesPerVcpu ?? 16 << 20,
      // Every design that has the round's paging mode (the TDP MMU has no shadow paging).
      wp: designNames().filter((d) =>
        designSupportsMode(d, c.mode === "shadow" ? MmuMode.Shadow : MmuMode.Tdp),
      ),
      oracles: ["kvm", "qemu"],
      // One collection mode per round, in turn (with 4 configurations: every pair in 12 rounds).
      modes: [MODES[r.rounds % MODES.length]],
      ringEntries: 1024,
      thp: c.thp,
      mode: c.mode,
      migrateRate: 200,
      invalidateRate: 50,
      seed,
      signal: o.signal,
    });
    r.rounds++;
    r.pagesChecked += x.pagesChecked;
    r.violations += x.violations;
    const key = `${c.mode}/thp-${c.thp ? "on" : "off"}`;
    const pc = (r.perConfig[key] ??= { rounds: 0, pagesChecked: 0, violations: 0 });
    pc.rounds++;
    pc.pagesChecked += x.pagesChecked;
    pc.violations += x.violations;
    const v = x.firstViolations[0];
    if (v && r.firstViolation === null)
      r.firstViolation = `${key} seed ${seed} [${v.wp}] ${v.oracle} iteration ${v.iteration} page ${v.page}: ${v.what}`;
    o.progress?.(
      `soak round ${r.rounds} (${key}): ${r.pagesChecked} pages checked, ${r.violations} violations`,
    );
  }
  r.durationMs = performance.now() - t0;
  return r;
}

export function formatSoak(r: SoakResult): string {
  const out = [
    `soak: ${r.pagesChecked} pages checked (budget ${r.budget}), ${r.violations} violations, ${r.rounds} rounds in ${(r.durationMs / 1000).toFixed(1)} s${r.interrupted ? " (interrupted)" : ""}: ${r.violations === 0 ? "PASS" : "FAIL"}`,
  ];
  for (const [k, c] of Object.entries(r.perConfig))
    out.push(`  ${k}: ${c.rounds} rounds, ${c.pagesChecked} pages checked, ${c.violations} violations`);
  if (r.firstViolation) out.push(`  first violation: ${r.firstViolation}`);
  return out.join("\n");
}

function argValue(args: string[], name: string, dflt: string): string {
  const i = args.indexOf(name);
  if (i < 0) return dflt;
  const v = args[i + 1];
  if (v === undefined) throw einval(name, "missing value");
  return v;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  try {
    for (const a of args)
      if (a.startsWith("-") && !["--budget", "--seed", "--json"].includes(a))
        throw einval(a, "unknown option");
    const budget = Number(argValue(args, "--budget", "1e8"));
    const seed = Number(argValue(args, "--seed", "1"));
    const ac = new AbortController();
    process.once("SIGINT", () => ac.abort());
    const r = await soak({
      budget,
      seed,
      signal: ac.signal,
      progress: (m) => {
        if (process.stderr.isTTY) process.stderr.write(m + "\n");
      },
    });
    process.stdout.write((args.includes("--json") ? JSON.stringify(r) : formatSoak(r)) + "\n");
    process.exitCode = r.violations > 0 ? 1 : r.interrupted ? 130 : 0;
  } catch (e) {
    process.stderr.write(`soak: ${(e as Error).message}\n`);
    process.exitCode = e instanceof KvmError ? 2 : 3;
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await main();

/**
 * `kvmmu conformance`: every case of the table (conformance_cases.ts) on a fresh VM of each model
 * design and, where /dev/kvm opens, of the kernel. A row matches when every column that ran gives
 * KVM's answer; a model answer that is a documented intended difference counts as "intended".
 */
import { KvmError } from "../errors.js";
import { KvmSyscallError } from "../kernel/libc.js";
import { CASES, ConfCase } from "./conformance_cases.js";
import { ConfTarget } from "./conformance_targets.js";

export type Match = "yes" | "intended" | "NO";

export interface ConformanceRow {
  name: string;
  expected: string;
  kernel: string;
  /** Answers by design name. */
  models: Record<string, string>;
  match: Match;
  /** The reason of an intended difference. */
  why?: string;
}

export interface ConformanceResult {
  designs: string[];
  kernelSkipped: string | null;
  rows: ConformanceRow[];
}

/** The answer of one call: its return (ok / a string), or the errno it failed with. */
export async function answer(f: () => unknown): Promise<string> {
  try {
    const r = await f();
    return typeof r === "string" ? r : "ok";
  } catch (e) {
    if (e instanceof KvmSyscallError) return e.errno;
    if (e instanceof KvmError) return e.code;
    return `error: ${(e as Error).message}`;
  }
}

async function runOn(t: ConfTarget, c: ConfCase): Promise<string> {
  const vm = await t.create();
  try {
    return await answer(() => c.run(vm));
  } finally {
    await vm.close();
  }
}

export function matchOf(c: ConfCase, kernel: string | null, models: readonly string[]): Match {
  let m: Match = "yes";
  if (kernel !== null && kernel !== c.expected) return "NO";
  for (const a of models) {
    if (a === c.expected) continue;
    if (c.intended !== undefined && a === c.intended.answer) m = "intended";
    else return "NO";
  }
  return m;
}

/**
 * Runs the table. `kernel`: the kernel's target, or the reason it is skipped. `onRow` sees each
 * row as it is done (progress).
 */
export async function runConformance(
  models: readonly ConfTarget[],
  kernel: ConfTarget | string,
  opts: { cases?: readonly ConfCase[]; onRow?: (r: ConformanceRow) => void } = {},
): Promise<ConformanceResult> {
  const rows: ConformanceRow[] = [];
  for (const c of opts.cases ?? CASES) {
    const k = typeof kernel === "string" ? null : await runOn(kernel, c);
    const m: Record<string, string> = {};
    for (const t of models) m[t.name] = await runOn(t, c);
    const match = matchOf(c, k, Object.values(m));
    const row: ConformanceRow = {
      name: c.name,
      expected: c.expected,
      kernel: k ?? "skipped",
      models: m,
      match,
    };
    if (match === "intended") row.why = c.intended?.why;
    rows.push(row);
    opts.onRow?.(row);
  }
  return {
    designs: models.map((t) => t.name),
    kernelSkipped: typeof kernel === "string" ? kernel : null,
    rows,
  };
}

/** The table as text: case | expected (KVM) | kernel | <each model> | match, then a summary. */
export function formatConformance(r: ConformanceResult): string {
  const head = ["case", "expected (KVM)", "kernel", ...r.designs, "match"];
  const body = r.rows.map((x) => [
    x.name,
    x.expected,
    x.kernel,
    ...r.designs.map((d) => x.models[d]),
    x.match,
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => c.padEnd(w[i]))
      .join(" | ")
      .trimEnd();
  const out = [line(head), w.map((n) => "-".repeat(n)).join("-|-"), ...body.map(line)];
  const n = (m: Match): number => r.rows.filter((x) => x.match === m).length;
  out.push(
    "",
    `${r.rows.length} cases: ${n("yes")} match, ${n("intended")} intended differences, ${n("NO")} mismatches; ` +
      `kernel: ${r.kernelSkipped === null ? "ran" : `skipped (${r.kernelSkipped})`}`,
  );
  for (const x of r.rows.filter((y) => y.match === "intended")) out.push(`  intended: ${x.name}: ${x.why}`);
  return out.join("\n");
}

/** `--json`: {cases: [{name, expected, kernel, <each design>, match}]}. */
export function conformanceJson(r: ConformanceResult): {
  kernelSkipped: string | null;
  cases: Record<string, string>[];
} {
  return {
    kernelSkipped: r.kernelSkipped,
    cases: r.rows.map((x) => ({
      name: x.name,
      expected: x.expected,
      kernel: x.kernel,
      ...x.models,
      match: x.match,
      ...(x.why !== undefined ? { why: x.why } : {}),
    })),
  };
}

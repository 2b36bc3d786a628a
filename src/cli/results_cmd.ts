/**
 * `kvmmu compare` and `kvmmu report`: saved results (--output FILE) compared and drawn. Reading
 * results needs the schema validator, and the report its plotting and DOM libraries: optional
 * peer packages, imported only by these two commands, so that the library and every other command
 * install and run without them (package.json peerDependenciesMeta).
 */
import { Command } from "commander";
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";
import { checkOutput } from "../bench/result.js";
import { einval, KvmError } from "../errors.js";
import type { Loaded } from "../results/load.js";
import type { CompareResult } from "../results/compare.js";

const { peerDependencies } = createRequire(import.meta.url)("../../../package.json") as {
  peerDependencies: Record<string, string>;
};

/** The optional packages each command needs. */
export const RESULTS_EXTRAS = {
  compare: ["@sinclair/typebox"],
  report: ["@sinclair/typebox", "@observablehq/plot", "linkedom"],
} as const;

/**
 * Imports `load()`, turning a missing optional package into ENOPKG with the command that installs
 * what `command` needs.
 */
export async function withExtras<T>(
  command: keyof typeof RESULTS_EXTRAS,
  load: () => Promise<T>,
): Promise<T> {
  try {
    return await load();
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    const needs = RESULTS_EXTRAS[command];
    if (err.code !== "ERR_MODULE_NOT_FOUND" || !needs.some((p) => err.message.includes(`'${p}'`))) throw e;
    const install = needs.map((p) => `${p}@${peerDependencies[p] ?? "latest"}`).join(" ");
    throw new KvmError(
      "ENOPKG",
      `${command}: needs the optional package${needs.length > 1 ? "s" : ""} ${needs.join(", ")}; ` +
        `install with: npm install ${install}`,
    );
  }
}

/** "2%", "2" or "0.5%" as a fraction (0.02); `opt` names the flag in the error. */
export function parsePercent(opt: string, v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*%?\s*$/.exec(v);
  const x = m ? Number(m[1]) : NaN;
  if (!Number.isFinite(x) || x < 0 || x >= 100) throw einval(opt, `"${v}" is not a percentage in [0, 100)`);
  return x / 100;
}

function warn(lines: string[]): void {
  for (const l of lines) process.stderr.write(`kvmmu: warning: ${l}\n`);
}

/** The files of each command against the first of that command: what differs between them. */
export function reportWarnings(files: Loaded[], differences: (a: Loaded, b: Loaded) => string[]): string[] {
  const first = new Map<string, Loaded>();
  const out: string[] = [];
  for (const f of files) {
    const b = first.get(f.doc.command);
    if (b) out.push(...differences(b, f));
    else first.set(f.doc.command, f);
  }
  return out;
}

export interface CompareFilesOptions {
  json?: boolean;
  markdown?: boolean;
  /** A change whose CI lies within ±noise (a fraction) is "within noise". */
  noise?: number;
  /** Figures shown worse by more than this fraction are regressions. */
  failOnRegression?: number;
}

/** `kvmmu compare FILES`: the text it prints and the comparison (a KvmError on bad input: exit 2). */
export async function compareFiles(
  files: string[],
  o: CompareFilesOptions = {},
): Promise<{ text: string; result: CompareResult }> {
  const [{ loadResult }, { compare, formatCompare, formatCompareMarkdown }] = await withExtras(
    "compare",
    () => Promise.all([import("../results/load.js"), import("../results/compare.js")]),
  );
  const c = compare(files.map(loadResult), {
    noise: o.noise ?? 0,
    ...(o.failOnRegression !== undefined ? { failOnRegression: o.failOnRegression } : {}),
  });
  const text = o.json ? JSON.stringify(c) : o.markdown ? formatCompareMarkdown(c) : formatCompare(c);
  return { text, result: c };
}

/** `kvmmu report FILES -o OUT`: returns the warnings (a KvmError on bad input: exit 2). */
export async function reportFiles(files: string[], out: string): Promise<string[]> {
  checkOutput(out);
  const [{ checkReportable, loadResult }, { buildReport }, { differences }, { readTrace }] = await withExtras(
    "report",
    () =>
      Promise.all([
        import("../results/load.js"),
        import("../results/report.js"),
        import("../results/compare.js"),
        import("../results/trace_svg.js"),
      ]),
  );
  // A trace file (traceEvents: explore --trace, a benchmark's --trace) is drawn as a timeline.
  const traces = [];
  const loaded = [];
  for (const f of files) {
    const t = readTrace(f);
    if (t !== null) traces.push(t);
    else loaded.push(loadResult(f));
  }
  checkReportable(loaded);
  const warnings = reportWarnings(loaded, differences);
  const html = buildReport(loaded, traces);
  try {
    writeFileSync(out, html);
  } catch (e) {
    throw new KvmError("EIO", `--output: cannot write ${out}: ${(e as Error).message}`);
  }
  return warnings;
}

export function registerResults(program: Command): void {
  program
    .command("compare")
    .description(
      "compare saved results of one command: each figure's change against the first file, with a bootstrap CI",
    )
    .argument("<files...>", "result files (--output FILE of a command); the first is the baseline")
    .option("--markdown", "print Markdown tables")
    .option("--json", "print one JSON object on stdout")
    .option("--noise <pct>", 'a change whose CI lies within ±pct is "within noise" (e.g. 2%)', "0%")
    .option(
      "--fail-on-regression <pct>",
      "exit 1 when a figure is shown worse (its whole CI) by more than pct (e.g. 5%)",
    )
    .action(async (files: string[], a: Record<string, string | boolean | undefined>) => {
      const noise = parsePercent("--noise", String(a["noise"]));
      const fail =
        a["failOnRegression"] === undefined
          ? undefined
          : parsePercent("--fail-on-regression", String(a["failOnRegression"]));
      const { text, result: c } = await compareFiles(files, {
        json: a["json"] === true,
        markdown: a["markdown"] === true,
        noise,
        ...(fail !== undefined ? { failOnRegression: fail } : {}),
      });
      warn(c.warnings);
      process.stdout.write(text + "\n");
      if (c.regressions.length > 0) {
        process.stderr.write(
          `kvmmu: ${c.regressions.length} figure(s) worse by more than ${String(a["failOnRegression"])}: ` +
            `${c.regressions.map((r) => `${r.figure} (${r.file})`).join(", ")}\n`,
        );
        process.exitCode = 1;
      }
    });

  program
    .command("report")
    .description("draw saved results as one self-contained HTML file (inline SVG, no network needed)")
    .argument("<files...>", "result files (--output FILE of any command) and trace files (--trace FILE)")
    .requiredOption("-o, --output <file>", "the HTML file to write")
    .action(async (files: string[], a: Record<string, string>) =>
      warn(await reportFiles(files, a["output"])),
    );
}

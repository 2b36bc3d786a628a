/** `kvmmu compare` and `kvmmu report`: saved results (--output FILE) compared and drawn. */
import { Command } from "commander";
import { compare, differences, formatCompare, formatCompareMarkdown } from "../results/compare.js";
import { Loaded, loadResult } from "../results/load.js";
import { buildReport } from "../results/report.js";
import { checkOutput } from "../bench/result.js";
import { writeFileSync } from "node:fs";
import { einval, KvmError } from "../errors.js";

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
export function reportWarnings(files: Loaded[]): string[] {
  const first = new Map<string, Loaded>();
  const out: string[] = [];
  for (const f of files) {
    const b = first.get(f.doc.command);
    if (b) out.push(...differences(b, f));
    else first.set(f.doc.command, f);
  }
  return out;
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
    .action((files: string[], a: Record<string, string | boolean | undefined>) => {
      const noise = parsePercent("--noise", String(a["noise"]));
      const fail =
        a["failOnRegression"] === undefined
          ? undefined
          : parsePercent("--fail-on-regression", String(a["failOnRegression"]));
      const c = compare(files.map(loadResult), {
        noise,
        ...(fail !== undefined ? { failOnRegression: fail } : {}),
      });
      warn(c.warnings);
      process.stdout.write(
        (a["json"] ? JSON.stringify(c) : a["markdown"] ? formatCompareMarkdown(c) : formatCompare(c)) + "\n",
      );
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
    .argument("<files...>", "result files (--output FILE of any command)")
    .requiredOption("-o, --output <file>", "the HTML file to write")
    .action((files: string[], a: Record<string, string>) => {
      const out = a["output"];
      checkOutput(out);
      const loaded = files.map(loadResult);
      warn(reportWarnings(loaded));
      const html = buildReport(loaded);
      try {
        writeFileSync(out, html);
      } catch (e) {
        throw new KvmError("EIO", `--output: cannot write ${out}: ${(e as Error).message}`);
      }
    });
}

/** `kvmmu compare` and `kvmmu report`: saved results (--output FILE) compared and drawn. */
import { Command } from "commander";
import { compare, formatCompare, formatCompareMarkdown } from "../results/compare.js";
import { loadResult } from "../results/load.js";
import { buildReport } from "../results/report.js";
import { checkOutput } from "../bench/result.js";
import { writeFileSync } from "node:fs";
import { KvmError } from "../errors.js";

export function registerResults(program: Command): void {
  program
    .command("compare")
    .description(
      "compare saved results of one command: each figure's change against the first file, with a bootstrap CI",
    )
    .argument("<files...>", "result files (--output FILE of a command); the first is the baseline")
    .option("--markdown", "print a Markdown table", false)
    .option("--json", "print one JSON object on stdout", false)
    .action((files: string[], a: Record<string, boolean>) => {
      const c = compare(files.map(loadResult));
      process.stdout.write(
        (a["json"] ? JSON.stringify(c) : a["markdown"] ? formatCompareMarkdown(c) : formatCompare(c)) + "\n",
      );
    });

  program
    .command("report")
    .description("draw saved results as one self-contained HTML file (inline SVG, no network needed)")
    .argument("<files...>", "result files (--output FILE of any command)")
    .requiredOption("-o, --output <file>", "the HTML file to write")
    .action((files: string[], a: Record<string, string>) => {
      const out = a["output"];
      checkOutput(out);
      const html = buildReport(files.map(loadResult));
      try {
        writeFileSync(out, html);
      } catch (e) {
        throw new KvmError("EIO", `--output: cannot write ${out}: ${(e as Error).message}`);
      }
    });
}

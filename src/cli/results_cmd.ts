/** `kvmmu compare` and `kvmmu report`: saved results (--output FILE) compared and drawn. */
import { Command } from "commander";
import { compare, formatCompare, formatCompareMarkdown } from "../results/compare.js";
import { checkReportable, loadResult } from "../results/load.js";
import { buildReport } from "../results/report.js";
import { checkOutput } from "../bench/result.js";
import { writeFileSync } from "node:fs";
import { KvmError } from "../errors.js";

/** `kvmmu compare FILES`: the text it prints (a KvmError on bad input, as the command exits 2). */
export function compareFiles(files: string[], o: { json?: boolean; markdown?: boolean } = {}): string {
  const c = compare(files.map(loadResult));
  return o.json ? JSON.stringify(c) : o.markdown ? formatCompareMarkdown(c) : formatCompare(c);
}

/** `kvmmu report FILES -o OUT` (a KvmError on bad input, as the command exits 2). */
export function reportFiles(files: string[], out: string): void {
  checkOutput(out);
  const loaded = files.map(loadResult);
  checkReportable(loaded);
  const html = buildReport(loaded);
  try {
    writeFileSync(out, html);
  } catch (e) {
    throw new KvmError("EIO", `--output: cannot write ${out}: ${(e as Error).message}`);
  }
}

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
      process.stdout.write(compareFiles(files, { json: a["json"], markdown: a["markdown"] }) + "\n");
    });

  program
    .command("report")
    .description("draw saved results as one self-contained HTML file (inline SVG, no network needed)")
    .argument("<files...>", "result files (--output FILE of any command)")
    .requiredOption("-o, --output <file>", "the HTML file to write")
    .action((files: string[], a: Record<string, string>) => reportFiles(files, a["output"]));
}

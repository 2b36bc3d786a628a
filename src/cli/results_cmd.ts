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
import { KvmError } from "../errors.js";

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

/** `kvmmu compare FILES`: the text it prints (a KvmError on bad input, as the command exits 2). */
export async function compareFiles(
  files: string[],
  o: { json?: boolean; markdown?: boolean } = {},
): Promise<string> {
  const [{ loadResult }, { compare, formatCompare, formatCompareMarkdown }] = await withExtras(
    "compare",
    () => Promise.all([import("../results/load.js"), import("../results/compare.js")]),
  );
  const c = compare(files.map(loadResult));
  return o.json ? JSON.stringify(c) : o.markdown ? formatCompareMarkdown(c) : formatCompare(c);
}

/** `kvmmu report FILES -o OUT` (a KvmError on bad input, as the command exits 2). */
export async function reportFiles(files: string[], out: string): Promise<void> {
  checkOutput(out);
  const [{ checkReportable, loadResult }, { buildReport }] = await withExtras("report", () =>
    Promise.all([import("../results/load.js"), import("../results/report.js")]),
  );
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
    .action(async (files: string[], a: Record<string, boolean>) => {
      process.stdout.write((await compareFiles(files, { json: a["json"], markdown: a["markdown"] })) + "\n");
    });

  program
    .command("report")
    .description("draw saved results as one self-contained HTML file (inline SVG, no network needed)")
    .argument("<files...>", "result files (--output FILE of any command)")
    .requiredOption("-o, --output <file>", "the HTML file to write")
    .action((files: string[], a: Record<string, string>) => reportFiles(files, a["output"]));
}

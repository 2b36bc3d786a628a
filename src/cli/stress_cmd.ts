/** `kvmmu stress`: jcstress-style stress tests of the MMU primitives on real worker threads. */
import { Command } from "commander";
import { formatStressResult, runStress, StressResult, stressTestNames } from "../verify/stress.js";
import { parseIntIn, progress } from "./parse.js";
import { einval } from "../errors.js";
import { interrupt } from "./interrupt.js";

export function registerStress(program: Command): void {
  program
    .command("stress")
    .description(
      "run stress tests on real worker threads and print outcome histograms; exit code 1 when a test (not a negative control) shows a forbidden outcome",
    )
    .option("--test <name>", `one test (default: all): ${stressTestNames().join(", ")}`)
    .option("--iterations <n>", "iterations per test (default: the test's own)")
    .option("--max-ms <ms>", "stop a test after the batch in which this much time has passed")
    .option("--json", "print one JSON object on stdout", false)
    .action(async (a: Record<string, string | boolean | undefined>) => {
      const name = a["test"] as string | undefined;
      if (name !== undefined && !stressTestNames().includes(name))
        throw einval("--test", `"${name}" is not one of ${stressTestNames().join(", ")}`);
      const iterations =
        a["iterations"] === undefined
          ? undefined
          : parseIntIn("--iterations", String(a["iterations"]), 1, 1_000_000_000);
      const timeLimitMs =
        a["maxMs"] === undefined ? undefined : parseIntIn("--max-ms", String(a["maxMs"]), 1, 86_400_000);
      const results: StressResult[] = [];
      for (const t of name !== undefined ? [name] : stressTestNames()) {
        if (interrupt.signal.aborted) break;
        progress(`stress ${t} ...`);
        const r = await runStress(t, { iterations, timeLimitMs });
        results.push(r);
        if (!a["json"]) process.stdout.write(formatStressResult(r) + "\n\n");
      }
      const failed = results.filter((r) => r.control === null && r.forbidden > 0);
      if (a["json"])
        process.stdout.write(JSON.stringify({ results, failed: failed.map((r) => r.test) }) + "\n");
      else
        process.stdout.write(
          failed.length
            ? `FAILED: forbidden outcomes in ${failed.map((r) => r.test).join(", ")}\n`
            : `OK: no forbidden outcome in ${results.filter((r) => r.control === null).length} test(s); negative controls are reported, not judged\n`,
        );
      if (failed.length) process.exitCode = 1;
    });
}

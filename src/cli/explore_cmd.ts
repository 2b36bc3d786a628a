/** `kvmmu explore` and `kvmmu replay`: controlled interleavings of the production code. */
import { Command } from "commander";
import { explore, ExploreResult, replay, Violation } from "../verify/explore.js";
import { BUG_SCENARIO, SCENARIOS } from "../verify/scenarios.js";
import { BUG, BugName } from "../kvm_host.js";
import { parseIntIn, parseList } from "./parse.js";
import { einval } from "../errors.js";
import { interrupt } from "./interrupt.js";
import { checkOutput, envelope, writeResult } from "../bench/result.js";

function formatTrace(v: Violation): string {
  const out = [
    `violation: ${v.invariant}`,
    `schedule (${v.steps} steps): ${v.schedule}`,
    "last operations per thread:",
  ];
  for (const [t, entries] of Object.entries(v.trace)) {
    out.push(`  ${t}:`);
    for (const e of entries) out.push(`    step ${String(e.step).padStart(5)}  ${e.op}`);
  }
  return out.join("\n");
}

function formatResult(r: ExploreResult): string {
  const head = `explore ${r.scenario}${r.mode === "shadow" ? " [shadow MMU]" : ""} (${r.bug ? `bug ${r.bug} put back` : "fixed"}), ${r.strategy}, seed ${r.seed}: ${r.schedules} schedules, ${r.violations} violations, ${r.steps} steps (${Math.round(r.stepsPerSec)} steps/s; threads started in ${Math.round(r.startMs)} ms)`;
  return r.firstViolation ? `${head}\n${formatTrace(r.firstViolation)}` : head;
}

export function registerExplore(program: Command): void {
  program
    .command("explore")
    .description("run a scenario under the controlled scheduler and check its invariant after every schedule")
    .option("--scenario <name>", `scenario: ${Object.keys(SCENARIOS).join(", ")}`)
    .option("--bug <name>", `put one catalog bug back (and use its scenario): ${Object.keys(BUG).join(", ")}`)
    .option("--fixed", "with --bug: the same scenario with the code as it should be", false)
    .option("--strategy <s>", "random, pct or dfs", "pct")
    .option("--schedules <n>", "schedules to run at most", "2000")
    .option("--seed <n>", "seed of the strategy", "1")
    .option("--depth <d>", "PCT bug depth", "3")
    .option("--preemptions <n>", "dfs preemption bound", "2")
    .option("--all", "keep going after the first violation", false)
    .option("--mode <mode>", "MMU of the scenario's VM: tdp, or shadow (guest paging off)", "tdp")
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the result, in the saved-result envelope, to FILE")
    .action(async (a: Record<string, string | boolean | undefined>) => {
      if (a["output"] !== undefined) checkOutput(String(a["output"]));
      let scenario = a["scenario"] as string | undefined;
      const bugName = a["bug"] as string | undefined;
      if (bugName !== undefined && !(bugName in BUG))
        throw einval("--bug", `"${bugName}" is not one of ${Object.keys(BUG).join(", ")}`);
      if (bugName !== undefined) scenario ??= BUG_SCENARIO[bugName as BugName];
      if (scenario === undefined) throw einval("--scenario", "give --scenario or --bug");
      if (!SCENARIOS[scenario])
        throw einval("--scenario", `"${scenario}" is not one of ${Object.keys(SCENARIOS).join(", ")}`);
      if (a["fixed"] && bugName === undefined) throw einval("--fixed", "needs --bug");
      const [strategy] = parseList("--strategy", String(a["strategy"]), ["random", "pct", "dfs"] as const);
      const [mode] = parseList("--mode", String(a["mode"]), ["tdp", "shadow"] as const);
      const opts = {
        scenario,
        strategy: strategy,
        schedules: parseIntIn("--schedules", String(a["schedules"]), 1, 10_000_000),
        seed: parseIntIn("--seed", String(a["seed"]), 0, 2 ** 31 - 2),
        bug: bugName !== undefined && !a["fixed"] && SCENARIOS[scenario].bug === bugName,
        all: a["all"] === true,
        pctDepth: parseIntIn("--depth", String(a["depth"]), 1, 20),
        preemptions: parseIntIn("--preemptions", String(a["preemptions"]), 0, 20),
        mode: mode,
      };
      const r = await explore({ ...opts, signal: interrupt.signal });
      if (a["output"] !== undefined)
        writeResult(String(a["output"]), { ...envelope("explore", opts), results: r });
      process.stdout.write(a["json"] ? JSON.stringify(r) + "\n" : formatResult(r) + "\n");
      if (r.violations > 0) process.exitCode = 1;
    });

  program
    .command("replay")
    .description("re-run one schedule printed by explore, exactly, twice, and check both runs agree")
    .argument("<schedule>", "scenario@bug|fixed:thread*count,...")
    .option("--json", "print one JSON object on stdout", false)
    .action(async (schedule: string, a: Record<string, boolean>) => {
      const r1 = await replay(schedule);
      const r2 = await replay(schedule);
      const same = r1.violation === r2.violation && JSON.stringify(r1.trace) === JSON.stringify(r2.trace);
      if (a["json"]) process.stdout.write(JSON.stringify({ ...r1, reproducible: same }) + "\n");
      else {
        process.stdout.write(
          (r1.violation ? `violation: ${r1.violation}` : "no violation") +
            `\n${r1.steps} steps; second run ${same ? "identical" : "DIFFERS"}\n`,
        );
      }
      if (r1.violation) process.exitCode = 1;
      if (!same) process.exitCode = 1;
    });
}

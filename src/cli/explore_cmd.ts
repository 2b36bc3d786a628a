/** `kvmmu explore` and `kvmmu replay`: controlled interleavings of the production code. */
import { Command } from "commander";
import { explore, ExploreResult, replay, Violation } from "../verify/explore.js";
import { BUG_SCENARIO, SCENARIOS } from "../verify/scenarios.js";
import type { GenerateOptions, GenerateResult } from "../verify/generate.js";
import { BUG, BugName } from "../kvm_host.js";
import { BUG_TDP, TdpBugName } from "../mmu/tdp_mmu/tdp_mmu_bugs.js";

/** Every catalog bug --bug takes: the rmap MMU's and the TDP MMU's. */
const CATALOG = { ...BUG, ...BUG_TDP };
import { designNames, parseDesignList } from "../mmu/design.js";
import { parseIntIn, parseList, parseOne } from "./parse.js";
import { einval } from "../errors.js";
import { interrupt } from "./interrupt.js";
import { checkOutput, envelope, writeResult } from "../bench/result.js";
import { writeFileSync } from "node:fs";
import { recordedRunTrace } from "../verify/explore_trace.js";
import type { RecordedRun } from "../verify/explore_record.js";

/** Writes a recorded run as a Trace Event Format file (ui.perfetto.dev, `kvmmu report`). */
function writeTrace(file: string | undefined, rec: RecordedRun | undefined): void {
  if (file === undefined || rec === undefined) return;
  writeFileSync(file, recordedRunTrace(rec));
}

type Args = Record<string, string | boolean | undefined>;

/** The generator loads fast-check: only when asked for (keeps every other command's start short). */
const generator = (): Promise<typeof import("../verify/generate.js")> => import("../verify/generate.js");

/** The last operations of each thread, one a line. */
function traceLines(trace: Violation["trace"]): string[] {
  const out = ["last operations per thread:"];
  for (const [t, entries] of Object.entries(trace)) {
    out.push(`  ${t}:`);
    for (const e of entries) out.push(`    step ${String(e.step).padStart(5)}  ${e.op}`);
  }
  return out;
}

function formatTrace(v: Pick<Violation, "invariant" | "steps" | "schedule" | "trace">): string {
  return [
    `violation: ${v.invariant}`,
    `schedule (${v.steps} steps): ${v.schedule}`,
    ...traceLines(v.trace),
  ].join("\n");
}

function formatResult(r: ExploreResult): string {
  const wp = r.design !== undefined ? ` on ${r.design}` : "";
  const head = `explore ${r.scenario}${wp}${r.mode === "shadow" ? " [shadow MMU]" : ""} (${r.bug ? `bug ${r.bug} put back` : "fixed"}), ${r.strategy}, seed ${r.seed}: ${r.schedules} schedules, ${r.violations} violations, ${r.steps} steps (${Math.round(r.stepsPerSec)} steps/s; threads started in ${Math.round(r.startMs)} ms)`;
  return r.firstViolation ? `${head}\n${formatTrace(r.firstViolation)}` : head;
}

function formatGenerated(r: GenerateResult): string {
  const head = `explore --generate (${r.bug ? `bug ${r.bug} switched on` : "fixed"}), ${r.strategy}, seed ${r.seed}, ${r.designs.join(",")} x ${r.modes.join(",")}: ${r.programs} programs, ${r.schedules} schedules, ${r.violations} violations (${Math.round(r.elapsedMs / 1000)} s)`;
  const v = r.firstViolation;
  if (!v) return head;
  return [
    head,
    `program (shrunk in ${r.shrinks} tries), on ${v.design}${v.mode === "shadow" ? " [shadow MMU]" : ""}: ${v.text}`,
    formatTrace(v),
    `replay: kvmmu explore --replay ${v.replay}`,
  ].join("\n");
}

/** The options --generate takes, checked; EINVAL names the option. */
function generateOptions(a: Args): GenerateOptions {
  if (a["scenario"] !== undefined)
    throw einval(
      "--generate",
      "--generate and --scenario cannot be combined (a generated program is the scenario)",
    );
  if (a["fixed"]) throw einval("--generate", "--generate and --fixed cannot be combined (leave out --bug)");
  const bug = a["bug"] as BugName | undefined;
  return {
    programs: parseIntIn("--programs", String(a["programs"] ?? "20"), 1, 1_000_000),
    schedules: parseIntIn("--schedules", String(a["schedules"]), 1, 10_000_000),
    seed: parseIntIn("--seed", String(a["seed"]), 0, 2 ** 31 - 2),
    strategy: parseOne("--strategy", String(a["strategy"]), ["random", "pct", "dfs"] as const),
    modes: parseList("--mode", String(a["mode"] ?? "all").replace("all", "tdp,shadow"), [
      "tdp",
      "shadow",
    ] as const),
    designs: parseDesignList("--wp", String(a["wp"] ?? "all")),
    bug: bug ?? null,
    pctDepth: parseIntIn("--depth", String(a["depth"]), 1, 20),
    preemptions: parseIntIn("--preemptions", String(a["preemptions"]), 0, 20),
    signal: interrupt.signal,
  };
}

async function runReplay(a: Args): Promise<void> {
  const s = String(a["replay"]);
  for (const o of ["scenario", "generate", "bug"])
    if (a[o] !== undefined && a[o] !== false)
      throw einval("--replay", `--replay and --${o} cannot be combined`);
  const r = s.startsWith("gen") ? await (await generator()).replayGenerated(s) : await replay(s);
  writeTrace(a["trace"] as string | undefined, "recording" in r ? r.recording : undefined);
  if (a["json"]) process.stdout.write(JSON.stringify({ ...r, recording: undefined }) + "\n");
  else {
    const prog = "text" in r ? `program: ${String(r.text)}\n` : "";
    process.stdout.write(
      `${prog}${r.violation ? `violation: ${r.violation}` : "no violation"}\n${r.steps} steps\n`,
    );
  }
  if (r.violation) process.exitCode = 1;
}

async function runExplore(a: Args): Promise<void> {
  if (a["output"] !== undefined) checkOutput(String(a["output"]));
  if (a["trace"] !== undefined) checkOutput(String(a["trace"]), "--trace");
  const bugName = a["bug"] as string | undefined;
  if (bugName !== undefined && !Object.hasOwn(CATALOG, bugName))
    throw einval("--bug", `"${bugName}" is not one of ${Object.keys(CATALOG).join(", ")}`);
  if (a["replay"] !== undefined) return runReplay(a);
  if (a["generate"]) {
    const o = generateOptions(a);
    const r = await (await generator()).generate(o);
    if (a["output"] !== undefined)
      writeResult(String(a["output"]), { ...envelope("explore", { ...o, signal: undefined }), results: r });
    process.stdout.write(a["json"] ? JSON.stringify(r) + "\n" : formatGenerated(r) + "\n");
    if (r.violations > 0) process.exitCode = 1;
    return;
  }
  if (a["programs"] !== undefined) throw einval("--programs", "needs --generate");
  let scenario = a["scenario"] as string | undefined;
  if (bugName !== undefined) scenario ??= BUG_SCENARIO[bugName as BugName | TdpBugName];
  if (bugName !== undefined && scenario === undefined)
    throw einval("--bug", `"${bugName}" has no explorer scenario yet (docs/bugs.md)`);
  if (scenario === undefined) throw einval("--scenario", "give --scenario, --bug, --generate or --replay");
  if (!Object.hasOwn(SCENARIOS, scenario))
    throw einval("--scenario", `"${scenario}" is not one of ${Object.keys(SCENARIOS).join(", ")}`);
  if (a["fixed"] && bugName === undefined) throw einval("--fixed", "needs --bug");
  const strategy = parseOne("--strategy", String(a["strategy"]), ["random", "pct", "dfs"] as const);
  const mode = parseOne("--mode", String(a["mode"] ?? "tdp"), ["tdp", "shadow"] as const);
  const designs = a["wp"] !== undefined ? parseDesignList("--wp", String(a["wp"])) : [];
  if (designs.length > 1) throw einval("--wp", "one design for a scenario (all designs: --generate)");
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
    ...(designs.length ? { design: designs[0] } : {}),
  };
  const traced = a["trace"] !== undefined;
  const { recording, ...r } = await explore({ ...opts, record: traced, signal: interrupt.signal });
  writeTrace(a["trace"] as string | undefined, recording);
  if (a["output"] !== undefined)
    writeResult(String(a["output"]), { ...envelope("explore", opts), results: r });
  process.stdout.write(a["json"] ? JSON.stringify(r) + "\n" : formatResult(r) + "\n");
  if (r.violations > 0) process.exitCode = 1;
}

export function registerExplore(program: Command): void {
  program
    .command("explore")
    .description(
      "run a scenario or generated programs under the controlled scheduler, checking invariants after every schedule",
    )
    .option("--scenario <name>", `scenario: ${Object.keys(SCENARIOS).join(", ")}`)
    .option(
      "--bug <name>",
      `put one catalog bug back (and use its scenario): ${Object.keys(CATALOG).join(", ")}`,
    )
    .option("--fixed", "with --bug: the same scenario with the code as it should be", false)
    .option(
      "--generate",
      "run generated programs instead of a scenario (every design and MMU unless --wp/--mode)",
    )
    .option("--programs <n>", "with --generate: programs to generate (default 20)")
    .option(
      "--replay <string>",
      "re-run a violation: a generated program's replay string, or a scenario schedule",
    )
    .option(
      "--wp <designs>",
      `design(s) of the VM: ${designNames().join(", ")}, all (--generate: default all)`,
    )
    .option("--strategy <s>", "random, pct or dfs", "pct")
    .option("--schedules <n>", "schedules to run at most (--generate: per program, design and MMU)", "2000")
    .option("--seed <n>", "seed of the strategy (and of the generator)", "1")
    .option("--depth <d>", "PCT bug depth", "3")
    .option("--preemptions <n>", "dfs preemption bound", "2")
    .option("--all", "keep going after the first violation", false)
    .option(
      "--mode <mode>",
      "MMU of the VM: tdp, shadow (guest paging off), or all (--generate: default all)",
    )
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the result, in the saved-result envelope, to FILE")
    .option(
      "--trace <file>",
      "write the first violation's run (else the last run) as a Perfetto / chrome://tracing JSON trace",
    )
    .action(runExplore);

  program
    .command("replay")
    .description("re-run one schedule printed by explore, exactly, twice, and check both runs agree")
    .argument("<schedule>", "scenario@bug|fixed:thread*count,... (or a generated program's gen1:... string)")
    .option("--json", "print one JSON object on stdout", false)
    .option("--trace <file>", "write the run as a Perfetto / chrome://tracing JSON trace")
    .action(async (schedule: string, a: Record<string, string | boolean>) => {
      if (typeof a["trace"] === "string") checkOutput(a["trace"], "--trace");
      const once = async (): ReturnType<typeof replay> =>
        schedule.startsWith("gen") ? (await generator()).replayGenerated(schedule) : replay(schedule);
      const r1 = await once();
      const r2 = await once();
      const same = r1.violation === r2.violation && JSON.stringify(r1.trace) === JSON.stringify(r2.trace);
      writeTrace(
        typeof a["trace"] === "string" ? a["trace"] : undefined,
        "recording" in r1 ? r1.recording : undefined,
      );
      if (a["json"])
        process.stdout.write(JSON.stringify({ ...r1, recording: undefined, reproducible: same }) + "\n");
      else {
        process.stdout.write(
          (r1.violation ? `violation: ${r1.violation}` : "no violation") +
            `\n${r1.steps} steps; second run ${same ? "identical" : "DIFFERS"}\n` +
            `${traceLines(r1.trace).join("\n")}\n`,
        );
      }
      if (r1.violation) process.exitCode = 1;
      if (!same) process.exitCode = 1;
    });
}

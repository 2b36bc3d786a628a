/**
 * `kvmmu explore --generate`: generated programs (src/verify/program.ts) under the explorer,
 * on every design and MMU asked for, every invariant checked after every schedule. fast-check
 * draws the programs from a seed and, when one breaks an invariant, shrinks it: each smaller
 * candidate is explored on the design and MMU that failed, and the smallest that still fails is
 * reported with its schedule and a replay string.
 */
import fc from "fast-check";
import { BUG, BugName } from "../kvm_host.js";
import { MmuModeName } from "../vm.js";
import { DesignName, isDesign } from "../mmu/design.js";
import { einval } from "../errors.js";
import { explore, ExploreResult, GENERATED_MAX_STEPS, replay, Strategy, TraceEntry } from "./explore.js";
import { decodeChoices, encodeChoices } from "./explore_schedule.js";
import {
  checkProgram,
  formatProgram,
  LogMode,
  Program,
  PROGRAM_VERSION,
  programScenario,
} from "./program.js";
import { programArb } from "./program_arb.js";
import { designSupportsMode } from "../mmu/design.js";
import { MmuMode } from "../kvm_host.js";

export interface GenerateOptions {
  programs: number;
  /** Schedules per program, design and MMU. */
  schedules: number;
  seed: number;
  strategy: Strategy;
  modes: MmuModeName[];
  designs: DesignName[];
  /** A catalog bug switched on in every program's VM. */
  bug: BugName | null;
  /** The log modes programs are drawn with (default: all). */
  logs?: readonly LogMode[];
  pctDepth?: number;
  preemptions?: number;
  /** Shrink a failing program (default true); at most this many candidates are tried. */
  shrinkLimit?: number;
  signal?: AbortSignal;
}

export interface GeneratedViolation {
  program: Program;
  /** The program in one line. */
  text: string;
  design: DesignName;
  mode: MmuModeName;
  schedule: string;
  invariant: string;
  trace: Record<string, TraceEntry[]>;
  steps: number;
  /** `kvmmu explore --replay STRING` re-runs it. */
  replay: string;
}

export interface GenerateResult {
  generator: number;
  strategy: Strategy;
  seed: number;
  bug: BugName | null;
  designs: DesignName[];
  modes: MmuModeName[];
  /** Programs explored before the first violation (or all of them). */
  programs: number;
  schedules: number;
  violations: number;
  firstViolation: GeneratedViolation | null;
  /** Smaller candidates explored while shrinking, and the program before shrinking. */
  shrinks: number;
  unshrunk: Program | null;
  steps: number;
  elapsedMs: number;
}

const PREFIX = `gen${PROGRAM_VERSION}:`;

export function encodeReplay(
  p: Program,
  design: DesignName,
  mode: MmuModeName,
  bug: BugName | null,
  choices: number[],
): string {
  const body = JSON.stringify({ program: p, design, mode, bug, choices: encodeChoices(choices) });
  return PREFIX + Buffer.from(body).toString("base64url");
}

/** Parses a replay string; a string of another generator version is refused by name. */
export function decodeReplay(s: string): {
  program: Program;
  design: DesignName;
  mode: MmuModeName;
  bug: BugName | null;
  choices: number[];
} {
  const m = /^gen(\d+):([A-Za-z0-9_-]*)$/.exec(String(s).trim());
  if (!m)
    throw einval(
      "--replay",
      `"${String(s).slice(0, 40)}" is not a generated program's replay string (gen${PROGRAM_VERSION}:...)`,
    );
  if (Number(m[1]) !== PROGRAM_VERSION)
    throw einval(
      "--replay",
      `the string is from generator version ${m[1]}; this kvmmu reads version ${PROGRAM_VERSION} (generate the program again)`,
    );
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(Buffer.from(m[2], "base64url").toString()) as Record<string, unknown>;
  } catch {
    throw einval("--replay", "the string is damaged (not base64url JSON)");
  }
  if (typeof o !== "object" || o === null) throw einval("--replay", "the string is damaged (not an object)");
  const program = checkProgram(o.program);
  if (typeof o.design !== "string" || !isDesign(o.design))
    throw einval("--replay", `unknown design "${String(o.design)}"`);
  if (o.mode !== "tdp" && o.mode !== "shadow") throw einval("--replay", `unknown MMU "${String(o.mode)}"`);
  if (o.bug !== null && !(typeof o.bug === "string" && Object.hasOwn(BUG, o.bug)))
    throw einval("--replay", `unknown bug ${JSON.stringify(o.bug)}`);
  const threads = program.vcpus.length + 1 + program.hosts.length;
  const choices = decodeChoices(String(o.choices), threads, "--replay", "the program");
  return { program, design: o.design, mode: o.mode, bug: o.bug as BugName | null, choices };
}

function exploreProgram(
  o: GenerateOptions,
  p: Program,
  design: DesignName,
  mode: MmuModeName,
  schedules: number,
): Promise<ExploreResult> {
  return explore({
    scenario: "generated",
    scenarioObject: programScenario(p, o.bug ?? undefined),
    design,
    mode,
    bug: o.bug !== null,
    strategy: o.strategy,
    schedules,
    seed: o.seed,
    all: false,
    maxSteps: GENERATED_MAX_STEPS,
    ...(o.pctDepth !== undefined ? { pctDepth: o.pctDepth } : {}),
    ...(o.preemptions !== undefined ? { preemptions: o.preemptions } : {}),
  });
}

function violationOf(
  o: GenerateOptions,
  p: Program,
  design: DesignName,
  mode: MmuModeName,
  r: ExploreResult,
): GeneratedViolation {
  const v = r.firstViolation!;
  const choices = decodeChoices(
    v.schedule.slice(v.schedule.lastIndexOf(":") + 1),
    p.vcpus.length + 1 + p.hosts.length,
  );
  return {
    program: p,
    text: formatProgram(p),
    design,
    mode,
    schedule: v.schedule,
    invariant: v.invariant,
    trace: v.trace,
    steps: v.steps,
    replay: encodeReplay(p, design, mode, o.bug, choices),
  };
}

export async function generate(o: GenerateOptions): Promise<GenerateResult> {
  const t0 = performance.now();
  const res: GenerateResult = {
    generator: PROGRAM_VERSION,
    strategy: o.strategy,
    seed: o.seed,
    bug: o.bug,
    designs: o.designs,
    modes: o.modes,
    programs: 0,
    schedules: 0,
    violations: 0,
    firstViolation: null,
    shrinks: 0,
    unshrunk: null,
    steps: 0,
    elapsedMs: 0,
  };
  const limit = o.shrinkLimit ?? 150;
  // Set by the first failure: shrinking explores only its design and MMU, within a budget.
  let target: { design: DesignName; mode: MmuModeName; budget: number } | null = null;
  const prop = fc.asyncProperty(programArb(o.logs), async (p) => {
    if (target !== null) {
      if (res.shrinks >= limit) return true;
      res.shrinks++;
      const r = await exploreProgram(o, p, target.design, target.mode, target.budget);
      res.steps += r.steps;
      if (r.violations) res.firstViolation = violationOf(o, p, target.design, target.mode, r);
      return r.violations === 0;
    }
    if (o.signal?.aborted) return true;
    res.programs++;
    for (const design of o.designs)
      for (const mode of o.modes) {
        // A design without shadow paging (the TDP MMU) runs its programs in TDP mode only.
        if (!designSupportsMode(design, mode === "shadow" ? MmuMode.Shadow : MmuMode.Tdp)) continue;
        const r = await exploreProgram(o, p, design, mode, o.schedules);
        res.schedules += r.schedules;
        res.steps += r.steps;
        if (r.violations) {
          res.violations += r.violations;
          res.firstViolation = violationOf(o, p, design, mode, r);
          res.unshrunk = p;
          // A candidate counts as failing if it fails within a few times the schedules this took.
          target = { design, mode, budget: Math.min(o.schedules, Math.max(200, 4 * r.schedules)) };
          return false;
        }
      }
    return true;
  });
  await fc.check(prop, { seed: o.seed, numRuns: o.programs, endOnFailure: limit === 0 });
  res.elapsedMs = performance.now() - t0;
  return res;
}

/** Re-runs a generated program's schedule (a replay string from generate) exactly. */
export async function replayGenerated(
  s: string,
): Promise<Awaited<ReturnType<typeof replay>> & { program: Program; text: string }> {
  const d = decodeReplay(s);
  const r = await replay("", programScenario(d.program, d.bug ?? undefined), {
    bug: d.bug !== null,
    mode: d.mode,
    design: d.design,
    choices: d.choices,
  });
  return { ...r, program: d.program, text: formatProgram(d.program) };
}

/**
 * Schedule strings: `scenario@bug|fixed[/shadow][/wp=DESIGN]:t*n,...`, the thread chosen at each
 * step, run-length encoded. `/wp=` appears only when the run overrode the scenario's design.
 */
import { MmuModeName } from "../vm.js";
import { SCENARIOS } from "./scenarios.js";
import { einval } from "../errors.js";
import { DesignName, isDesign } from "../mmu/design.js";

/** The longest schedule decodeSchedule accepts (a run is bounded by its step limit anyway). */
export const MAX_SCHEDULE_STEPS = 1_000_000;

/** The choices, run-length encoded: "0*3,1,0". */
export function encodeChoices(choices: number[]): string {
  const parts: string[] = [];
  for (let i = 0; i < choices.length;) {
    let j = i;
    while (j < choices.length && choices[j] === choices[i]) j++;
    parts.push(j - i === 1 ? `${choices[i]}` : `${choices[i]}*${j - i}`);
    i = j;
  }
  return parts.join(",");
}

export function encodeSchedule(
  scenario: string,
  bug: boolean,
  choices: number[],
  mode: MmuModeName = "tdp",
  design?: DesignName,
): string {
  const m = mode === "shadow" ? "/shadow" : "";
  const d = design !== undefined ? `/wp=${design}` : "";
  return `${scenario}@${bug ? "bug" : "fixed"}${m}${d}:${encodeChoices(choices)}`;
}

/**
 * Expands run-length encoded choices for a scenario of `threads` threads: thread ids below
 * `threads`, repeat counts >= 1, at most MAX_SCHEDULE_STEPS steps in all (counted before
 * anything is expanded). Each refusal is EINVAL naming `what` and the bad part.
 */
export function decodeChoices(
  text: string,
  threads: number,
  what = "SCHEDULE",
  name = "the scenario",
): number[] {
  const items: [number, number][] = [];
  let total = 0;
  for (const p of text.split(",").filter((x) => x !== "")) {
    const parts = p.split("*");
    const [t, n] = parts;
    const tid = /^\d{1,3}$/.test(t) ? Number(t) : NaN;
    const count = n === undefined ? 1 : /^\d{1,7}$/.test(n) ? Number(n) : NaN;
    if (parts.length > 2 || !Number.isInteger(tid) || !Number.isInteger(count) || count < 1)
      throw einval(what, `bad item "${p.slice(0, 40)}" (thread*count, count 1..9999999)`);
    if (tid >= threads) throw einval(what, `item "${p}": ${name} has threads 0..${threads - 1}, not ${tid}`);
    total += count;
    if (total > MAX_SCHEDULE_STEPS)
      throw einval(what, `item "${p}": more than ${MAX_SCHEDULE_STEPS} steps in all`);
    items.push([tid, count]);
  }
  const choices: number[] = [];
  for (const [tid, count] of items) for (let k = 0; k < count; k++) choices.push(tid);
  return choices;
}

/**
 * Parses and checks a whole schedule string before anything runs: a known scenario (and
 * design, if named), then the choices as decodeChoices checks them.
 */
export function decodeSchedule(s: string): {
  scenario: string;
  bug: boolean;
  choices: number[];
  mode: MmuModeName;
  design?: DesignName;
} {
  if (typeof s !== "string") throw einval("SCHEDULE", `must be a string, got ${String(s)}`);
  const m = /^([a-z0-9-]+)@(bug|fixed)(?:\/(shadow))?(?:\/wp=([a-z0-9-]+))?:([0-9*,]*)$/.exec(s.trim());
  if (!m) throw einval("SCHEDULE", `"${s.slice(0, 60)}" is not a schedule (scenario@bug|fixed:t*n,...)`);
  const scenario = m[1];
  if (!Object.hasOwn(SCENARIOS, scenario)) throw einval("SCHEDULE", `unknown scenario "${scenario}"`);
  if (m[4] !== undefined && !isDesign(m[4])) throw einval("SCHEDULE", `unknown design "${m[4]}"`);
  const choices = decodeChoices(m[5], SCENARIOS[scenario].threads.length, "SCHEDULE", `scenario ${scenario}`);
  const out = { scenario, bug: m[2] === "bug", choices, mode: m[3] === "shadow" ? "shadow" : "tdp" } as const;
  return m[4] !== undefined ? { ...out, design: m[4] } : out;
}

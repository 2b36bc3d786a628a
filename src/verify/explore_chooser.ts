/**
 * The strategies of the explorer (src/verify/explore.ts): each picks the thread that takes the
 * next step. A thread that passed a spin point recently is "spinning": it waits for another.
 */
import { ParkMiller } from "../workload/rng.js";

export interface Chooser {
  /** Picks one of `runnable` (thread ids) at step `step`; `spinning[t]` is true at a spin point. */
  choose(step: number, runnable: number[], spinning: boolean[]): number;
  /** The chooser's state, to rewind simulated choices that did not happen. */
  save(): unknown;
  restore(state: unknown): void;
}

/** Prefers threads not spinning: a spinner waits for someone else to move. */
function progressing(runnable: number[], spinning: boolean[]): number[] {
  const p = runnable.filter((t) => !spinning[t]);
  return p.length ? p : runnable;
}

/*
 * The strategies' choose runs for every step the controller simulates (src/verify/explore_chain.ts),
 * so RandomChooser and PctChooser pick from `progressing(runnable, spinning)` without building it.
 */

/** How many of `runnable` are not spinning. */
function countProgressing(runnable: number[], spinning: boolean[]): number {
  let p = 0;
  for (let i = 0; i < runnable.length; i++) if (!spinning[runnable[i]]) p++;
  return p;
}

export class RandomChooser implements Chooser {
  constructor(private readonly rng: ParkMiller) {}
  choose(_step: number, runnable: number[], spinning: boolean[]): number {
    // c: runnable one time in 16, else progressing(runnable, spinning); then its element k.
    const all = this.rng.next() % 16 === 0;
    const p = all ? 0 : countProgressing(runnable, spinning);
    if (all || p === 0) return runnable[this.rng.next() % runnable.length];
    let k = this.rng.next() % p;
    for (let i = 0; ; i++) if (!spinning[runnable[i]] && k-- === 0) return runnable[i];
  }
  save(): unknown {
    return this.rng.state;
  }
  restore(state: unknown): void {
    this.rng.state = state as number;
  }
}

export class PctChooser implements Chooser {
  private readonly prio: number[];
  /** Change points as steps and priorities (a later one at the same step wins, as a Map's set). */
  private readonly changeStep: number[] = [];
  private readonly changePrio: number[] = [];
  /** [thread, priority before] of each change point applied, to rewind them. */
  private readonly undo: [number, number][] = [];
  constructor(rng: ParkMiller, threads: number, depth: number, estSteps: number) {
    // Priorities depth..depth+n-1 in random order; change point i lowers to i (below all initial).
    const p = Array.from({ length: threads }, (_, i) => depth + i);
    for (let i = p.length - 1; i > 0; i--) {
      const j = rng.next() % (i + 1);
      [p[i], p[j]] = [p[j], p[i]];
    }
    this.prio = p;
    for (let i = 1; i < depth; i++) {
      this.changeStep.push(rng.next() % Math.max(1, estSteps));
      this.changePrio.push(i);
    }
  }
  /** The priority change point `step` is, or undefined. */
  private changeAt(step: number): number | undefined {
    let ch: number | undefined;
    for (let i = 0; i < this.changeStep.length; i++) if (this.changeStep[i] === step) ch = this.changePrio[i];
    return ch;
  }
  choose(step: number, runnable: number[], spinning: boolean[]): number {
    // The highest priority of progressing(runnable, spinning), the first of equals.
    let best = -1;
    for (let i = 0; i < runnable.length; i++) {
      const t = runnable[i];
      if (!spinning[t] && (best < 0 || this.prio[t] > this.prio[best])) best = t;
    }
    // Everyone waits: rotate, so a lock holder that spun recently is not starved by priority.
    if (best < 0) return runnable[step % runnable.length];
    const ch = this.changeAt(step);
    if (ch !== undefined) {
      this.undo.push([best, this.prio[best]]);
      this.prio[best] = ch;
    }
    return best;
  }
  /** Only change points alter the priorities: the state is how many of them were applied. */
  save(): unknown {
    return this.undo.length;
  }
  restore(state: unknown): void {
    while (this.undo.length > (state as number)) {
      const [t, p] = this.undo.pop()!;
      this.prio[t] = p;
    }
  }
}

export class ReplayChooser implements Chooser {
  constructor(private readonly choices: number[]) {}
  choose(step: number, runnable: number[]): number {
    if (step >= this.choices.length) return runnable[0];
    return this.choices[step];
  }
  save(): unknown {
    return null;
  }
  restore(): void {}
}

/** Depth-first enumeration with a preemption bound; one instance drives a whole search. */
export class DfsChooser implements Chooser {
  stack: { options: number[]; idx: number; preemptions: number }[] = [];
  private last = -1;
  constructor(private readonly bound: number) {}
  begin(): void {
    this.last = -1;
  }
  save(): unknown {
    return this.stack.length * 16 + this.last + 1;
  }
  restore(state: unknown): void {
    const v = state as number;
    this.stack.length = v >> 4;
    this.last = (v & 15) - 1;
  }
  choose(step: number, runnable: number[], spinning: boolean[]): number {
    if (step < this.stack.length) {
      const f = this.stack[step];
      const t = f.options[f.idx];
      this.last = t;
      return t;
    }
    const c = progressing(runnable, spinning);
    // The non-preemptive choice (keep running the last thread) comes first.
    const options = c.includes(this.last) ? [this.last, ...c.filter((t) => t !== this.last)] : [...c];
    const before = step > 0 ? this.stack[step - 1].preemptions : 0;
    this.stack.push({ options, idx: 0, preemptions: before });
    this.last = options[0]!;
    return options[0];
  }
  /** Moves to the next schedule; false when the bounded space is exhausted. */
  next(): boolean {
    while (this.stack.length) {
      const f = this.stack[this.stack.length - 1];
      const base = this.stack.length > 1 ? this.stack[this.stack.length - 2].preemptions : 0;
      if (f.idx + 1 < f.options.length && base + 1 <= this.bound) {
        f.idx++;
        f.preemptions = base + 1;
        return true;
      }
      this.stack.pop();
    }
    return false;
  }
}

/** The chooser of the next schedule. */
export function nextChooser(
  o: { strategy: string; pctDepth?: number },
  dfs: DfsChooser | null,
  rng: ParkMiller,
  threads: number,
  estSteps: number,
): Chooser {
  if (dfs) {
    dfs.begin();
    return dfs;
  }
  if (o.strategy === "pct") return new PctChooser(rng, threads, o.pctDepth ?? 3, estSteps);
  return new RandomChooser(rng);
}

/**
 * The controller's plan of a chain of runs (src/sync/sched.ts): which thread the strategy picks
 * at each step, and for how many steps in a row, from the threads' state at the chain's start.
 */
import { SCHED_CHAIN_MAX } from "../sync/sched.js";
import { Chooser } from "./explore_chooser.js";

/** A thread that passed a spin point within its last SPIN_WINDOW steps is "spinning". */
export const SPIN_WINDOW = 64;
/**
 * The longest run granted in one hand-off. A run is usually cut short by a spin point or the
 * thread's end, and each simulated step the thread does not take is wasted controller work.
 */
const MAX_RUN = 256;

/**
 * How many steps in a row `chooser` gives `t` from `step` on, if only t moves and reaches no
 * spin point (`sinceSpin`: t's steps since its last one). The chooser is left as after the
 * last of those choices; `saved[k]` is its state before simulated step k.
 */
function runLength(
  chooser: Chooser,
  t: number,
  step: number,
  runnable: number[],
  spinning: boolean[],
  sinceSpin: number,
  saved: unknown[],
  maxSteps: number,
): number {
  const was = spinning[t];
  let k = 1;
  for (; k < MAX_RUN && step + k < maxSteps; k++) {
    spinning[t] = sinceSpin + k < SPIN_WINDOW;
    saved[k] = chooser.save();
    if (chooser.choose(step + k, runnable, spinning) !== t) {
      chooser.restore(saved[k]);
      break;
    }
  }
  spinning[t] = was;
  return k;
}

/** A planned chain of runs, entry i: thread, steps, and where it starts. */
export class Chain {
  readonly t: number[] = new Array<number>(SCHED_CHAIN_MAX).fill(0);
  readonly k: number[] = new Array<number>(SCHED_CHAIN_MAX).fill(0);
  /** The thread's own step count, and the schedule's step, at the run's start. */
  readonly own: number[] = new Array<number>(SCHED_CHAIN_MAX).fill(0);
  readonly step: number[] = new Array<number>(SCHED_CHAIN_MAX).fill(0);
  /** The chooser's state before each simulated step of the run (index: steps into the run). */
  readonly saved: unknown[][] = Array.from({ length: SCHED_CHAIN_MAX }, () => []);
  /** The chooser's state after the run's choices. */
  readonly after: unknown[] = new Array<unknown>(SCHED_CHAIN_MAX).fill(null);

  private set(i: number, t: number, k: number, own: number, step: number): void {
    this.t[i] = t;
    this.k[i] = k;
    this.own[i] = own;
    this.step[i] = step;
  }

  /** A chain of one step of `t` (one hand-off per step). */
  one(t: number, own: number, step: number): number {
    this.set(0, t, 1, own, step);
    return 1;
  }

  /**
   * Plans the chain from `step`, where the chooser picked `t`: t's run (runLength), then the
   * thread the chooser picks next if that run is taken whole and ends at no spin point, its run,
   * and so on, up to SCHED_CHAIN_MAX runs. Nothing the chooser reads changes along a chain but
   * the moving thread's step count (runnable and the others' spin windows stay), so each choice
   * is the one the controller would make after the runs before it. Returns the number of runs;
   * the chooser is left as after the last one's choices.
   */
  plan(
    chooser: Chooser,
    t: number,
    step: number,
    runnable: number[],
    spinning: boolean[],
    own: number[],
    lastSpin: number[],
    maxSteps: number,
  ): number {
    const o = own.slice();
    let s = step;
    for (let len = 0; ;) {
      const k = runLength(chooser, t, s, runnable, spinning, o[t] - lastSpin[t], this.saved[len], maxSteps);
      this.set(len, t, k, o[t], s);
      this.after[len++] = chooser.save();
      o[t] += k;
      s += k;
      if (len === SCHED_CHAIN_MAX || s >= maxSteps) return len;
      spinning[t] = o[t] - lastSpin[t] < SPIN_WINDOW;
      const u = chooser.choose(s, runnable, spinning);
      // Past MAX_RUN t is chosen again; a replayed schedule may name a thread that cannot run.
      if (u === t || !runnable.includes(u)) {
        chooser.restore(this.after[len - 1]);
        return len;
      }
      t = u;
    }
  }
}

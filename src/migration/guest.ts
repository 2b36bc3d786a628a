/**
 * The migration-test guest (as QEMU's a-b bootblock): each vCPU increments the first byte of
 * every page of its region, page after page, forever.
 *
 * Its only register is a 32-bit count of increments done, kept in guest memory (word `id` of
 * the state page), so a paused or stopped vCPU leaves all its state in memory for the migration
 * to carry. A pause can land between the page store and the counter store (a vCPU parks before
 * any access); on entry the guest finishes that step: if the page already holds the next value,
 * the increment retired and only the counter is behind.
 *
 * A bounded working set (`workingPages` w < n): the first pass fills all n pages (each gets
 * its first increment and a non-zero pattern word, so none travels as a ZERO record), then the
 * guest rewrites only pages 0..w-1, round and round. Step k touches page k for k < n, then page
 * (k - n) mod w; with w = n that is k mod n, the plain guest. `dirtyRate` (pages per second per
 * vCPU, 0: unbounded) bounds the rewriting after the fill: the guest halts when ahead of it.
 *
 * Invariant (checked by invariantOf): page j holds the number of steps that touched it, mod 256:
 * with c = count, n = pages, pass = c / n, next = c % n and w = n, page j holds
 * (pass + (j < next ? 1 : 0)) mod 256: one edge at most between equal values. Bound: the count
 * wraps after 2^32 increments of a vCPU and the invariant holds only before that (see
 * invariantOf; docs/migration.md "Invariant").
 */
import type { GuestContext } from "../guest/context.js";
import { defineBlock } from "../layout.js";

export interface MigrationGuestArgs {
  /** Guest-physical address of the state page (one 32-bit counter per vCPU). */
  stateGpa: number;
  /** Guest-physical address of vCPU 0's region; vCPU id's starts id * pages pages later. */
  regionGpa: number;
  /** Pages per vCPU. */
  pages: number;
  /** Pages per vCPU rewritten after the first pass (the working set), 1..pages. */
  workingPages: number;
  /** Pages per second per vCPU the rewriting may dirty; 0: unbounded. */
  dirtyRate: number;
  /** Int32Array over it: the control words MIG_CTL (throttle percent, halt word, hold). */
  ctl: SharedArrayBuffer;
}

/** The page step k touches (k < n: the fill pass; then the working set, round and round). */
export function pageOfStep(k: number, n: number, w: number): number {
  return k < n ? k : (k - n) % w;
}

/** How many of the first c steps touched page j (the byte it holds, before mod 256). */
export function touchesOf(j: number, c: number, n: number, w: number): number {
  if (c <= n) return j < c ? 1 : 0;
  if (j >= w) return 1;
  const r = c - n;
  return 1 + Math.floor(r / w) + (j < r % w ? 1 : 0);
}

/** A non-zero word the fill pass leaves in every page (at byte 4): the page's number, tagged. */
export function fillPattern(gpa: number): number {
  return (gpa / 4096) | 0x80000000 | 0;
}

/** The guest's control words (Int32Array over `args.ctl`). */
export const MIG_CTL = defineBlock(
  "migration-test guest control words",
  "MigrationGuestArgs.ctl",
  {
    throttle: {
      by: "the migration source (atomic store, auto-converge); the guest loads it",
      doc: "cpu-throttle percentage, 0..99",
    },
    sleep: { by: "never written: the throttled guest halts on it with a timeout", doc: "halt word" },
    hold: {
      by: "the migration destination (atomic store 0 + notify at switch-over); the guest loads it",
      doc: "nonzero: halt before the first access (a destination's vCPUs wait, started, for the last pages)",
    },
  },
  { words: 4 },
);
/** Throttling runs the guest for a slice, then sleeps slice * pct / (100 - pct). */
const SLICE_MS = 10;

export default function migrationGuest(ctx: GuestContext, a: MigrationGuestArgs): void {
  const ctl = new Int32Array(a.ctl);
  // A destination starts its vCPUs before the last pages arrive (as QEMU's destination process
  // is up before switch-over): they touch no memory until released.
  while (Atomics.load(ctl, MIG_CTL.hold) !== 0) ctx.halt(ctl, MIG_CTL.hold, 1, 50);
  const n = a.pages;
  const w = a.workingPages;
  const counter = a.stateGpa + 4 * ctx.vcpuId;
  const base = a.regionGpa + ctx.vcpuId * n * 4096;
  let c = ctx.load32(counter) >>> 0;
  // Finish an increment whose counter store did not happen before the vCPU was parked.
  const p0 = pageOfStep(c, n, w);
  if (ctx.load8(base + p0 * 4096) === ((touchesOf(p0, c, n, w) + 1) & 255)) {
    c = (c + 1) >>> 0;
    ctx.store32(counter, c);
  }
  let slice = performance.now();
  // --dirty-rate: steps since `t0` may not run ahead of rate x elapsed time.
  let t0 = slice;
  let c0 = c;
  for (;;) {
    const addr = base + pageOfStep(c, n, w) * 4096;
    if (c < n) ctx.store32(addr + 4, fillPattern(addr));
    ctx.store8(addr, ctx.load8(addr) + 1);
    c = (c + 1) >>> 0;
    ctx.store32(counter, c);
    ctx.writes++;
    if (c % n === 0) ctx.passDone();
    if ((c & 63) === 0) {
      ctx.checkpoint();
      const pct = Atomics.load(ctl, MIG_CTL.throttle);
      if (pct > 0) {
        const now = performance.now();
        if (now - slice >= SLICE_MS) {
          ctx.halt(ctl, MIG_CTL.sleep, 0, ((now - slice) * pct) / (100 - pct));
          slice = performance.now();
        }
      }
      if (a.dirtyRate > 0) {
        if (c <= n) {
          t0 = performance.now();
          c0 = c;
        } else {
          const ahead = ((c - c0) * 1000) / a.dirtyRate - (performance.now() - t0);
          if (ahead > 0) ctx.halt(ctl, MIG_CTL.sleep, 0, ahead);
        }
      }
    }
  }
}

export interface InvariantResult {
  ok: boolean;
  /** Per vCPU: the increment count read from the state page. */
  counts: number[];
  /** First few violations, as text. */
  problems: string[];
}

/**
 * Checks the invariant on a stopped or paused guest's memory. Valid while each vCPU's count has
 * not wrapped (fewer than 2^32 increments since the guest started): after a wrap the count no
 * longer says how many times each page was touched, and a correct guest may be reported broken.
 */
export function invariantOf(
  read: (gpa: number) => number,
  readCounter: (gpa: number) => number,
  o: { stateGpa: number; regionGpa: number; pages: number; workingPages?: number; vcpus: number },
): InvariantResult {
  const n = o.pages;
  const w = o.workingPages ?? n;
  const problems: string[] = [];
  const counts: number[] = [];
  for (let id = 0; id < o.vcpus; id++) {
    const c = readCounter(o.stateGpa + 4 * id) >>> 0;
    counts.push(c);
    const base = o.regionGpa + id * n * 4096;
    // The page of step c may already hold its increment (parked before the counter store).
    const next = pageOfStep(c, n, w);
    for (let j = 0; j < n; j++) {
      const want = touchesOf(j, c, n, w) & 255;
      const got = read(base + j * 4096);
      const retired = j === next && got === ((want + 1) & 255);
      if (got !== want && !retired && problems.length < 8)
        problems.push(
          `vcpu ${id} page ${j} (gpa 0x${(base + j * 4096).toString(16)}): byte ${got}, expected ${want} (count ${c})`,
        );
    }
  }
  return { ok: problems.length === 0, counts, problems };
}

/**
 * The conformance suite's guest for the models (a guest module, run by Vm.run): waits for the
 * host to bump round w[0], stores the round number to the first word of each page w[2..2+w[1]),
 * counts a pass, and waits again, out of guest mode (parked) until the next round. The kernel's
 * twin is listWriteCode in src/kernel/guest_x86.ts.
 */
import type { GuestContext } from "../guest/context.js";

export interface WriterArgs {
  /** Int32: [round, count, gfn...]; the host writes it only while the guest is parked. */
  sab: SharedArrayBuffer;
}

export default function writer(ctx: GuestContext, a: WriterArgs): void {
  const w = new Int32Array(a.sab);
  let seen = 0;
  for (;;) {
    while (Atomics.load(w, 0) === seen) ctx.halt(w, 0, seen, 50);
    seen = Atomics.load(w, 0);
    const n = w[1];
    for (let i = 0; i < n; i++) ctx.store32(w[2 + i] * 4096, seen);
    ctx.passDone();
  }
}

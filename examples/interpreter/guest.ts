/**
 * The interpreter, as a guest module: every vCPU runs the program in guest memory on its own
 * registers and data, one instruction at a time, every load and store through the guest
 * context (software TLB, MMU, dirty logging). Between instructions it checks the host's stop
 * request: then it marks itself parked and returns, leaving a consistent state (pc and registers
 * committed) in guest memory for the host to copy. Started again (in another VM), it continues.
 * At the host's park-at step count it halts until the stop request, so that no vCPU runs to the
 * end while another has not started yet (vCPU threads start at different times).
 */
import type { GuestContext } from "kvmmu";
import { Op, PROGRAM, reg, S_DONE, S_PARK_AT, S_PARKED, S_PC, S_STEPS, stateOf, STOP_REQ } from "./layout.js";

/** A private word to halt on: the wait ends by its timeout, then the stop request is read again. */
const idle = new Int32Array(new SharedArrayBuffer(4));

export default function interpreter(ctx: GuestContext): void {
  const st = stateOf(ctx.vcpuId);
  ctx.store32(st + S_PARKED, 0);
  const r = (i: number): number => ctx.load32(st + reg(i));
  const set = (i: number, x: number): void => ctx.store32(st + reg(i), x);
  let pc = ctx.load32(st + S_PC);
  let steps = ctx.load32(st + S_STEPS);
  const parkAt = ctx.load32(st + S_PARK_AT);
  while (ctx.load32(st + S_DONE) === 0) {
    if (parkAt !== 0 && steps >= parkAt) {
      while (ctx.load32(STOP_REQ) === 0) ctx.halt(idle, 0, 0, 1);
    }
    if (ctx.load32(STOP_REQ) !== 0) {
      ctx.store32(st + S_PARKED, 1);
      return;
    }
    const w = ctx.load32(PROGRAM + pc * 8);
    const imm = ctx.load32(PROGRAM + pc * 8 + 4);
    const a = (w >>> 8) & 255;
    const b = (w >>> 16) & 255;
    const c = w >>> 24;
    let next = pc + 1;
    switch ((w & 255) as Op) {
      case Op.Halt:
        ctx.store32(st + S_DONE, 1);
        next = pc;
        break;
      case Op.Li:
        set(a, imm);
        break;
      case Op.Add:
        set(a, (r(b) + r(c)) | 0);
        break;
      case Op.Addi:
        set(a, (r(b) + imm) | 0);
        break;
      case Op.Muli:
        set(a, Math.imul(r(b), imm));
        break;
      case Op.Ld:
        set(a, ctx.load32(r(b) >>> 0));
        break;
      case Op.St:
        ctx.store32(r(b) >>> 0, r(a));
        break;
      case Op.Bltu:
        if (r(a) >>> 0 < r(b) >>> 0) next = imm;
        break;
      default:
        throw new Error(`interpreter: bad opcode ${w & 255} at pc ${pc}`);
    }
    pc = next;
    steps++;
    ctx.store32(st + S_PC, pc);
    ctx.store32(st + S_STEPS, steps);
    if ((steps & 1023) === 0) ctx.checkpoint();
  }
  ctx.passDone();
}

/**
 * The interpreter example's machine: a tiny register bytecode whose program, registers, program
 * counter and data all live in guest memory (shared by the guest module and the host).
 *
 * Slot 0 at GPA_BASE, SLOT_PAGES pages:
 *   page 0            the program: 2 words per instruction, op | a << 8 | b << 16 | c << 24, imm
 *   page 1            control: word 0 = stop request (host -> guests)
 *   page 2 + id       vCPU id's state: pc, parked, done, steps, park-at, then registers r0..r7
 *   page 8 + 32 * id  vCPU id's data: 32 pages
 */
export const GPA_BASE = 1 << 20;
export const SLOT_PAGES = 128;
export const PAGE = 4096;
export const PROGRAM = GPA_BASE;
export const CONTROL = GPA_BASE + PAGE;
export const STOP_REQ = CONTROL;
export const DATA_PAGES = 32;
export const stateOf = (id: number): number => GPA_BASE + (2 + id) * PAGE;
export const dataOf = (id: number): number => GPA_BASE + (8 + DATA_PAGES * id) * PAGE;
/** State words (byte offsets from stateOf(id)). */
export const S_PC = 0;
export const S_PARKED = 4;
export const S_DONE = 8;
export const S_STEPS = 12;
/** The host's pace (0: none): at this many steps the vCPU waits for the stop request. */
export const S_PARK_AT = 16;
export const reg = (r: number): number => 32 + 4 * r;

export const enum Op {
  Halt = 0,
  Li = 1, // r[a] = imm
  Add = 2, // r[a] = r[b] + r[c]
  Addi = 3, // r[a] = r[b] + imm
  Muli = 4, // r[a] = r[b] * imm
  Ld = 5, // r[a] = mem32[r[b]]
  St = 6, // mem32[r[b]] = r[a]
  Bltu = 7, // if r[a] < r[b] (unsigned) pc = imm
}

export function ins(op: Op, a = 0, b = 0, c = 0, imm = 0): [number, number] {
  return [op | (a << 8) | (b << 16) | (c << 24), imm | 0];
}

/**
 * `rounds` times over the vCPU's data (r7 = base, r6 = end): x = x * 31 + i + round, stored back
 * and summed into r2.
 */
export function program(rounds: number): Uint8Array {
  const code = [
    ins(Op.Li, 5, 0, 0, 0), // 0: round = 0
    ins(Op.Li, 4, 0, 0, rounds), // 1: rounds
    ins(Op.Addi, 1, 7, 0, 0), // 2: p = base
    ins(Op.Li, 3, 0, 0, 0), // 3: i = 0
    ins(Op.Ld, 0, 1), // 4: x = *p
    ins(Op.Muli, 0, 0, 0, 31), // 5: x *= 31
    ins(Op.Add, 0, 0, 3), // 6: x += i
    ins(Op.Add, 0, 0, 5), // 7: x += round
    ins(Op.St, 0, 1), // 8: *p = x
    ins(Op.Add, 2, 2, 0), // 9: sum += x
    ins(Op.Addi, 1, 1, 0, 4), // 10: p += 4
    ins(Op.Addi, 3, 3, 0, 1), // 11: i++
    ins(Op.Bltu, 1, 6, 0, 4), // 12: if p < end goto 4
    ins(Op.Addi, 5, 5, 0, 1), // 13: round++
    ins(Op.Bltu, 5, 4, 0, 2), // 14: if round < rounds goto 2
    ins(Op.Halt), // 15
  ];
  return new Uint8Array(new Int32Array(code.flat()).buffer);
}

/**
 * The kernel backend's guests as x86-64 machine code, and the machine state they run in.
 *
 * KVM with PVM (no VMX/SVM) emulates code at CPL0 or in 32-bit mode one instruction at a time,
 * and an emulated store sets the dirty bit without an spte, so the guests run in 64-bit long
 * mode at CPL3 with IOPL=3 (OUT allowed in user mode), on user page tables that identity-map
 * guest-physical memory with 2 MiB pages. The system slot (slot 0, GPA 0, SYSTEM_BYTES) holds
 * the GDT, TSS, page tables, a page of shared variables and the code; the test memory is
 * slot 1 at 4 GiB, clear of the LAPIC page at 0xfee00000. "Pass done" is OUT to PASS_PORT,
 * which is a KVM_EXIT_IO (KVM's selftests' GUEST_SYNC is the same, at port 0x1000).
 *
 * Nothing here runs on a machine without /dev/kvm: the unit test checks the bytes against
 * the instructions' known encodings (Intel SDM vol. 2), not their execution.
 */

export const PAGE = 4096;
export const SYSTEM_BYTES = 2 << 20;
export const TEST_GPA = 2 ** 32;
export const PASS_PORT = 0x1000;

export const GDT_GPA = 0x0;
export const TSS_GPA = 0x800;
export const PML4_GPA = 0x1000;
export const PDPT_GPA = 0x2000;
export const PD_GPA = 0x3000;
/** Shared variables: iteration @0, stop @8, nr_writes @16, list count @24, list of gpas @32. */
export const VARS_GPA = 0x100000;
export const CODE_GPA = 0x110000;
export const STACK_TOP = 0x1ff000;
export const VAR = { iteration: 0, stop: 8, nr_writes: 16, list_count: 24, list: 32 } as const;

/** Registers by their encoding number. */
export const R = {
  rax: 0,
  rcx: 1,
  rdx: 2,
  rbx: 3,
  rsp: 4,
  rbp: 5,
  rsi: 6,
  rdi: 7,
  r8: 8,
  r9: 9,
  r10: 10,
  r11: 11,
  r12: 12,
  r13: 13,
  r14: 14,
  r15: 15,
} as const;

const rex = (w: number, r: number, x: number, b: number): number => 0x40 | (w << 3) | (r << 2) | (x << 1) | b;
const modrm = (mod: number, reg: number, rm: number): number => (mod << 6) | ((reg & 7) << 3) | (rm & 7);

/** A tiny x86-64 assembler: the instructions the guests use, labels and rel8 branches. */
export class Asm {
  readonly bytes: number[] = [];
  private readonly labels = new Map<string, number>();
  private readonly fixups: { at: number; label: string }[] = [];

  label(name: string): this {
    this.labels.set(name, this.bytes.length);
    return this;
  }

  private emit(...b: number[]): this {
    this.bytes.push(...b);
    return this;
  }

  /** REX.W op /r with rm a register. */
  private rr(op: number, reg: number, rm: number): this {
    return this.emit(rex(1, reg >> 3, 0, rm >> 3), op, modrm(3, reg, rm));
  }

  /** REX.W op /r with rm = [base + disp8]; [base] alone when disp is 0 (rsp/r12/rbp/r13 bases not used). */
  private rm(op: number, reg: number, base: number, disp: number, rexW = 1): this {
    if ((base & 7) === 4 || (base & 7) === 5) throw new RangeError("rsp/rbp/r12/r13 bases need SIB or disp");
    if (disp < -128 || disp > 127) throw new RangeError("disp8 only");
    const prefix = rex(rexW, reg >> 3, 0, base >> 3);
    if (disp === 0) return this.emit(prefix, op, modrm(0, reg, base));
    return this.emit(prefix, op, modrm(1, reg, base), disp & 0xff);
  }

  /** mov dst, src (REX.W 89 /r). */
  movRR(dst: number, src: number): this {
    return this.rr(0x89, src, dst);
  }
  /** mov [base+disp], src. */
  movStore(base: number, disp: number, src: number): this {
    return this.rm(0x89, src, base, disp);
  }
  /** mov dst, [base+disp] (REX.W 8B /r). */
  movLoad(dst: number, base: number, disp: number): this {
    return this.rm(0x8b, dst, base, disp);
  }
  /** add dst, imm32 (REX.W 81 /0 id). */
  addImm(dst: number, imm: number): this {
    this.rr(0x81, 0, dst);
    return this.emit(imm & 0xff, (imm >>> 8) & 0xff, (imm >>> 16) & 0xff, (imm >>> 24) & 0xff);
  }
  /** add dst, src (REX.W 01 /r). */
  addRR(dst: number, src: number): this {
    return this.rr(0x01, src, dst);
  }
  /** xor dst, src (REX.W 31 /r). */
  xorRR(dst: number, src: number): this {
    return this.rr(0x31, src, dst);
  }
  /** xor edx, edx: the 32-bit form zeroes the whole register (31 /r, no REX). */
  xorEdxEdx(): this {
    return this.emit(0x31, modrm(3, R.rdx, R.rdx));
  }
  /** shl dst, imm8 (REX.W C1 /4 ib). */
  shlImm(dst: number, n: number): this {
    return this.rr(0xc1, 4, dst).emit(n);
  }
  /** shr dst, imm8 (REX.W C1 /5 ib). */
  shrImm(dst: number, n: number): this {
    return this.rr(0xc1, 5, dst).emit(n);
  }
  /** dec r (REX.W FF /1). */
  dec(r: number): this {
    return this.rr(0xff, 1, r);
  }
  /** inc qword [base+disp] (REX.W FF /0). */
  incMem(base: number, disp: number): this {
    return this.rm(0xff, 0, base, disp);
  }
  /** div r: rdx:rax / r, remainder in rdx (REX.W F7 /6). */
  div(r: number): this {
    return this.rr(0xf7, 6, r);
  }
  /** cmp qword [base+disp], imm8 (REX.W 83 /7 ib). */
  cmpMemImm8(base: number, disp: number, imm: number): this {
    return this.rm(0x83, 7, base, disp).emit(imm & 0xff);
  }
  /** jnz rel8 (75 cb). */
  jnz(label: string): this {
    return this.branch(0x75, label);
  }
  /** jz rel8 (74 cb). */
  jz(label: string): this {
    return this.branch(0x74, label);
  }
  /** jmp rel8 (EB cb). */
  jmp(label: string): this {
    return this.branch(0xeb, label);
  }
  private branch(op: number, label: string): this {
    this.emit(op, 0);
    this.fixups.push({ at: this.bytes.length - 1, label });
    return this;
  }
  /** mov dx, imm16 (66 BA iw). */
  movDxImm(imm: number): this {
    return this.emit(0x66, 0xba, imm & 0xff, (imm >> 8) & 0xff);
  }
  /** out dx, al (EE). */
  outDxAl(): this {
    return this.emit(0xee);
  }

  /** The code with every branch resolved; RangeError for an unknown label or a jump past rel8. */
  assemble(): Uint8Array {
    for (const f of this.fixups) {
      const to = this.labels.get(f.label);
      if (to === undefined) throw new RangeError(`unknown label ${f.label}`);
      const rel = to - (f.at + 1);
      if (rel < -128 || rel > 127) throw new RangeError(`jump to ${f.label} out of rel8 range`);
      this.bytes[f.at] = rel & 0xff;
    }
    return Uint8Array.from(this.bytes);
  }
}

/**
 * memstress's pass: rdi = the vCPU's first page (gva = gpa), rsi = its pages, rax = the value
 * (memstress writes 0x0123456789ABCDEF). Writes 8 bytes at the start of every page in order,
 * then OUT to PASS_PORT (the host counts the pass and re-enters) and starts the next pass.
 */
export function memstressCode(port = PASS_PORT): Uint8Array {
  return new Asm()
    .label("pass")
    .movRR(R.rcx, R.rsi)
    .movRR(R.rbx, R.rdi)
    .label("page")
    .movStore(R.rbx, 0, R.rax)
    .addImm(R.rbx, PAGE)
    .dec(R.rcx)
    .jnz("page")
    .movDxImm(port)
    .outDxAl()
    .jmp("pass")
    .assemble();
}

/**
 * dirty_log_test's guest: r8 = VARS_GPA, rdi = the test slot's first page, rsi = its pages,
 * r9 = the RNG state (xorshift64, non-zero). Until `stop` is set it writes the current
 * `iteration` to the first 8 bytes of a pseudo-random page and counts nr_writes; with `stop`
 * set it does OUT to PASS_PORT (the host parks it there) and looks again when re-entered.
 */
export function dirtyLogTestCode(port = PASS_PORT): Uint8Array {
  return new Asm()
    .label("top")
    .cmpMemImm8(R.r8, VAR.stop, 0)
    .jnz("stop")
    .movRR(R.rax, R.r9)
    .shlImm(R.rax, 13)
    .xorRR(R.r9, R.rax)
    .movRR(R.rax, R.r9)
    .shrImm(R.rax, 7)
    .xorRR(R.r9, R.rax)
    .movRR(R.rax, R.r9)
    .shlImm(R.rax, 17)
    .xorRR(R.r9, R.rax)
    .movRR(R.rax, R.r9)
    .xorEdxEdx()
    .div(R.rsi)
    .shlImm(R.rdx, 12)
    .addRR(R.rdx, R.rdi)
    .movLoad(R.rax, R.r8, VAR.iteration)
    .movStore(R.rdx, 0, R.rax)
    .incMem(R.r8, VAR.nr_writes)
    .jmp("top")
    .label("stop")
    .movDxImm(port)
    .outDxAl()
    .jmp("top")
    .assemble();
}

/** The identity map: PML4, PDPT and one PD per GiB of [0, gib GiB), 2 MiB user pages. */
export function pageTables(gib: number): Map<number, bigint[]> {
  if (gib < 1 || gib > 512) throw new RangeError("gib must be 1..512");
  const P = 1n,
    RW = 2n,
    US = 4n,
    PS = 0x80n;
  const out = new Map<number, bigint[]>();
  const pml4 = new Array<bigint>(512).fill(0n);
  pml4[0] = BigInt(PDPT_GPA) | P | RW | US;
  out.set(PML4_GPA, pml4);
  const pdpt = new Array<bigint>(512).fill(0n);
  for (let g = 0; g < gib; g++) {
    pdpt[g] = BigInt(PD_GPA + g * PAGE) | P | RW | US;
    const pd = new Array<bigint>(512);
    for (let i = 0; i < 512; i++) pd[i] = ((BigInt(g) << 30n) + (BigInt(i) << 21n)) | P | RW | US | PS;
    out.set(PD_GPA + g * PAGE, pd);
  }
  out.set(PDPT_GPA, pdpt);
  return out;
}

/** GDT: null, kernel code64 0x08, kernel data 0x10, user data 0x18 (sel 0x1b), user code64 0x20 (sel 0x23), TSS 0x28. */
export function gdt(): bigint[] {
  const tss = 0x67n | (BigInt(TSS_GPA & 0xffffff) << 16n) | (0x89n << 40n);
  return [0n, 0x00af9a000000ffffn, 0x00cf92000000ffffn, 0x00cff2000000ffffn, 0x00affa000000ffffn, tss, 0n];
}

export const USER_CS = 0x23;
export const USER_DS = 0x1b;
export const TSS_SEL = 0x28;

/** Writes the system slot's tables and `code` into its bytes (a view of slot 0's memory). */
export function buildSystemSlot(mem: Uint8Array, code: Uint8Array, testBytes: number): void {
  if (mem.length < SYSTEM_BYTES) throw new RangeError("system slot too small");
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  gdt().forEach((d, i) => dv.setBigUint64(GDT_GPA + 8 * i, d, true));
  const gib = Math.ceil((TEST_GPA + testBytes) / 2 ** 30);
  for (const [gpa, table] of pageTables(gib)) table.forEach((e, i) => dv.setBigUint64(gpa + 8 * i, e, true));
  mem.set(code, CODE_GPA);
}

/** struct kvm_segment at `off` of a kvm_sregs buffer. */
function setSegment(
  dv: DataView,
  off: number,
  s: {
    base: number;
    limit: number;
    selector: number;
    type: number;
    s: number;
    dpl: number;
    l: number;
    db: number;
    g: number;
    unusable?: number;
  },
): void {
  dv.setBigUint64(off, BigInt(s.base), true);
  dv.setUint32(off + 8, s.limit >>> 0, true);
  dv.setUint16(off + 12, s.selector, true);
  const b = [s.type, 1, s.dpl, s.db, s.s, s.l, s.g, 0, s.unusable ?? 0, 0];
  b.forEach((x, i) => dv.setUint8(off + 14 + i, x));
}

export const CR0_LONG = 0x80010031; // PG | WP | NE | ET | PE
export const CR4_LONG = 0x620; // OSXMMEXCPT | OSFXSR | PAE
export const EFER_LONG = 0x500; // LMA | LME
export const RFLAGS_USER = 0x3002; // IOPL=3 | reserved bit 1

/**
 * Long mode at CPL3 in a kvm_sregs buffer (KVM_GET_SREGS's, so apic_base and the rest stay):
 * segments (cs, ds, es, fs, gs, ss, tr, ldt: 24 bytes each), gdt, idt, cr0, cr3, cr4, efer.
 */
export function setLongModeSregs(sregs: Uint8Array): void {
  const dv = new DataView(sregs.buffer, sregs.byteOffset, sregs.byteLength);
  const code = { base: 0, limit: 0xffffffff, selector: USER_CS, type: 11, s: 1, dpl: 3, l: 1, db: 0, g: 1 };
  const data = { base: 0, limit: 0xffffffff, selector: USER_DS, type: 3, s: 1, dpl: 3, l: 0, db: 1, g: 1 };
  setSegment(dv, 0, code);
  for (const i of [1, 2, 3, 4, 5]) setSegment(dv, i * 24, data); // ds es fs gs ss
  setSegment(dv, 6 * 24, {
    base: TSS_GPA,
    limit: 0x67,
    selector: TSS_SEL,
    type: 11,
    s: 0,
    dpl: 0,
    l: 0,
    db: 0,
    g: 0,
  });
  setSegment(dv, 7 * 24, {
    base: 0,
    limit: 0,
    selector: 0,
    type: 0,
    s: 0,
    dpl: 0,
    l: 0,
    db: 0,
    g: 0,
    unusable: 1,
  });
  dv.setBigUint64(192, BigInt(GDT_GPA), true); // gdt.base
  dv.setUint16(200, gdt().length * 8 - 1, true); // gdt.limit
  dv.setBigUint64(208, 0n, true); // idt.base
  dv.setUint16(216, 0, true); // idt.limit: no IDT, a fault is a shutdown exit
  dv.setBigUint64(224, BigInt(CR0_LONG), true);
  dv.setBigUint64(240, BigInt(PML4_GPA), true);
  dv.setBigUint64(248, BigInt(CR4_LONG), true);
  dv.setBigUint64(264, BigInt(EFER_LONG), true);
}

/** struct kvm_regs's order (not the encoding's): rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags. */
const KVM_REGS_ORDER: readonly (keyof typeof R)[] = [
  "rax",
  "rbx",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "rsp",
  "rbp",
  "r8",
  "r9",
  "r10",
  "r11",
  "r12",
  "r13",
  "r14",
  "r15",
];

/** Byte offset of a register in struct kvm_regs. */
export function kvmRegsOffset(r: keyof typeof R): number {
  return KVM_REGS_ORDER.indexOf(r) * 8;
}

/** A kvm_regs buffer: rip at the code, user rflags, the stack, and the guest's arguments. */
export function longModeRegs(args: Partial<Record<keyof typeof R, bigint>>): Uint8Array {
  const regs = new Uint8Array(144);
  const dv = new DataView(regs.buffer);
  for (const [name, v] of Object.entries(args))
    dv.setBigUint64(kvmRegsOffset(name as keyof typeof R), v, true);
  dv.setBigUint64(kvmRegsOffset("rsp"), BigInt(STACK_TOP), true);
  dv.setBigUint64(128, BigInt(CODE_GPA), true); // rip
  dv.setBigUint64(136, BigInt(RFLAGS_USER), true); // rflags
  return regs;
}

/**
 * The conformance suite's writer: r8 = VARS_GPA. Writes `iteration` to the first 8 bytes of
 * each of the list_count gpas at VAR.list, then OUT to PASS_PORT; re-entered, it does it again
 * with whatever list the host has put there meanwhile.
 */
export function listWriteCode(port = PASS_PORT): Uint8Array {
  return new Asm()
    .label("top")
    .cmpMemImm8(R.r8, VAR.list_count, 0)
    .jz("done")
    .movLoad(R.rcx, R.r8, VAR.list_count)
    .movRR(R.rbx, R.r8)
    .addImm(R.rbx, VAR.list)
    .movLoad(R.rax, R.r8, VAR.iteration)
    .label("next")
    .movLoad(R.rdx, R.rbx, 0)
    .movStore(R.rdx, 0, R.rax)
    .addImm(R.rbx, 8)
    .dec(R.rcx)
    .jnz("next")
    .label("done")
    .movDxImm(port)
    .outDxAl()
    .jmp("top")
    .assemble();
}

/**
 * The x86-64 guests' bytes against the instructions' encodings (Intel SDM vol. 2), and the
 * machine state (page tables, GDT, sregs, regs) field by field. The code cannot run here:
 * there is no /dev/kvm on the machines this suite must pass on.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import * as g from "../../src/kernel/guest_x86.js";

const { R } = g;
const hex = (b: Uint8Array | number[]): string =>
  [...b].map((x) => x.toString(16).padStart(2, "0")).join(" ");
const one = (f: (a: g.Asm) => g.Asm): string => hex(f(new g.Asm()).assemble());

test("guest_x86: each instruction encodes as the SDM gives it", () => {
  assert.equal(
    one((a) => a.movRR(R.rcx, R.rsi)),
    "48 89 f1",
  ); // mov rcx, rsi
  assert.equal(
    one((a) => a.movRR(R.rbx, R.rdi)),
    "48 89 fb",
  ); // mov rbx, rdi
  assert.equal(
    one((a) => a.movRR(R.rax, R.r9)),
    "4c 89 c8",
  ); // mov rax, r9
  assert.equal(
    one((a) => a.movStore(R.rbx, 0, R.rax)),
    "48 89 03",
  ); // mov [rbx], rax
  assert.equal(
    one((a) => a.movStore(R.rdx, 0, R.rax)),
    "48 89 02",
  ); // mov [rdx], rax
  assert.equal(
    one((a) => a.movLoad(R.rax, R.r8, 0)),
    "49 8b 00",
  ); // mov rax, [r8]
  assert.equal(
    one((a) => a.movLoad(R.rcx, R.r8, 24)),
    "49 8b 48 18",
  ); // mov rcx, [r8+24]
  assert.equal(
    one((a) => a.addImm(R.rbx, 0x1000)),
    "48 81 c3 00 10 00 00",
  ); // add rbx, 0x1000
  assert.equal(
    one((a) => a.addRR(R.rdx, R.rdi)),
    "48 01 fa",
  ); // add rdx, rdi
  assert.equal(
    one((a) => a.xorRR(R.r9, R.rax)),
    "49 31 c1",
  ); // xor r9, rax
  assert.equal(
    one((a) => a.xorEdxEdx()),
    "31 d2",
  ); // xor edx, edx
  assert.equal(
    one((a) => a.shlImm(R.rax, 13)),
    "48 c1 e0 0d",
  ); // shl rax, 13
  assert.equal(
    one((a) => a.shrImm(R.rax, 7)),
    "48 c1 e8 07",
  ); // shr rax, 7
  assert.equal(
    one((a) => a.shlImm(R.rdx, 12)),
    "48 c1 e2 0c",
  ); // shl rdx, 12
  assert.equal(
    one((a) => a.dec(R.rcx)),
    "48 ff c9",
  ); // dec rcx
  assert.equal(
    one((a) => a.incMem(R.r8, 16)),
    "49 ff 40 10",
  ); // inc qword [r8+16]
  assert.equal(
    one((a) => a.div(R.rsi)),
    "48 f7 f6",
  ); // div rsi
  assert.equal(
    one((a) => a.cmpMemImm8(R.r8, 8, 0)),
    "49 83 78 08 00",
  ); // cmp qword [r8+8], 0
  assert.equal(
    one((a) => a.movDxImm(0x1000)),
    "66 ba 00 10",
  ); // mov dx, 0x1000
  assert.equal(
    one((a) => a.outDxAl()),
    "ee",
  ); // out dx, al
  assert.throws(() => new g.Asm().movStore(R.rsp, 0, R.rax), RangeError);
  assert.throws(() => new g.Asm().jmp("nowhere").assemble(), RangeError);
});

test("guest_x86: memstress's pass, byte for byte, with its branches resolved", () => {
  const code = g.memstressCode();
  assert.equal(
    hex(code),
    [
      "48 89 f1", // pass: mov rcx, rsi
      "48 89 fb", //       mov rbx, rdi
      "48 89 03", // page: mov [rbx], rax
      "48 81 c3 00 10 00 00", // add rbx, 4096
      "48 ff c9", //       dec rcx
      "75 f1", //          jnz page (-15: back over 15 bytes to offset 6)
      "66 ba 00 10", //    mov dx, 0x1000
      "ee", //             out dx, al
      "eb e4", //          jmp pass (-28: from offset 28 to 0)
    ].join(" "),
  );
});

test("guest_x86: the dirty-log-test and list-write guests end in OUT and loop back to their start", () => {
  for (const code of [g.dirtyLogTestCode(), g.listWriteCode()]) {
    const n = code.length;
    assert.equal(code[n - 2], 0xeb, "ends with jmp rel8");
    assert.equal(n + ((code[n - 1] << 24) >> 24), 0, "the jmp goes to offset 0");
    assert.equal(code[n - 3], 0xee, "OUT dx, al before it");
    assert.deepEqual([...code.subarray(n - 7, n - 3)], [0x66, 0xba, 0x00, 0x10], "mov dx, PASS_PORT");
  }
  // The dirty-log-test guest: stop flag test first, the store of iteration in the middle.
  const d = hex(g.dirtyLogTestCode());
  assert.ok(d.startsWith("49 83 78 08 00 75"), d);
  assert.ok(d.includes("49 8b 00 48 89 02 49 ff 40 10"), "load iteration, store it, count the write");
});

test("guest_x86: identity map with 2 MiB user pages, GDT descriptors, sregs and regs", () => {
  const pt = g.pageTables(5);
  assert.equal(pt.get(g.PML4_GPA)![0], BigInt(g.PDPT_GPA) | 7n);
  assert.equal(pt.get(g.PDPT_GPA)![4], BigInt(g.PD_GPA + 4 * 4096) | 7n);
  // GPA 4 GiB + 2 MiB: PD of GiB 4, entry 1: P|RW|US|PS.
  assert.equal(pt.get(g.PD_GPA + 4 * 4096)![1], (4n << 30n) + (1n << 21n) + 0x87n);
  assert.equal(pt.get(g.PDPT_GPA)![5], 0n);
  const d = g.gdt();
  assert.equal(d[4], 0x00affa000000ffffn, "user code: L=1, DPL 3");
  assert.equal(d[3], 0x00cff2000000ffffn, "user data: DPL 3");
  assert.equal(g.USER_CS & 3, 3);
  assert.equal(g.USER_DS & 3, 3);
  const sregs = new Uint8Array(312);
  g.setLongModeSregs(sregs);
  const dv = new DataView(sregs.buffer);
  assert.equal(dv.getUint16(12, true), g.USER_CS); // cs.selector
  assert.deepEqual([...sregs.subarray(14, 20)], [11, 1, 3, 0, 1, 1]); // cs: type, present, dpl, db, s, l
  assert.equal(dv.getUint8(5 * 24 + 16), 3, "ss.dpl = 3: CPL3");
  assert.equal(dv.getBigUint64(224, true), 0x80010031n, "cr0: PG WP NE ET PE");
  assert.equal(dv.getBigUint64(240, true), BigInt(g.PML4_GPA), "cr3");
  assert.equal(dv.getBigUint64(264, true), 0x500n, "efer: LME LMA");
  const regs = new DataView(g.longModeRegs({ rdi: 1n << 32n, rsi: 512n }).buffer);
  assert.equal(regs.getBigUint64(g.kvmRegsOffset("rdi"), true), 1n << 32n);
  assert.equal(g.kvmRegsOffset("rdi"), 40);
  assert.equal(g.kvmRegsOffset("r8"), 64);
  assert.equal(regs.getBigUint64(128, true), BigInt(g.CODE_GPA), "rip");
  assert.equal(regs.getBigUint64(136, true) & 0x3000n, 0x3000n, "IOPL 3");
});

import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { declaredLayouts, defineRows } from "../../src/layout.js";
import { allocKvmShared, CTL, DESC, MmuMode, SP, SLOT, VCPU } from "../../src/kvm_host.js";
import { RWLOCK_WORDS } from "../../src/sync/rwlock.js";
import { LAYOUT_BEGIN, LAYOUT_END, layoutSection } from "../../src/layout_doc.js";

test("layouts: fields do not overlap and fit their stride", () => {
  const layouts = declaredLayouts();
  assert.ok(layouts.length >= 7, `only ${layouts.length} layouts declared`);
  for (const l of layouts) {
    let next = 0;
    for (const f of l.fields) {
      assert.equal(f.offset, next, `${l.struct}.${f.name} offset`);
      assert.ok(f.by.length > 0 && f.doc.length > 0, `${l.struct}.${f.name} says what protects it`);
      next += f.words;
    }
    assert.ok(next <= l.stride, `${l.struct}: ${next} words in a stride of ${l.stride}`);
  }
});

test("layouts: index functions follow the declaration", () => {
  assert.equal(SP.gfn(3), 3 * SP.STRIDE);
  assert.equal(SP.role(3), 3 * SP.STRIDE + 1);
  assert.equal(VCPU.requests(2), 2 * VCPU.STRIDE + 1);
  assert.equal(SLOT.npages(1), SLOT.STRIDE + 3);
  assert.equal(DESC.more(5), 5 * DESC.STRIDE + 3);
  // mmu_lock sits between two 15-word pads (its own cache line at any 16-byte alignment).
  assert.equal(CTL.mmu_lock, 15);
  assert.equal(CTL.slots_lock, CTL.mmu_lock + RWLOCK_WORDS + 15);
  // A declaration that does not fit its stride is refused (before it is registered).
  assert.throws(() => defineRows("bad", "t", { a: { words: 5, by: "x", doc: "y" } }, { stride: 4 }));
});

test("layouts: the shared buffers hold every declared row", () => {
  const s = allocKvmShared({
    hostFrames: 1024,
    maxSlotPages: 1024,
    maxSp: 16,
    maxDesc: 16,
    maxVcpus: 4,
    wp: "lockless",
    bugs: 0,
    mode: MmuMode.Shadow,
  });
  assert.ok(s.ctl.byteLength >= CTL.WORDS * 4);
  assert.ok(s.spHdr.byteLength >= 16 * SP.STRIDE * 4);
  assert.ok(s.vcpu.byteLength >= 4 * VCPU.STRIDE * 4);
  assert.ok(s.desc.byteLength >= 16 * DESC.STRIDE * 4);
});

/** Markdown as its meaning: table cells trimmed, separator rows alike, blank lines dropped. */
function normalize(md: string): string[] {
  return md
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .map((l) =>
      l.startsWith("|")
        ? l
            .split("|")
            .map((c) => c.trim().replace(/^-+$/, "---"))
            .join("|")
        : l,
    );
}

test("docs/locking.md carries the generated layout table", () => {
  const doc = readFileSync(new URL("../../../docs/locking.md", import.meta.url), "utf8");
  const a = doc.indexOf(LAYOUT_BEGIN);
  const b = doc.indexOf(LAYOUT_END);
  assert.ok(a >= 0 && b > a, "docs/locking.md has the layout markers");
  const have = normalize(doc.slice(a, b + LAYOUT_END.length));
  const want = normalize(layoutSection());
  assert.ok(want.some((l) => l.includes("struct kvm_mmu_page")));
  assert.deepEqual(have, want, "docs/locking.md is stale: run `npm run docs:layouts`");
});

const SRC = fileURLToPath(new URL("../../../src/", import.meta.url));

/** Row arithmetic by hand: `x * FOO_STRIDE`, `FOO_STRIDE + x`, `x * SP.STRIDE`, `SP.STRIDE + x`. */
const HAND_ROW = /\*\s*[A-Z][A-Z0-9_]*(_|\.)STRIDE\b|\b[A-Z][A-Z0-9_]*(_|\.)STRIDE\s*\+/;

function strideArithmetic(file: string, text: string): string[] {
  const bad: string[] = [];
  text.split("\n").forEach((line, i) => {
    const code = line.replace(/\/\/.*$/, "");
    if (/^\s*(\*|\/\*)/.test(code)) return; // comments may show the arithmetic
    if (HAND_ROW.test(code)) bad.push(`${file}:${i + 1}: ${line.trim()}`);
  });
  return bad;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

test("layouts: no file in src/ but layout.ts computes row * STRIDE + FIELD", () => {
  const files = sources(SRC);
  assert.ok(files.length > 20, `found the sources at ${SRC}`);
  const bad = files
    .map((f) => relative(SRC, f).split("\\").join("/"))
    .filter((f) => f !== "layout.ts")
    .flatMap((f) => strideArithmetic(f, readFileSync(join(SRC, f), "utf8")));
  assert.deepEqual(bad, []);
});

test("layouts: the STRIDE pattern catches hand-written rows", () => {
  const caught = [
    "kvm.spHdr[sp * SP_STRIDE + SP_ROLE]",
    "const r = id * SLOT_STRIDE;",
    "kvm.vcpu[VCPU_STRIDE + VCPU_ROOT]",
    "const b = SCHED_HDR + t * SCHED_STRIDE;",
    "ctl[DLG_VCPU_BASE + id * DLG_VCPU_STRIDE + DLG_WRITES]",
    "x[sp * SPX.STRIDE + 2]",
    "kvm.desc[DESC.STRIDE + 3]",
  ];
  for (const s of caught) assert.equal(strideArithmetic("mmu/x.ts", s).length, 1, s);
  const fine = [
    "kvm.spHdr[SP.role(sp)]",
    "for (let w = 0; w < DESC.STRIDE; w++) n++;",
    "const b = VCPU.row(id);",
    " * A row is `id * SLOT_STRIDE + field` words in.",
  ];
  for (const s of fine) assert.deepEqual(strideArithmetic("mmu/x.ts", s), [], s);
});

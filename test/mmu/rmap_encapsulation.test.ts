/**
 * Only src/mmu/rmap.ts decodes rmap heads and pte_list_desc words; everyone else goes through
 * its API (for_each_rmap_spte, pte_list_walk, rmap_get_first, rmap_single_spte, ...). This test
 * reads the sources (it runs from dist/test/mmu/, the sources are ../../../src) and fails on a
 * decoding pattern outside rmap.ts.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const SRC = fileURLToPath(new URL("../../../src/", import.meta.url));

/** Files allowed to use the descriptor layout: the owner, the slab that allocates it, its declaration. */
const LAYOUT_OK = new Set(["mmu/rmap.ts", "alloc/slab.ts", "kvm_host.ts"]);

const RULES: { what: string; re: RegExp; allowed: Set<string> }[] = [
  {
    what: "descriptor layout (DESC, PTE_LIST_EXT)",
    re: /\b(DESC|PTE_LIST_EXT)\b/,
    allowed: LAYOUT_OK,
  },
  {
    what: "indexing descriptor words (.desc[...])",
    re: /\.desc\[/,
    allowed: new Set(["mmu/rmap.ts", "alloc/slab.ts"]),
  },
  {
    what: "entry/descriptor pointer decode ((x >>> 1) - 1)",
    re: />>>\s*1\)\s*-\s*1\b/,
    allowed: new Set(["mmu/rmap.ts"]),
  },
  {
    what: "head tag bit ((head & 1), rmapPool[..] & 1, heads[..] & 1)",
    re: /\b(head|rmapPool\[[^\]]*\]|heads\[[^\]]*\]|SP\.parent_ptes\([^)]*\)\])\s*(&\s*1\b|>>>\s*1)/,
    allowed: new Set(["mmu/rmap.ts"]),
  },
];

function sources(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...sources(p));
    else if (e.name.endsWith(".ts")) out.push(p);
  }
  return out;
}

function violations(file: string, text: string): string[] {
  const bad: string[] = [];
  text.split("\n").forEach((line, i) => {
    const code = line.replace(/\/\/.*$/, "");
    if (/^\s*(\*|\/\*)/.test(code)) return; // comments may name the encoding
    for (const r of RULES)
      if (!r.allowed.has(file) && r.re.test(code)) bad.push(`${file}:${i + 1}: ${r.what}: ${line.trim()}`);
  });
  return bad;
}

test("rmap encapsulation: no file in src/ but rmap.ts decodes rmap heads or descriptors", () => {
  const files = sources(SRC);
  assert.ok(files.length > 20, `found the sources at ${SRC}`);
  assert.ok(files.some((f) => f.endsWith(join("mmu", "rmap.ts"))));
  const bad = files.flatMap((f) =>
    violations(relative(SRC, f).split("\\").join("/"), readFileSync(f, "utf8")),
  );
  assert.deepEqual(bad, []);
});

test("rmap encapsulation: the patterns catch the decodings they are meant to", () => {
  const samples = [
    'import { DESC } from "../kvm_host.js";',
    "const v = kvm.spHdr[SP.parent_ptes(sp)] & 1;",
    "const m = kvm.desc[d * 4 + 3];",
    "const sptep = (v >>> 1) - 1;",
    "if ((head & 1) !== 0) throw new Error();",
    "const v = kvm.rmapPool[hi] & 1;",
  ];
  for (const s of samples) assert.equal(violations("mmu/dirty_log.ts", s).length, 1, s);
  for (const s of samples) assert.deepEqual(violations("mmu/rmap.ts", s), [], `rmap.ts may: ${s}`);
  assert.deepEqual(violations("vcpu/tlb.ts", "const pfn = aload(kvm.hpt, i) >>> 1;"), []);
  assert.deepEqual(
    violations("mmu/x.ts", " * a head (v & 1) is odd for a chain"),
    [],
    "comments are skipped",
  );
});

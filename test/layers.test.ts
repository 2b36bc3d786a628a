/**
 * The layers of src/, lowest first: a file may import from its own layer and from lower ones
 * only, and the import graph (type-only imports included) has no cycle. This list is the one
 * declaration of the layer order; docs/design.md describes it.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** Paths relative to src/: a directory ("mmu/") or a file ("vm.ts"). */
export const LAYERS: readonly (readonly string[])[] = [
  ["errors.ts"],
  ["sync/", "layout.ts"], // layout.ts: how shared structures are declared
  ["kvm_host.ts"], // the shared layouts every layer above reads
  ["alloc/"],
  ["mem/"], // memslots, dirty bitmaps, host memory, guest memory access
  ["kvm/"], // vCPU requests and the remote TLB flush
  ["mmu/"],
  ["vcpu/"],
  ["guest/context.ts", "guest/host_access.ts"], // the public guest context; host access to guest memory
  ["workload/"], // guest programs and the worker entry points that run them
  ["guest/spec.ts", "vm.ts", "vm/"], // guest specs are checked by Vm.run; vm/: the ioctl layer and its surfaces
  ["kernel/"], // the real KVM through /dev/kvm (koffi), beside the models' Vm
  ["dirty_bitmap.ts"], // public bitmap helpers over a Vm
  ["migration/"], // live migration over the public Vm API
  ["verify/"],
  ["bench/", "results/"], // benchmarks; saved results, compare and the report (bench/catalog writes CSV)
  ["cli/"],
  ["index.ts", "layout_doc.ts"], // the package's entry point; the docs generator
];

/** Upward edges tolerated for now, each with its reason. */
const ALLOWED_UPWARD: ReadonlySet<string> = new Set([]);

export function layerOf(file: string): number {
  for (let i = 0; i < LAYERS.length; i++)
    for (const p of LAYERS[i]) if (p.endsWith("/") ? file.startsWith(p) : file === p) return i;
  return -1;
}

const IMPORT_RE =
  /(?:^|[\s;])(?:import|export)\b[^"'`;]*?from\s*["']([^"']+)["']|import\s*\(\s*["']([^"']+)["']\s*\)|^\s*import\s*["']([^"']+)["']/gm;

/** The relative import specifiers of one source text. */
export function importsOf(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(IMPORT_RE)) {
    const spec = m[1] ?? m[2] ?? m[3];
    if (spec !== undefined && spec.startsWith(".")) out.push(spec);
  }
  return out;
}

/** Import graph of src/ (files relative to src/, .ts). */
export function importGraph(srcDir: string): Map<string, string[]> {
  const g = new Map<string, string[]>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts") && !e.name.endsWith(".d.ts")) {
        const from = relative(srcDir, p);
        const to = importsOf(readFileSync(p, "utf8")).map((s) =>
          relative(srcDir, resolve(dirname(p), s)).replace(/\.js$/, ".ts"),
        );
        g.set(from, to);
      }
    }
  };
  walk(srcDir);
  return g;
}

/** Every edge from a file to a higher layer (or to a file in no layer), as "a -> b". */
export function upwardEdges(g: Map<string, string[]>): string[] {
  const bad: string[] = [];
  for (const [from, tos] of g) {
    const lf = layerOf(from);
    for (const to of tos) {
      const lt = layerOf(to);
      if (lf < 0 || lt < 0 || lt > lf) bad.push(`${from} -> ${to}`);
    }
  }
  return bad;
}

/** The cycles of the graph, one file path per strongly connected component (Tarjan). */
export function cycles(g: Map<string, string[]>): string[][] {
  let next = 0;
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next++);
    stack.push(v);
    onStack.add(v);
    for (const w of g.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) === index.get(v)) {
      const scc: string[] = [];
      for (;;) {
        const w = stack.pop()!;
        onStack.delete(w);
        scc.push(w);
        if (w === v) break;
      }
      if (scc.length > 1 || (g.get(v) ?? []).includes(v)) out.push(scc.sort());
    }
  };
  for (const v of g.keys()) if (!index.has(v)) visit(v);
  return out;
}

const srcDir = fileURLToPath(new URL("../../src/", import.meta.url));

test("layers: the checker finds cycles and upward imports", () => {
  assert.deepEqual(importsOf('import { a } from "./a.js";\nimport type { B } from "../b.js";'), [
    "./a.js",
    "../b.js",
  ]);
  assert.deepEqual(importsOf('export { x } from "./x.js";\nconst m = await import("./m.js");'), [
    "./x.js",
    "./m.js",
  ]);
  assert.deepEqual(importsOf('import { Worker } from "node:worker_threads";'), []);
  const g = new Map([
    ["mmu/a.ts", ["mmu/b.ts", "vcpu/v.ts"]],
    ["mmu/b.ts", ["mmu/a.ts"]],
    ["vcpu/v.ts", ["mmu/a.ts"]],
  ]);
  assert.deepEqual(upwardEdges(g), ["mmu/a.ts -> vcpu/v.ts"]);
  assert.deepEqual(cycles(g), [["mmu/a.ts", "mmu/b.ts", "vcpu/v.ts"]]);
  assert.deepEqual(
    cycles(
      new Map([
        ["x.ts", ["y.ts"]],
        ["y.ts", []],
      ]),
    ),
    [],
  );
});

test("layers: every file of src/ is in a layer, imports only downward, and no import cycle", () => {
  const g = importGraph(srcDir);
  assert.ok(g.size > 50, `found only ${g.size} files under ${srcDir}`);
  const edges = [...g.values()].reduce((n, t) => n + t.length, 0);
  assert.ok(edges > 200, `found only ${edges} imports`);
  for (const f of g.keys()) assert.notEqual(layerOf(f), -1, `${f} is in no layer`);
  for (const e of ALLOWED_UPWARD) assert.ok(upwardEdges(g).includes(e), `allowed edge ${e} no longer exists`);
  assert.deepEqual(
    upwardEdges(g).filter((e) => !ALLOWED_UPWARD.has(e)),
    [],
    "imports from a lower layer to a higher one",
  );
  assert.deepEqual(cycles(g), [], "import cycles");
});

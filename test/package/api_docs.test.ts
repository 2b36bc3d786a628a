/**
 * Every name the package's entry point exports (values and types) is documented in docs/api.md:
 * an export nobody can read about is either documented or made internal.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("../../../", import.meta.url));

/** The names src/index.ts exports: `export { a, b as c }`, `export type { ... }`, declarations. */
export function exportedNames(source: string): string[] {
  const names = new Set<string>();
  for (const m of source.matchAll(/export (?:type )?\{([^}]*)\}/g))
    for (const part of m[1].split(",")) {
      const name = part
        .trim()
        .split(/\s+as\s+/)
        .pop();
      if (name) names.add(name);
    }
  for (const m of source.matchAll(/export (?:const|function|class|type|interface|enum) (\w+)/g))
    names.add(m[1]);
  return [...names];
}

test("exportedNames reads every export form", () => {
  assert.deepEqual(
    exportedNames('export { A, b as C } from "x";\nexport type { D } from "y";\nexport const E = 1;').sort(),
    ["A", "C", "D", "E"],
  );
});

test("every export of the package's entry point is documented in docs/api.md", async () => {
  const names = exportedNames(readFileSync(`${repo}src/index.ts`, "utf8"));
  // The runtime exports are all among the names read from the source.
  const runtime = Object.keys(await import("../../src/index.js"));
  for (const r of runtime)
    assert.ok(names.includes(r), `${r} is exported at run time but not read from src/index.ts`);
  const api = readFileSync(`${repo}docs/api.md`, "utf8");
  const missing = names.filter((n) => !new RegExp(`\\b${n}\\b`).test(api));
  assert.deepEqual(missing, [], `exported but not in docs/api.md: ${missing.join(", ")}`);
});

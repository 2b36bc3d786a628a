/**
 * The project's size rule for files: no file in src/ over 700 lines (functions over 80 lines are
 * eslint's max-lines-per-function, eslint.config.js). Lines are counted as `wc -l` does, plus a
 * last line without its newline.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

export const MAX_FILE_LINES = 700;

/** Lines of a text: its newlines, plus one for a last line that has none. */
export function lineCount(text: string): number {
  let n = 0;
  for (let i = text.indexOf("\n"); i !== -1; i = text.indexOf("\n", i + 1)) n++;
  return text.length > 0 && !text.endsWith("\n") ? n + 1 : n;
}

/** Every .ts file under dir (recursively), with its line count. */
function sourceFiles(dir: string): { file: string; lines: number }[] {
  const out: { file: string; lines: number }[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".ts"))
        out.push({ file: relative(dir, p), lines: lineCount(readFileSync(p, "utf8")) });
    }
  };
  walk(dir);
  return out;
}

const srcDir = fileURLToPath(new URL("../../src/", import.meta.url));

test("size: lineCount counts as wc -l, plus an unterminated last line", () => {
  assert.equal(lineCount(""), 0);
  assert.equal(lineCount("a"), 1);
  assert.equal(lineCount("a\n"), 1);
  assert.equal(lineCount("a\nb"), 2);
  assert.equal(lineCount("a\n\n\nb\n"), 4);
  assert.equal(lineCount("\n".repeat(701)), 701);
});

test(`size: no file in src/ is over ${MAX_FILE_LINES} lines`, () => {
  const files = sourceFiles(srcDir);
  assert.ok(files.length > 50, `found only ${files.length} files under ${srcDir}`);
  const over = files
    .filter((f) => f.lines > MAX_FILE_LINES)
    .map((f) => `${f.file}: ${f.lines} lines`)
    .sort();
  assert.deepEqual(over, [], `files over ${MAX_FILE_LINES} lines`);
});

/**
 * Writes the published JSON Schema from the TypeBox definitions (src/results/schema.ts):
 *   node dist/src/results/schema_gen.js [FILE]   (default schema/kvmmu-result.schema.json)
 * A test checks the checked-in file equals what this writes.
 */
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { jsonSchema } from "./schema.js";

export const SCHEMA_FILE = fileURLToPath(
  new URL("../../../schema/kvmmu-result.schema.json", import.meta.url),
);

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2] ?? SCHEMA_FILE;
  writeFileSync(file, JSON.stringify(jsonSchema(), null, 2) + "\n");
  process.stdout.write(`wrote ${file}\n`);
}

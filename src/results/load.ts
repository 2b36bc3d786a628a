/** Reading saved results: parse, validate against the schema, and say which file was wrong. */
import { readFileSync } from "node:fs";
import { KvmError, einval } from "../errors.js";
import { ResultDoc, validateResult } from "./schema.js";

export interface Loaded {
  file: string;
  doc: ResultDoc;
}

export function loadResult(file: string): Loaded {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new KvmError(err.code === "ENOENT" ? "ENOENT" : "EIO", `${file}: cannot read: ${err.message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw einval(file, `is not JSON (${(e as Error).message})`);
  }
  return { file, doc: validateResult(json, file) };
}

/**
 * Reading saved results: parse, validate against the schema, and say which file was wrong. What
 * compare and report get has passed these checks: they never see a shape the schema does not
 * describe (extra properties are dropped here), and report never gets data it cannot draw.
 */
import { readFileSync } from "node:fs";
import { TSchema, TypeGuard } from "@sinclair/typebox";
import { KvmError, einval } from "../errors.js";
import { DOCS, ResultDoc, validateResult } from "./schema.js";

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
  return { file, doc: withoutExtras(validateResult(json, file)) };
}

/**
 * `results` without the top-level properties its schema does not name. The schema lets a newer
 * kvmmu add fields (objects accept extras), but compare and report walk keyed objects such as
 * kernbench's modes: an unknown key there is not a mode and must not reach them. Only that level
 * is trimmed: nested extras stay, for the readers that know them (formatPerf of a version-1 file).
 */
function withoutExtras(doc: ResultDoc): ResultDoc {
  const schema: TSchema = DOCS[doc.command].properties.results;
  if (!TypeGuard.IsObject(schema)) return doc;
  const results = Object.fromEntries(
    Object.entries(doc.results).filter(([k]) => Object.hasOwn(schema.properties, k)),
  );
  return { ...doc, results } as ResultDoc;
}

/** Points of one series a report plot can hold (Plot's implicit ordinal scales stop at 10,000). */
export const REPORT_MAX_POINTS = 10_000;

/**
 * The checks `report` needs beyond the schema: each file has something to draw, and no series
 * has more points than a plot can hold. EINVAL naming the file and the field otherwise.
 */
export function checkReportable(files: readonly Loaded[]): void {
  for (const { file, doc } of files) {
    if (doc.command === "dirty-log-perf") {
      for (const [wp, s] of Object.entries(doc.results)) {
        const n = s.iterations.filter((i) => !i.warmup).length;
        if (n > REPORT_MAX_POINTS)
          throw einval(
            file,
            `results/${wp}/iterations: ${n} measured iterations; a report draws at most ${REPORT_MAX_POINTS} per design (compare reads them all)`,
          );
      }
    } else if (doc.command === "kernbench") {
      const runs = Object.values(doc.results).flatMap((per) =>
        Object.values(per ?? {}).flatMap((c) => c.runs.filter((r) => !r.warmup)),
      );
      if (runs.length === 0) throw einval(file, "results: no measured kernbench run to draw");
      if (runs.length > REPORT_MAX_POINTS)
        throw einval(
          file,
          `results: ${runs.length} kernbench runs; a report draws at most ${REPORT_MAX_POINTS}`,
        );
    }
  }
}

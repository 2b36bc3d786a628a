/**
 * The building blocks of the result schema (src/results/schema.ts): numbers, intervals, the
 * per-call statistics, the machine, and the envelope every command's document shares.
 */
import { Type, type TSchema } from "@sinclair/typebox";
import { READABLE_SCHEMA_VERSIONS } from "../bench/result.js";

export const Num = Type.Number();
export const Int = Type.Integer();
/** JSON writes NaN and Infinity as null (e.g. a rate over zero measured time). */
export const NumOrNull = Type.Union([Type.Number(), Type.Null()]);
export const Ci = Type.Tuple([Num, Num], { description: "95% percentile-bootstrap interval [low, high]" });

export const Summary = Type.Object({
  n: Int,
  median: Num,
  mean: Num,
  stdev: Num,
  min: Num,
  max: Num,
  ci95: Ci,
});

export const NsStats = Type.Object({
  medianNs: Num,
  meanNs: Num,
  stdevNs: Num,
  minNs: Num,
  maxNs: Num,
  ci95Ns: Ci,
  n: Int,
});

export const Ratio = Type.Object({
  median: Num,
  ci95: Ci,
  n: Type.Optional(Int),
  verdict: Type.Optional(Type.String()),
});

export const Machine = Type.Object({
  cpus: Int,
  memoryBytes: Int,
  node: Type.String(),
  platform: Type.String(),
  cpuModel: Type.Optional(Type.String()),
  kernel: Type.Optional(Type.String({ description: "os.release()" })),
  loadAverage: Type.Optional(
    Type.Object(
      { start: Num, end: NumOrNull },
      { description: "1-minute load average when the command started and ended" },
    ),
  ),
});

/** A design's registered name (src/mmu/design.ts); version 1 knew "locked" and "lockless" only. */
export const Wp = Type.String({ description: "a registered design's name" });
export const Mode = Type.Union([Type.Literal("tdp"), Type.Literal("shadow")]);

export function doc<
  C extends string,
  O extends TSchema,
  R extends TSchema,
  X extends Record<string, TSchema>,
>(command: C, description: string, options: O, results: R, extra: X) {
  return Type.Object(
    {
      // Each version only widened the one before (2: design names, keyed results, ratios;
      // 3: provenance): one schema reads them all.
      schemaVersion: Type.Union(READABLE_SCHEMA_VERSIONS.map((v) => Type.Literal(v))),
      command: Type.Literal(command),
      options,
      argv: Type.Optional(
        Type.Array(Type.String(), { description: "the command line as typed, after the program" }),
      ),
      kvmmuVersion: Type.Optional(Type.String({ description: "kvmmu's package.json version" })),
      gitCommit: Type.Union([Type.String({ pattern: "^[0-9a-f]{40}$" }), Type.Null()], {
        description: "kvmmu's own commit when run from its checkout; null otherwise",
      }),
      machine: Machine,
      timestamp: Type.String({ description: "ISO 8601, UTC" }),
      results,
      ...extra,
    },
    { title: command, description },
  );
}

/**
 * The generator of programs (src/verify/program.ts): fast-check arbitraries, so that a program
 * that breaks an invariant shrinks (fewer threads, fewer operations, smaller ranges) to a
 * small one. The migration thread's operations follow the program's log mode.
 */
import fc from "fast-check";
import { NPAGES } from "./scenarios.js";
import {
  GFN_POOL,
  HostOp,
  LOG_MODES,
  LogMode,
  MigrationOp,
  Program,
  PROGRAM_VERSION,
  VcpuOp,
} from "./program.js";

const gfn = fc.constantFrom(...GFN_POOL);

const vcpuOp: fc.Arbitrary<VcpuOp> = fc.oneof(
  { arbitrary: fc.record({ op: fc.constant("write" as const), gfn }), weight: 3 },
  { arbitrary: fc.record({ op: fc.constant("read" as const), gfn }), weight: 1 },
);

/** CLEAR ranges start at a multiple of 64 (KVM's rule); many run to the slot's last word. */
const clearOp: fc.Arbitrary<MigrationOp> = fc
  .tuple(fc.integer({ min: 0, max: NPAGES / 64 - 1 }), fc.integer({ min: 1, max: NPAGES }), fc.boolean())
  .map(([w, n, toEnd]) => {
    const first = w * 64;
    return { op: "clear" as const, first, pages: toEnd ? NPAGES - first : Math.min(n, NPAGES - first) };
  });

function migrationOp(log: LogMode): fc.Arbitrary<MigrationOp> {
  const main: fc.Arbitrary<MigrationOp> =
    log === "ring"
      ? fc.constant({ op: "ring" as const })
      : log === "bitmap"
        ? fc.constant({ op: "get" as const })
        : clearOp;
  return fc.oneof(
    { arbitrary: main, weight: 4 },
    { arbitrary: fc.constant({ op: "flags" as const }), weight: 1 },
  );
}

const hostOp: fc.Arbitrary<HostOp> = fc.oneof(
  fc.record({ op: fc.constant("zap" as const), gfn }),
  fc.record({ op: fc.constant("invalidate" as const), gfn, pages: fc.constantFrom(1, 2, 512) }),
  fc.record({ op: fc.constant("migrate" as const), gfn }),
  fc.constant({ op: "numa" as const }),
);

/** 2 to 4 threads: 1 or 2 vCPUs, the migration thread, 0 or 1 host thread. */
export function programArb(logs: readonly LogMode[] = LOG_MODES): fc.Arbitrary<Program> {
  return fc.constantFrom(...logs).chain((log) =>
    fc
      .record({
        thp: fc.boolean(),
        prefault: fc.uniqueArray(gfn, { maxLength: 4 }),
        vcpus: fc.array(fc.array(vcpuOp, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 2 }),
        migration: fc.array(migrationOp(log), { minLength: 1, maxLength: 2 }),
        hosts: fc.array(fc.array(hostOp, { minLength: 1, maxLength: 2 }), { maxLength: 1 }),
      })
      .map((r) => ({ version: PROGRAM_VERSION, log, ...r })),
  );
}

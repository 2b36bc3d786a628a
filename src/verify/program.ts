/**
 * Generated programs for the explorer (`kvmmu explore --generate`): scenarios written by a
 * generator (src/verify/program_arb.ts), not around one bug. A program is 2 to 4 threads over
 * one 4 MiB slot: vCPU threads of guest reads and writes, one migration thread (GET, CLEAR, ring
 * harvest and reset, slot flag changes: the only thread that copies pages, as QEMU has one), and
 * host threads (zaps, MMU-notifier invalidations, host page migration, NUMA scans).
 *
 * Invariants, after every schedule: the structural audit; every page equals its migrated copy
 * after a final, quiesced round (no lost dirty page); every written page holds the last value
 * some thread wrote to it (no write went to a stale frame).
 */
import { BugName, CTL, Kvm, PAGE_SIZE } from "../kvm_host.js";
import { Vm } from "../vm.js";
import { kvm_set_dirty_logging, newDirtyLogTimes, wp_design } from "../mmu/dirty_log.js";
import { kvm_clear_dirty_log } from "../mmu/clear_dirty_log.js";
import { kvm_dirty_ring_harvest } from "../mem/dirty_ring.js";
import { kvm_reset_dirty_rings } from "../mmu/dirty_ring.js";
import { host_invalidate_range, host_migrate_page } from "../mem/host_memory.js";
import { task_numa_work } from "../mem/numa_balancing.js";
import { einval } from "../errors.js";
import { audit } from "./audit.js";
import {
  asVcpu,
  auditCheck,
  copyAll,
  copyReported,
  enableLogging,
  harvest,
  HVA0,
  NPAGES,
  notifierOf,
  pageWord,
  prefault,
  S_EXTRA,
  Scenario,
  ScenarioThread,
  slot,
  withMmuLock,
  zapLeafTable,
} from "./scenarios.js";
import { vmKvm } from "../vm/internal.js";

/** Bumped whenever a program's meaning changes: a replay of another version is refused. */
export const PROGRAM_VERSION = 1;

/** How migration learns of dirty pages: GET; GET + CLEAR (manual protect, INITIALLY_SET); ring. */
export const LOG_MODES = ["bitmap", "manual", "manual-init", "ring"] as const;
export type LogMode = (typeof LOG_MODES)[number];

/**
 * Gfns the operations touch: pairs in one bitmap word (0/1, 100/101), across a word boundary
 * (31/32), both 2 MiB regions and their edges (511/512), and the slot's last word (1023).
 */
export const GFN_POOL = [0, 1, 31, 32, 100, 101, 511, 512, 513, 1000, 1023] as const;

export type VcpuOp = { op: "write"; gfn: number } | { op: "read"; gfn: number };
/** get: GET and copy; clear: GET, CLEAR [first, first+pages) of it, copy what was cleared. */
export type MigrationOp =
  { op: "get" } | { op: "clear"; first: number; pages: number } | { op: "ring" } | { op: "flags" };
export type HostOp =
  | { op: "zap"; gfn: number }
  | { op: "invalidate"; gfn: number; pages: number }
  | { op: "migrate"; gfn: number }
  | { op: "numa" };

export interface Program {
  version: number;
  log: LogMode;
  /** The slot's host memory is THP-backed (2 MiB sptes until logging splits them). */
  thp: boolean;
  /** Gfns vCPU 0 writes before logging starts (writable sptes and TLB entries to protect). */
  prefault: number[];
  /** vCPU thread i runs as vCPU i. */
  vcpus: VcpuOp[][];
  migration: MigrationOp[];
  hosts: HostOp[][];
}

/** The value write `i` of thread `t` stores: unique per write, so a stale one is seen. */
export const stamp = (t: number, i: number): number => ((t + 1) << 8) | (i + 1);

const is = (x: unknown, kind: string): boolean => typeof x === kind;
const gfnOk = (g: unknown): boolean => Number.isInteger(g) && (g as number) >= 0 && (g as number) < NPAGES;

function checkOp(o: unknown, where: string, ops: Record<string, string[]>): void {
  if (typeof o !== "object" || o === null || !is((o as { op: unknown }).op, "string"))
    throw einval("--replay", `${where}: not an operation`);
  const r = o as Record<string, unknown>;
  const fields = Object.hasOwn(ops, r.op as string) ? ops[r.op as string] : undefined;
  if (!fields) throw einval("--replay", `${where}: unknown operation "${String(r.op)}"`);
  for (const f of fields) {
    const ok = f === "pages" ? gfnOk((r[f] as number) - 1) : gfnOk(r[f]);
    if (!ok)
      throw einval(
        "--replay",
        `${where}: ${f} must be ${f === "pages" ? `1..${NPAGES}` : `0..${NPAGES - 1}`}`,
      );
  }
  if (r.op === "clear") {
    const first = r.first as number;
    const pages = r.pages as number;
    if (first % 64 !== 0 || pages < 1 || first + pages > NPAGES)
      throw einval("--replay", `${where}: clear range must start at a multiple of 64 and lie in the slot`);
  }
  if (r.op === "invalidate" && (r.pages as number) < 1)
    throw einval("--replay", `${where}: pages must be >= 1`);
}

/** Checks a program read back from a replay string; EINVAL naming --replay and the bad part. */
export function checkProgram(p: unknown): Program {
  if (typeof p !== "object" || p === null) throw einval("--replay", "the program is not an object");
  const q = p as Program;
  if (q.version !== PROGRAM_VERSION)
    throw einval(
      "--replay",
      `the program is from generator version ${String(q.version)}; this kvmmu reads version ${PROGRAM_VERSION} (generate it again)`,
    );
  if (!LOG_MODES.includes(q.log))
    throw einval("--replay", `log mode "${String(q.log)}" is not one of ${LOG_MODES.join(", ")}`);
  if (!is(q.thp, "boolean") || !Array.isArray(q.prefault) || !q.prefault.every(gfnOk))
    throw einval("--replay", "thp must be a boolean and prefault a list of gfns");
  if (!Array.isArray(q.vcpus) || !Array.isArray(q.migration) || !Array.isArray(q.hosts))
    throw einval("--replay", "vcpus, migration and hosts must be lists");
  const n = q.vcpus.length + 1 + q.hosts.length;
  if (q.vcpus.length < 1 || n > 4)
    throw einval("--replay", `2 to 4 threads with at least one vCPU, got ${n}`);
  q.vcpus.forEach((t, i) =>
    (Array.isArray(t) ? t : [null]).forEach((o, j) => checkOp(o, `vcpu${i} op ${j}`, VCPU_OPS)),
  );
  q.migration.forEach((o, j) => checkOp(o, `migration op ${j}`, MIGRATION_OPS));
  q.hosts.forEach((t, i) =>
    (Array.isArray(t) ? t : [null]).forEach((o, j) => checkOp(o, `host${i} op ${j}`, HOST_OPS)),
  );
  return q;
}

const VCPU_OPS = { write: ["gfn"], read: ["gfn"] };
const MIGRATION_OPS = { get: [], clear: ["first", "pages"], ring: [], flags: [] };
const HOST_OPS = { zap: ["gfn"], invalidate: ["gfn", "pages"], migrate: ["gfn"], numa: [] };

/** One line: the program as a reader would write it. */
export function formatProgram(p: Program): string {
  const op = (o: { op: string } & Record<string, unknown>): string => {
    const args = Object.entries(o)
      .filter(([k]) => k !== "op")
      .map(([, v]) => String(v));
    return args.length ? `${o.op}(${args.join(",")})` : o.op;
  };
  const threads = [
    ...p.vcpus.map((t, i) => `vcpu${i}: ${t.map(op).join(" ")}`),
    `migration: ${p.migration.map(op).join(" ")}`,
    ...p.hosts.map((t, i) => `host${i}: ${t.map(op).join(" ")}`),
  ];
  return `log ${p.log}${p.thp ? ", thp" : ""}${p.prefault.length ? `, prefault ${p.prefault.join(",")}` : ""}; ${threads.join("; ")}`;
}

const hvaOf = (scratch: Int32Array): number => scratch[S_EXTRA + HVA0];

/** Copies what every vCPU's ring reports, then resets the rings (slots_lock held throughout). */
function ringRound(kvm: Kvm, vcpus: number, scratch: Int32Array): void {
  const slots = new Int32Array(kvm.ctl[CTL.dirty_ring_size] * vcpus);
  const offsets = new Int32Array(slots.length);
  let n = 0;
  kvm.slots_lock.lock();
  try {
    for (let v = 0; v < vcpus; v++)
      n += kvm_dirty_ring_harvest(kvm, v, slots.subarray(n), offsets.subarray(n), Infinity);
    kvm_reset_dirty_rings(kvm, wp_design(kvm), newDirtyLogTimes());
  } finally {
    kvm.slots_lock.unlock();
  }
  for (let k = 0; k < n; k++) {
    const g = offsets[k];
    if (g < NPAGES) scratch[g] = pageWord(kvm, hvaOf(scratch) + g);
  }
}

/** GET, CLEAR [first, first+pages) of what it reported, then copy those pages. */
function clearRange(kvm: Kvm, first: number, pages: number, scratch: Int32Array): void {
  const bm = harvest(kvm);
  const mine = new Uint32Array(bm.length);
  for (let g = first; g < first + pages; g++)
    if ((bm[g >>> 5] >>> (g & 31)) & 1) mine[g >>> 5] |= 1 << (g & 31);
  kvm.slots_lock.lock();
  try {
    kvm_clear_dirty_log(kvm, wp_design(kvm), 0, first, pages, mine.subarray(first >>> 5), newDirtyLogTimes());
  } finally {
    kvm.slots_lock.unlock();
  }
  copyReported(kvm, hvaOf(scratch), mine, scratch);
}

/** Logging off and on again (a new bitmap), then everything copied, as a restarted migration. */
function flagsRound(kvm: Kvm, scratch: Int32Array): void {
  kvm.slots_lock.lock();
  try {
    kvm_set_dirty_logging(kvm, 0, false);
    kvm_set_dirty_logging(kvm, 0, true);
  } finally {
    kvm.slots_lock.unlock();
  }
  // Only the pool's pages are ever written (each read is a scheduled step: keep runs short).
  for (const g of GFN_POOL) scratch[g] = pageWord(kvm, hvaOf(scratch) + g);
}

function migrationOp(kvm: Kvm, o: MigrationOp, vcpus: number, scratch: Int32Array): void {
  if (o.op === "get") copyReported(kvm, hvaOf(scratch), harvest(kvm), scratch);
  else if (o.op === "clear") clearRange(kvm, o.first, o.pages, scratch);
  else if (o.op === "ring") ringRound(kvm, vcpus, scratch);
  else flagsRound(kvm, scratch);
}

function hostOp(kvm: Kvm, o: HostOp, when: number, scratch: Int32Array): void {
  const hva = hvaOf(scratch);
  if (o.op === "zap") withMmuLock(kvm, () => zapLeafTable(kvm, o.gfn));
  else if (o.op === "invalidate")
    host_invalidate_range(kvm, hva + o.gfn, Math.min(o.pages, NPAGES - o.gfn), notifierOf(kvm));
  else if (o.op === "migrate") host_migrate_page(kvm, hva + o.gfn, notifierOf(kvm));
  // A clock the program controls: each scan is due (period 1 ms) at a later "time".
  else task_numa_work(kvm, 1_000_000 * when, notifierOf(kvm));
}

function threadsOf(p: Program): ScenarioThread[] {
  const vcpus: ScenarioThread[] = p.vcpus.map((ops, t) => ({
    name: `vcpu${t}`,
    run: (kvm) =>
      asVcpu(kvm, t, (v) => {
        ops.forEach((o, i) =>
          o.op === "write" ? v.write64(o.gfn, 0, stamp(t, i), 0) : void v.read32(o.gfn, 0),
        );
      }),
  }));
  const migration: ScenarioThread = {
    name: "migration",
    run: (kvm, scratch) => {
      for (const o of p.migration) migrationOp(kvm, o, p.vcpus.length, scratch);
    },
  };
  const hosts: ScenarioThread[] = p.hosts.map((ops, h) => ({
    name: `host${h}`,
    run: (kvm, scratch) => ops.forEach((o, i) => hostOp(kvm, o, 1 + h * 16 + i, scratch)),
  }));
  return [...vcpus, migration, ...hosts];
}

/** After a final, quiesced round: every page equals its copy. */
function lostPage(p: Program, vm: Vm, scratch: Int32Array): string | null {
  const kvm = vmKvm(vm);
  if (p.log === "ring") ringRound(kvm, p.vcpus.length, scratch);
  else copyReported(kvm, hvaOf(scratch), harvest(kvm), scratch);
  for (let g = 0; g < NPAGES; g++) {
    const m = pageWord(kvm, hvaOf(scratch) + g);
    if (m !== scratch[g])
      return `lost dirty page: gfn ${g} holds ${m} but the migrated copy holds ${scratch[g]} (a write was never reported)`;
  }
  return null;
}

/** Every written gfn holds the last value one of its writers stored. */
function staleWrite(p: Program, vm: Vm, scratch: Int32Array): string | null {
  const last = new Map<number, number[]>();
  p.vcpus.forEach((ops, t) => {
    const mine = new Map<number, number>();
    ops.forEach((o, i) => o.op === "write" && mine.set(o.gfn, stamp(t, i)));
    for (const [g, v] of mine) last.set(g, [...(last.get(g) ?? []), v]);
  });
  for (const [g, want] of last) {
    const m = pageWord(vmKvm(vm), hvaOf(scratch) + g);
    if (!want.includes(m))
      return `guest write lost: gfn ${g} holds ${m}, not the last write of any vCPU (${want.join(" or ")}): a write went to a stale frame`;
  }
  return null;
}

/** The audit; with a ring, the structural part only (the bitmap is not where dirty pages go). */
function auditOf(p: Program, vm: Vm): string | null {
  if (p.log !== "ring") return auditCheck(vm);
  const bad = audit(vmKvm(vm), 3, { structural: true });
  return bad.length ? `audit: ${bad.join("; ")}` : null;
}

/** The scenario that runs program `p` (`bug`: the catalog bug explore may switch on). */
export function programScenario(program: unknown, bug: BugName = "skip-flush"): Scenario {
  const p = program as Program;
  const nv = p.vcpus.length;
  return {
    name: "generated",
    bug,
    description: formatProgram(p),
    auditable: true,
    program: p,
    vmOptions: (bugs, mode) => ({
      memory: 8 << 20,
      wp: "lockless",
      bugs,
      mode,
      maxVcpus: 4,
      maxSlotPages: NPAGES,
      maxSp: 64,
      maxDesc: 64,
    }),
    scratchWords: S_EXTRA + 4,
    setup(vm, scratch) {
      if (p.log === "ring") vm.enableDirtyRing(256);
      if (p.log === "manual" || p.log === "manual-init")
        vm.enableManualDirtyLogProtect(p.log === "manual" ? 1 : 3);
      if (p.hosts.some((t) => t.some((o) => o.op === "numa")))
        vm.setNumaBalancing({ scanPeriodMs: 1, scanBytes: 64 * PAGE_SIZE });
      const hva = slot(vm, p.thp, false);
      scratch[S_EXTRA + HVA0] = hva;
      for (let v = 0; v < nv; v++) vm.createVcpu(v);
      if (p.prefault.length) prefault(vm, 0, p.prefault);
      enableLogging(vm, hva);
      copyAll(vmKvm(vm), hva, scratch);
    },
    threads: threadsOf(p),
    check: (vm, scratch) => auditOf(p, vm) ?? staleWrite(p, vm, scratch) ?? lostPage(p, vm, scratch),
  };
}

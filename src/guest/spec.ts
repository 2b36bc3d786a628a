/**
 * Validation of guest specs (what vm.run's callback returns), done on the owner's thread before
 * any worker starts: a bad spec is EINVAL naming the field, and the VM stays as it was.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { einval, KvmError } from "../errors.js";
import type { GuestArgs } from "../workload/guest.js";

const BUILTIN = ["memstress", "dirty_log", "dirty_log_incr", "kernbench"] as const;

function isObj(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null;
}

function int(o: Record<string, unknown>, k: string, who: string, min: number, max = 2 ** 31 - 1): void {
  const x = o[k];
  if (typeof x !== "number" || !Number.isSafeInteger(x) || x < min || x > max)
    throw einval(k, `${who}: must be an integer in ${min}..${max}, got ${String(x)}`);
}

function sab(o: Record<string, unknown>, k: string, who: string): void {
  if (!(o[k] instanceof SharedArrayBuffer)) throw einval(k, `${who}: must be a SharedArrayBuffer`);
}

function paging(o: Record<string, unknown>, who: string, required: boolean): void {
  const p = o.paging;
  if (p === undefined && !required) return;
  if (!isObj(p)) throw einval("paging", `${who}: must be an object`);
  if (!isObj(p.kernel)) throw einval("paging.kernel", `${who}: must be an object`);
  int(p.kernel, "baseGfn", `${who} paging.kernel`, 0);
  int(p.kernel, "pages", `${who} paging.kernel`, 1);
  int(p, "poolGfn", `${who} paging`, 0);
  int(p, "poolPages", `${who} paging`, 1);
  if (p.vpn !== undefined || o.kind !== "kernbench") int(p, "vpn", `${who} paging`, 0);
}

/** A module spec's URL as a string: file: only, and the file must exist. */
function moduleUrl(m: unknown, who: string): string {
  if (m === undefined) throw einval("module", `${who}: missing (a built-in "kind" or a module URL)`);
  if (typeof m !== "string" && !(m instanceof URL))
    throw einval("module", `${who}: must be a file: URL (string or URL), got ${typeof m}`);
  let url: URL;
  try {
    url = new URL(String(m));
  } catch {
    throw einval("module", `${who}: ${String(m)} is not a URL (use pathToFileURL for a path)`);
  }
  if (url.protocol !== "file:")
    throw einval("module", `${who}: only file: URLs are loaded, got ${url.protocol}`);
  if (!existsSync(fileURLToPath(url))) throw einval("module", `${who}: ${url.href} does not exist`);
  return url.href;
}

/** Checks one vCPU's spec; returns what goes to its worker. Throws EINVAL naming the field. */
export function validateGuestSpec(spec: unknown, vcpuId: number): GuestArgs {
  const who = `vcpu ${vcpuId}`;
  if (!isObj(spec)) throw einval("guest", `${who}: the spec must be an object, got ${String(spec)}`);
  const kind = spec.kind;
  if (kind === undefined) {
    const module = moduleUrl(spec.module, who);
    try {
      structuredClone(spec.args);
    } catch (e) {
      throw einval("args", `${who}: cannot be sent to a worker (${(e as Error).message})`);
    }
    return { module, args: spec.args };
  }
  if (typeof kind !== "string" || !(BUILTIN as readonly string[]).includes(kind))
    throw einval(
      "kind",
      `${who}: unknown guest kind ${typeof kind === "string" ? JSON.stringify(kind) : typeof kind}; known: ${BUILTIN.join(", ")}`,
    );
  if (spec.module !== undefined) throw einval("module", `${who}: a built-in "kind" takes no module`);
  switch (kind) {
    case "memstress":
      int(spec, "baseGfn", who, 0);
      int(spec, "pages", who, 1);
      int(spec, "writePercent", who, 0, 100);
      if (typeof spec.random !== "boolean") throw einval("random", `${who}: must be a boolean`);
      int(spec, "seed", who, -(2 ** 31), 2 ** 32);
      paging(spec, who, false);
      break;
    case "dirty_log":
    case "dirty_log_incr":
      sab(spec, "ctl", who);
      int(spec, "baseGfn", who, 0);
      int(spec, "pages", who, 1);
      if (kind === "dirty_log") int(spec, "seed", who, -(2 ** 31), 2 ** 32);
      paging(spec, who, false);
      break;
    case "kernbench":
      sab(spec, "ctl", who);
      for (const k of ["vcpus", "libPages", "sharedPages", "anonPages", "processes", "jobsPerProcess"])
        int(spec, k, who, 1);
      for (const k of ["libGfn", "sharedGfn", "anonGfn", "jobs", "heapPages", "libReads", "sharedWrites"])
        int(spec, k, who, 0);
      int(spec, "compute", who, 0);
      int(spec, "seed", who, -(2 ** 31), 2 ** 32);
      paging(spec, who, true);
      break;
  }
  return spec as unknown as GuestArgs;
}

/** Every vCPU's spec, validated, before anything starts. */
export function validateGuestSpecs(guest: unknown, ids: readonly number[]): Map<number, GuestArgs> {
  if (typeof guest !== "function")
    throw einval(
      "guest",
      `must be a function (vcpuId) => spec, got ${guest === null ? "null" : typeof guest}`,
    );
  const out = new Map<number, GuestArgs>();
  for (const id of ids) {
    let spec: unknown;
    try {
      spec = (guest as (id: number) => unknown)(id);
    } catch (e) {
      if (e instanceof KvmError) throw e;
      throw einval("guest", `vcpu ${id}: the spec callback threw: ${(e as Error).message}`);
    }
    out.set(id, validateGuestSpec(spec, id));
  }
  return out;
}

/**
 * The design registry, by name: every MMU / write-protect design kvmmu runs. The CLI (`--wp`),
 * the results schema, `compare`, the report and the oracles iterate over it instead of naming
 * designs. (Name-level surface; the ops table of each design joins it in src/mmu.)
 */
import { einval } from "../errors.js";

/** A design's name as the CLI and the results spell it ("locked", "lockless", ...). */
export type DesignName = string;

export interface DesignInfo {
  readonly name: DesignName;
  /** The kernel it models, e.g. "Linux 3.11". */
  readonly kernel: string;
  /** One line: what it does differently. */
  readonly description: string;
}

/** The baseline that comparisons take unless told otherwise. */
export const DEFAULT_BASELINE: DesignName = "locked";

const registry = new Map<DesignName, DesignInfo>([
  [
    "locked",
    {
      name: "locked",
      kernel: "Linux 3.11",
      description: "write-protect under mmu_lock, remote TLB flush inside it",
    },
  ],
  [
    "lockless",
    {
      name: "lockless",
      kernel: "2013 series 'KVM: MMU: locklessly write-protect' (v3)",
      description: "lockless rmap walk under RCU, flush after the walk",
    },
  ],
]);

/** The registered designs' names, in registration order. */
export function designNames(): DesignName[] {
  return [...registry.keys()];
}

export function isDesign(name: string): boolean {
  return registry.has(name);
}

export function designInfo(name: DesignName): DesignInfo {
  const d = registry.get(name);
  if (d === undefined) throw einval("wp", `"${name}" is not a design (${designNames().join(", ")})`);
  return d;
}

/**
 * A `--wp` value: one registered name, a comma list, or `all`. Throws KvmError(EINVAL) naming
 * `opt` for an unknown name or an empty list. Duplicates are dropped, order kept.
 */
export function parseDesignList(opt: string, value: string): DesignName[] {
  const items = value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (items.length === 0) throw einval(opt, "empty list");
  const out: DesignName[] = [];
  for (const it of items) {
    const names = it === "all" ? designNames() : [it];
    for (const n of names) {
      if (!registry.has(n)) throw einval(opt, `"${n}" is not one of ${designNames().join(", ")}, all`);
      if (!out.includes(n)) out.push(n);
    }
  }
  return out;
}

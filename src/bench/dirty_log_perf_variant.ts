/**
 * dirty-log-perf's run names: a design (`tdp-mmu`) or a design with a dirty-logging variant
 * (`tdp-mmu:no-pml`: write protection instead of D bits and PML, as an L2 guest or a CPU
 * without PML; `tdp-mmu:no-eager-split`: huge pages split by write faults, not when logging
 * starts; both: `tdp-mmu:no-pml:no-eager-split`). Each name is a VM of its own in the
 * alternation, so PML against write protection, or eager against lazy splitting, is measured in
 * one run, iteration by iteration, with ratios and paired CIs as between designs.
 */
import type { DesignName } from "../mmu/design.js";
import { isDesign, parseDesignList } from "../mmu/design.js";
import { einval } from "../errors.js";
import type { MmuMode } from "../kvm_host.js";

const VARIANTS = ["no-pml", "no-eager-split"] as const;
/** The designs that have the variants (the TDP MMU's kvm config switches). */
const WITH_VARIANTS: readonly DesignName[] = ["tdp-mmu"];

export interface RunVariant {
  design: DesignName;
  /** Vm.create's pml and eager_page_split (undefined: the design's default). */
  pml?: boolean;
  eager_page_split?: boolean;
}

/** The design and switches of run name `name`; throws KvmError(EINVAL) naming `opt`. */
export function parseRunName(opt: string, name: string): RunVariant {
  const [design, ...flags] = name.split(":");
  if (!isDesign(design)) throw einval(opt, `"${design}" is not a design`);
  if (flags.length === 0) return { design };
  if (!WITH_VARIANTS.includes(design))
    throw einval(opt, `"${name}": only ${WITH_VARIANTS.join(", ")} has variants (${VARIANTS.join(", ")})`);
  const out: RunVariant = { design };
  for (const f of flags) {
    if (f === "no-pml" && out.pml === undefined) out.pml = false;
    else if (f === "no-eager-split" && out.eager_page_split === undefined) out.eager_page_split = false;
    else throw einval(opt, `"${name}": "${f}" is not one of ${VARIANTS.join(", ")} (each at most once)`);
  }
  return out;
}

export function isRunName(name: string): boolean {
  try {
    parseRunName("wp", name);
    return true;
  } catch {
    return false;
  }
}

/** --wp's list: designs (and `all`) as parseDesignList reads them, and variant names. */
export function parseRunList(opt: string, value: string, mode?: MmuMode): DesignName[] {
  const out: DesignName[] = [];
  for (const it of value.split(",").map((s) => s.trim())) {
    if (it === "") continue;
    if (it.includes(":")) parseRunName(opt, it);
    const names = it.includes(":") ? [it] : parseDesignList(opt, it, mode);
    for (const n of names) if (!out.includes(n)) out.push(n);
  }
  if (out.length === 0) throw einval(opt, "empty list");
  return out;
}

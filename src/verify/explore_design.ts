/**
 * The one place the explorer turns a registered design's name into VM options: scenarios name
 * their own design, and the full-budget runs and generated programs run each one on every design
 * of src/mmu/design.ts.
 */
import { MmuModeName, VmOptions } from "../vm.js";
import { DesignName, designHasRmaps, designSupportsMode } from "../mmu/design.js";
import { MmuMode } from "../kvm_host.js";
import { SCENARIOS } from "./scenarios.js";

/** `o` on design `design` (unchanged when undefined). */
export function withDesign(o: VmOptions, design: DesignName | undefined): VmOptions {
  return design === undefined ? o : { ...o, wp: design };
}

/**
 * Whether scenario `scenario` runs on design `design` in paging mode `mode`: the design takes
 * the mode, an rmap scenario needs a design with rmaps, and a scenario about one design's own
 * code (Scenario.onlyDesign) runs on that design only.
 */
export function scenarioApplies(scenario: string, design: DesignName, mode: MmuModeName): boolean {
  if (!designSupportsMode(design, mode === "shadow" ? MmuMode.Shadow : MmuMode.Tdp)) return false;
  const only = SCENARIOS[scenario]?.onlyDesign;
  if (only !== undefined && only !== design) return false;
  return !SCENARIOS[scenario]?.rmapOnly || designHasRmaps(design);
}

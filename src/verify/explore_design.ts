/**
 * The one place the explorer turns a registered design's name into VM options: scenarios name
 * their own design, and the full-budget runs and generated programs run each one on every design
 * of src/mmu/design.ts.
 */
import { VmOptions } from "../vm.js";
import { DesignName } from "../mmu/design.js";

/** `o` on design `design` (unchanged when undefined). */
export function withDesign(o: VmOptions, design: DesignName | undefined): VmOptions {
  return design === undefined ? o : { ...o, wp: design };
}

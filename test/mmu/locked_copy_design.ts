/**
 * A fourth design for test/mmu/design_registry.test.ts: a renamed copy of `locked`, registered
 * through the registry alone. Importing this module registers it; the entry names this module,
 * so every worker thread of a VM of this design imports it before building its Kvm. (Run alone
 * by `node --test`, it only registers the design and exits.)
 */
import { designInfo, designOps, registerDesign } from "../../src/mmu/design.js";

registerDesign({
  name: "locked-copy",
  kernel: designInfo("locked").kernel,
  description: "a renamed copy of locked (registered by a test)",
  module: import.meta.url,
  mmu: (mode) => ({ ...designOps("locked", mode), name: "locked-copy" }),
});

/**
 * The design registry, by name: every MMU design kvmmu runs, with the kernel it models, a line
 * of description and its MMU ops (kvm_mmu.ts) per paging mode. The CLI (`--wp`), the results
 * schema, `compare`, the report and the oracles iterate over it instead of naming designs; a
 * Kvm resolves its ops here once, at construction (kvm_set_designs).
 *
 * The table is per thread (each worker_thread has its own module instance): the built-in
 * designs register as this module loads; a design registered at run time (registerDesign) names
 * the module that registers it, and every thread that builds a Kvm for it imports that module
 * first (kvm_load_design; KvmShared.designModule carries the URL).
 */
import { einval } from "../errors.js";
import { DesignName, kvm_set_designs, KvmShared, MmuMode } from "../kvm_host.js";
import { KvmMmuOps, MmuLockMode, MmuOpName } from "./kvm_mmu.js";
import { fast_page_fault } from "./mmu.js";
import { kvm_unmap_hva_range } from "./mmu_notifier.js";
import { shadow_page_fault } from "./paging_tmpl.js";
import { tdp_page_fault } from "./tdp_fault.js";
import { wp_locked } from "./wp_locked.js";
import { wp_lockless } from "./wp_lockless.js";
import { WriteProtectDesign } from "./write_protect.js";
import { TDP_MMU, tdpMmuOps } from "./tdp_mmu/tdp_mmu_design.js";

export type { DesignName } from "../kvm_host.js";

export interface DesignInfo {
  readonly name: DesignName;
  /** The kernel it models, e.g. "Linux 3.11". */
  readonly kernel: string;
  /** One line: what it does differently. */
  readonly description: string;
}

/** The baseline that comparisons take unless told otherwise. */
export const DEFAULT_BASELINE: DesignName = "locked";

/** A registry entry: the design's info and how it fills struct kvm_mmu for a paging mode. */
export interface DesignEntry extends DesignInfo {
  /** The ops of a VM in paging mode `mode` (init_kvm_tdp_mmu / kvm_init_shadow_mmu). */
  mmu(mode: MmuMode): KvmMmuOps;
  /**
   * URL of the module that registers this design, for a design registered at run time: worker
   * threads import it before they build a Kvm (absent for the built-in designs).
   */
  readonly module?: string;
  /**
   * False for a design without rmaps (the TDP MMU: kvm_memslots_have_rmaps is false): what is
   * written for rmap walks (nulls chains, descriptors moving) does not apply to it.
   */
  readonly rmaps?: boolean;
  /**
   * "kernel" for the real KVM (src/kernel/register.ts): it has no model ops (mmu() throws), runs
   * through the kernel backend, and the model-only paths (conformance's model columns) skip it.
   */
  readonly backend?: "model" | "kernel";
}

/**
 * The ops of a design of the rmap-based MMU (Linux 3.11's, the seed's): their faults, fast
 * path and zap are shared; they differ in write protection (`wp`) and its lock modes.
 */
export function rmapMmuOps(
  name: DesignName,
  wp: WriteProtectDesign,
  mode: MmuMode,
  lock: Readonly<Record<MmuOpName, MmuLockMode>>,
): KvmMmuOps {
  return {
    name,
    page_fault: mode === MmuMode.Shadow ? shadow_page_fault : tdp_page_fault,
    fast_page_fault,
    zap_gfn_range: kvm_unmap_hva_range,
    harvestBegin: wp.harvestBegin,
    protectMasked: wp.protectMasked,
    harvestEnd: wp.harvestEnd,
    slotRemoveWriteAccess: wp.slotRemoveWriteAccess,
    lock,
  };
}

const BUILT_IN: readonly DesignEntry[] = [
  {
    name: "locked",
    kernel: "Linux 3.11",
    description: "write-protect under mmu_lock, remote TLB flush inside it",
    mmu: (mode) =>
      rmapMmuOps("locked", wp_locked, mode, {
        page_fault: "write",
        fast_page_fault: "none",
        protectMasked: "write",
        slotRemoveWriteAccess: "write",
        zap_gfn_range: "write",
      }),
  },
  {
    name: "lockless",
    kernel: "2013 series 'KVM: MMU: locklessly write-protect' (v3)",
    description: "lockless rmap walk under RCU, flush after the walk",
    mmu: (mode) =>
      rmapMmuOps("lockless", wp_lockless, mode, {
        page_fault: "write",
        fast_page_fault: "none",
        protectMasked: "none",
        slotRemoveWriteAccess: "none",
        zap_gfn_range: "write",
      }),
  },
  {
    name: TDP_MMU,
    kernel: "Linux 6.x TDP MMU (rwlock since 5.12)",
    description: "faults under the read lock with cmpxchg, frozen sptes, RCU-freed tables, D-bit/PML logging",
    mmu: tdpMmuOps,
    rmaps: false,
  },
];

const registry = new Map<DesignName, DesignEntry>(BUILT_IN.map((d) => [d.name, d]));
/** Resolved ops per design and mode: every Kvm of a design in this thread shares one table. */
const resolved = new Map<DesignName, KvmMmuOps[]>();

const NAME_RE = /^[a-z][a-z0-9_-]*$/;

/**
 * Adds a design. Throws KvmError(EINVAL) naming `name` for a name that is taken, or that is not
 * lower-case letters, digits, '-' and '_' (it must survive a `--wp` comma list), or "all".
 */
export function registerDesign(entry: DesignEntry): void {
  const n = entry.name;
  if (!NAME_RE.test(n) || n === "all") throw einval("name", `"${n}" is not a valid design name`);
  if (registry.has(n)) throw einval("name", `design "${n}" is already registered`);
  registry.set(n, entry);
}

/** Removes a design registered with registerDesign (the built-in ones stay). Returns whether it was there. */
export function unregisterDesign(name: DesignName): boolean {
  if (BUILT_IN.some((d) => d.name === name)) throw einval("name", `"${name}" is a built-in design`);
  resolved.delete(name);
  return registry.delete(name);
}

/** The ops of design `name` in paging mode `mode`, resolved once per thread. */
export function designOps(name: DesignName, mode: MmuMode): KvmMmuOps {
  let r = resolved.get(name);
  if (r === undefined) {
    r = [];
    resolved.set(name, r);
  }
  let ops = r[mode];
  if (ops === undefined) {
    const d = registry.get(name);
    if (d === undefined) throw einval("wp", `"${name}" is not a design (${designNames().join(", ")})`);
    ops = d.mmu(mode);
    if (ops.name !== name) throw einval("wp", `design "${name}" gave the ops of "${ops.name}"`);
    r[mode] = ops;
  }
  return ops;
}

/**
 * Imports the module that registers the VM's design, in a thread that does not know it yet
 * (a worker of a VM whose design a test or a library caller registered). Call before new Kvm.
 */
export async function kvm_load_design(shared: KvmShared): Promise<void> {
  const m = shared.designModule;
  if (m !== undefined && !registry.has(shared.config.wp)) await import(m);
}

kvm_set_designs({
  ops: (name, mode) => designOps(name, mode),
  module: (name) => registry.get(name)?.module,
});

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
  return { name: d.name, kernel: d.kernel, description: d.description };
}

/**
 * A `--wp` value: one registered name, a comma list, or `all` (with `mode`: every design that
 * runs in that paging mode). Throws KvmError(EINVAL) naming
 * `opt` for an unknown name or an empty list. Duplicates are dropped, order kept.
 */
export function parseDesignList(opt: string, value: string, mode?: MmuMode): DesignName[] {
  const items = value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (items.length === 0) throw einval(opt, "empty list");
  const out: DesignName[] = [];
  for (const it of items) {
    // `all` in a paging mode: the designs that have it (a named design is checked by Vm.create).
    const names =
      it === "all" ? designNames().filter((d) => mode === undefined || designSupportsMode(d, mode)) : [it];
    for (const n of names) {
      if (!registry.has(n)) throw einval(opt, `"${n}" is not one of ${designNames().join(", ")}, all`);
      if (!out.includes(n)) out.push(n);
    }
  }
  return out;
}

/** Whether a VM of `name` can run in paging mode `mode` (the TDP MMU refuses shadow paging). */
export function designSupportsMode(name: DesignName, mode: MmuMode): boolean {
  try {
    designOps(name, mode);
    return true;
  } catch {
    return false;
  }
}

/** "kernel" for the real KVM's entry, "model" for every design kvmmu runs itself. */
export function designBackend(name: DesignName): "model" | "kernel" {
  return registry.get(name)?.backend ?? "model";
}

/** Whether the design keeps rmaps (kvm_memslots_have_rmaps). */
export function designHasRmaps(name: DesignName): boolean {
  return registry.get(name)?.rmaps !== false;
}

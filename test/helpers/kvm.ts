/**
 * Test helpers: a small standalone `Kvm`, a seeded PRNG, and a structural view of a pte_list
 * (decoded independently of src/mmu/rmap.ts, from the encoding documented there).
 *
 * Note: `node --test dist/test/` runs every .js file under dist/test/, this one included; it
 * only defines helpers, so running it alone does nothing.
 */
import { allocKvmShared, DESC, Kvm, KvmConfig, PTE_LIST_EXT } from "../../src/kvm_host.js";
// The design registry: a Kvm resolves its MMU ops there.
import "../../src/mmu/design.js";

export const SMALL_CONFIG: KvmConfig = {
  hostFrames: 1024,
  maxSlotPages: 1024,
  maxSp: 64,
  maxDesc: 256,
  maxVcpus: 4,
  wp: "lockless",
  bugs: 0,
};

export function makeKvm(over: Partial<KvmConfig> = {}): Kvm {
  return new Kvm(allocKvmShared({ ...SMALL_CONFIG, ...over }));
}

/** xorshift32: deterministic, seedable. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    this.s = x;
    return x;
  }
  /** Uniform integer in [0, n). */
  below(n: number): number {
    return this.next() % n;
  }
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.below(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }
}

export function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}

/** A pte_list as its words say: the descriptors in chain order and what ends the chain. */
export interface ListView {
  kind: "empty" | "single" | "chain";
  /** Entry values (spte index + 1) of the single head. */
  single: number;
  descs: number[];
  /** descs[k]'s three entry words. */
  slots: number[][];
  /** The `more` word of the last descriptor (a chain ends with a nulls value). */
  end: number;
}

export function viewList(kvm: Kvm, heads: Int32Array, hi: number): ListView {
  const v = heads[hi];
  if (v === 0) return { kind: "empty", single: 0, descs: [], slots: [], end: 0 };
  if ((v & 1) === 0) return { kind: "single", single: v >>> 1, descs: [], slots: [], end: 0 };
  const descs: number[] = [];
  const slots: number[][] = [];
  let d = v >>> 1;
  for (;;) {
    if (descs.length > kvm.shared.config.maxDesc)
      throw new Error(`head ${hi}: chain longer than the slab (cycle?)`);
    descs.push(d);
    const b = DESC.sptes(d);
    slots.push([kvm.desc[b], kvm.desc[b + 1], kvm.desc[b + 2]]);
    const m = kvm.desc[DESC.more(d)];
    if ((m & 1) === 1 || m === 0) return { kind: "chain", single: 0, descs, slots, end: m };
    d = (m >>> 1) - 1;
  }
}

/** Entry values (spte index + 1) on the list, in chain order. */
export function listEntries(view: ListView): number[] {
  if (view.kind === "single") return [view.single];
  return view.slots.flat().filter((e) => e !== 0);
}

/** Where each entry sits: "desc:index" keyed by entry value. */
export function positions(view: ListView): Map<number, { desc: number; pos: number; i: number }> {
  const out = new Map<number, { desc: number; pos: number; i: number }>();
  view.slots.forEach((s, pos) => {
    for (let i = 0; i < PTE_LIST_EXT; i++) if (s[i] !== 0) out.set(s[i], { desc: view.descs[pos], pos, i });
  });
  return out;
}

export function sorted(a: Iterable<number>): number[] {
  return [...a].sort((x, y) => x - y);
}

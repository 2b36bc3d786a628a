import { PAGE_WORDS } from "../kvm_host.js";

/** An empty tag: no `gfn + mode` (gfn >= 0, mode 0..3) equals it. */
export const TLB_INVALID = -1;

/**
 * The per-vCPU software TLB: direct-mapped, private to the vCPU thread (plain typed arrays, no
 * Atomics). Entry i: tag[i] = gfn + 1; wtag[i] = gfn + 1 if the translation is writable, else
 * TLB_INVALID; base[i] = the frame's first word in guest memory. Separate arrays so that a hit
 * is one compare and one add (Vcpu.read32/write32, which compare a tag with gfn + the vCPU's
 * mode: docs/locking.md §3.8). base is an Int32Array while guest memory has at most 2^31 words
 * (8 GiB), a Uint32Array above (frames past 8 GiB start beyond int32; a Uint32Array load costs a
 * hit about 15% more in V8, so small VMs do not pay for it). Guest accesses consult the cached
 * `writable`, never the current spte, so a stale writable translation is exactly as dangerous
 * as on hardware: only a flush removes it.
 */
export class SoftTlb {
  readonly size: number;
  readonly mask: number;
  readonly tag: Int32Array;
  readonly wtag: Int32Array;
  readonly base: Int32Array | Uint32Array;
  flushes = 0;

  /** memWords: the length of guest memory in 32-bit words (it decides base's type). */
  constructor(bits = 12, memWords = 0) {
    this.size = 1 << bits;
    this.mask = this.size - 1;
    this.tag = new Int32Array(this.size).fill(TLB_INVALID);
    this.wtag = new Int32Array(this.size).fill(TLB_INVALID);
    this.base = memWords > 2 ** 31 ? new Uint32Array(this.size) : new Int32Array(this.size);
  }

  /** Returns (pfn << 1) | writable, or -1 on a miss. */
  lookup(gfn: number): number {
    const t = gfn & this.mask;
    if (this.tag[t] !== gfn + 1) return -1;
    return ((this.base[t] / PAGE_WORDS) << 1) | (this.wtag[t] !== TLB_INVALID ? 1 : 0);
  }

  fill(gfn: number, pfn: number, writable: boolean): void {
    const t = gfn & this.mask;
    this.tag[t] = gfn + 1;
    this.wtag[t] = writable ? gfn + 1 : TLB_INVALID;
    this.base[t] = pfn * PAGE_WORDS;
  }

  /** Drops one page's translation (INVLPG). */
  invalidate(gfn: number): void {
    const t = gfn & this.mask;
    if (this.tag[t] === gfn + 1) this.tag[t] = this.wtag[t] = TLB_INVALID;
  }

  flush(): void {
    this.tag.fill(TLB_INVALID);
    this.wtag.fill(TLB_INVALID);
    this.flushes++;
  }

  /** Entries that would let a write reach frame pfn (for the audit). */
  writableEntries(): { gfn: number; pfn: number }[] {
    const out: { gfn: number; pfn: number }[] = [];
    for (let i = 0; i < this.size; i++) {
      const w = this.wtag[i];
      if (w !== TLB_INVALID) out.push({ gfn: w - 1, pfn: this.base[i] / PAGE_WORDS });
    }
    return out;
  }
}

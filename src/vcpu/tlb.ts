/**
 * The per-vCPU software TLB: direct-mapped, private to the vCPU thread (plain typed arrays, no
 * Atomics). Entry i is two words: tag = gfn + 1 (0: invalid) and (pfn << 1) | writable.
 * Guest accesses consult the cached `writable`, never the current spte, so a stale writable
 * translation is exactly as dangerous as on hardware: only a flush removes it.
 */
export class SoftTlb {
  readonly size: number;
  readonly mask: number;
  readonly e: Int32Array;
  flushes = 0;

  constructor(bits = 12) {
    this.size = 1 << bits;
    this.mask = this.size - 1;
    this.e = new Int32Array(this.size * 2);
  }

  /** Returns (pfn << 1) | writable, or -1 on a miss. */
  lookup(gfn: number): number {
    const t = (gfn & this.mask) << 1;
    return this.e[t] === gfn + 1 ? this.e[t + 1] : -1;
  }

  fill(gfn: number, pfn: number, writable: boolean): void {
    const t = (gfn & this.mask) << 1;
    this.e[t] = gfn + 1;
    this.e[t + 1] = (pfn << 1) | (writable ? 1 : 0);
  }

  flush(): void {
    this.e.fill(0);
    this.flushes++;
  }

  /** Entries that would let a write reach frame pfn (for the audit). */
  writableEntries(): { gfn: number; pfn: number }[] {
    const out: { gfn: number; pfn: number }[] = [];
    for (let i = 0; i < this.size; i++) {
      const tag = this.e[2 * i];
      const v = this.e[2 * i + 1];
      if (tag !== 0 && (v & 1) !== 0) out.push({ gfn: tag - 1, pfn: v >>> 1 });
    }
    return out;
  }
}

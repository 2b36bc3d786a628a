/**
 * The guest kernel's page-table code: what a guest program uses to build and change its own page
 * tables (format: src/mmu/guest_pt.ts), with ordinary guest stores (GuestContext.write64w), as a kernel
 * does. Nothing here touches the MMU directly: in shadow mode every store to a table that is
 * shadowed traps and is emulated, exactly as for a real guest.
 *
 * Tables come from a pool of guest-physical pages owned by this vCPU. The whole "kernel area"
 * (every vCPU's pool) is identity-mapped (vpn == gfn) in every address space the kernel builds,
 * like Linux's direct map, so the kernel can reach any table through its gfn once paging is on.
 * Address spaces share the kernel's upper tables: their PML4 entries for the kernel area point at
 * the same PDPT (so that guest table has several parents in the shadow MMU).
 */
import type { GuestContext } from "../guest/context.js";
import {
  GPTE_A,
  GPTE_D,
  GPTE_P,
  GPTE_PS,
  GPTE_U,
  GPTE_W,
  gpt_index,
  gpte_gfn,
  make_gpte_hi,
  make_gpte_lo,
} from "../mmu/guest_pt.js";

export interface KernelArea {
  /** First gfn of the kernel area (all vCPUs' pools; identity-mapped). */
  baseGfn: number;
  pages: number;
  /** Map the kernel area with 2 MiB pages (where aligned) instead of 4 KiB pages. */
  large?: boolean;
}

export interface GuestPagingArgs {
  kernel: KernelArea;
  /** This vCPU's pool of table pages, inside the kernel area. */
  poolGfn: number;
  poolPages: number;
}

/**
 * Flags of ordinary user mappings: A preset, as Linux's PAGE_SHARED / PAGE_READONLY do; D is left
 * to the first write (the walker sets it). Kernel-area mappings preset D as well.
 */
export const MAP_RW = GPTE_P | GPTE_W | GPTE_U | GPTE_A;
export const MAP_RO = GPTE_P | GPTE_U | GPTE_A;
const TABLE_FLAGS = GPTE_P | GPTE_W | GPTE_U;

/** Upper bound of the table pages needed to map `pages` 4 KiB pages in one contiguous range. */
export function tablesFor(pages: number, large = false): number {
  const l1 = large ? 0 : Math.ceil(pages / 512) + 1;
  return l1 + Math.ceil(pages / 262144) + 2 + Math.ceil(pages / 2 ** 27) + 2;
}

export class GuestKernel {
  readonly ctx: GuestContext;
  readonly args: GuestPagingArgs;
  private next: number;
  private readonly free: number[] = [];
  /** The kernel area's PDPT per PML4 index (shared by every address space). */
  private readonly kernelPml4e = new Map<number, [number, number]>();
  tablesAllocated = 0;
  tablesFreed = 0;

  constructor(ctx: GuestContext, args: GuestPagingArgs) {
    this.ctx = ctx;
    this.args = args;
    this.next = args.poolGfn;
  }

  /** A zeroed table page from the pool (recycled pages are cleared with guest stores). */
  allocTable(): number {
    let g = this.free.pop();
    if (g === undefined) {
      if (this.next >= this.args.poolGfn + this.args.poolPages)
        throw new Error(`guest kernel: table pool of ${this.args.poolPages} pages exhausted`);
      g = this.next++;
    } else {
      for (let i = 0; i < 512; i++) this.ctx.write64w(g, i * 2, 0, 0);
    }
    this.tablesAllocated++;
    return g;
  }

  freeTable(g: number): void {
    this.tablesFreed++;
    this.free.push(g);
  }

  readPte(table: number, idx: number): [number, number] {
    return [this.ctx.read32w(table, idx * 2), this.ctx.read32w(table, idx * 2 + 1)];
  }

  writePte(table: number, idx: number, lo: number, hi: number): void {
    this.ctx.write64w(table, idx * 2, lo, hi);
  }

  /** The table below entry idx of `table`, created if absent. */
  private walkCreate(table: number, idx: number): number {
    const [lo, hi] = this.readPte(table, idx);
    if ((lo & GPTE_P) !== 0) return gpte_gfn(lo, hi);
    const t = this.allocTable();
    this.writePte(table, idx, make_gpte_lo(t, TABLE_FLAGS), make_gpte_hi(t));
    return t;
  }

  /**
   * A new address space: a PML4 whose kernel-area entries are the kernel's (built on first use,
   * in this address space, and shared by every later one).
   */
  newAddressSpace(): number {
    const pml4 = this.allocTable();
    if (this.kernelPml4e.size === 0) {
      const k = this.args.kernel;
      let p = 0;
      while (p < k.pages) {
        const g = k.baseGfn + p;
        if (k.large && g % 512 === 0 && k.pages - p >= 512) {
          this.map(pml4, g, g, MAP_RW | GPTE_A | GPTE_D, true);
          p += 512;
        } else {
          this.map(pml4, g, g, MAP_RW | GPTE_A | GPTE_D);
          p++;
        }
      }
      for (let i = 0; i < 16; i++) {
        const [lo, hi] = this.readPte(pml4, i);
        if ((lo & GPTE_P) !== 0) this.kernelPml4e.set(i, [lo, hi]);
      }
    } else {
      for (const [i, [lo, hi]] of this.kernelPml4e) this.writePte(pml4, i, lo, hi);
    }
    return pml4;
  }

  /** True if vpn lies under a PML4 entry of the kernel area. */
  isKernelPml4Index(idx: number): boolean {
    return this.kernelPml4e.has(idx);
  }

  /** Maps vpn -> gfn (a 2 MiB page when `large`: both 512-aligned). */
  map(pml4: number, vpn: number, gfn: number, flags: number, large = false): void {
    const pdpt = this.walkCreate(pml4, gpt_index(vpn, 4));
    const pd = this.walkCreate(pdpt, gpt_index(vpn, 3));
    if (large) {
      this.writePte(pd, gpt_index(vpn, 2), make_gpte_lo(gfn, flags | GPTE_PS), make_gpte_hi(gfn));
      return;
    }
    const pt = this.walkCreate(pd, gpt_index(vpn, 2));
    this.writePte(pt, gpt_index(vpn, 1), make_gpte_lo(gfn, flags), make_gpte_hi(gfn));
  }

  /** Maps [vpn, vpn + pages) -> [gfn, ...) with 4 KiB pages, or 2 MiB pages where both align. */
  mapRange(pml4: number, vpn: number, gfn: number, pages: number, flags: number, large = false): void {
    let p = 0;
    while (p < pages) {
      if (large && (vpn + p) % 512 === 0 && (gfn + p) % 512 === 0 && pages - p >= 512) {
        this.map(pml4, vpn + p, gfn + p, flags, true);
        p += 512;
      } else {
        this.map(pml4, vpn + p, gfn + p, flags);
        p++;
      }
    }
  }

  /**
   * Unmaps the 4 KiB page at vpn; returns its gfn or -1. The table is left in place; the caller
   * invalidates its own TLB entry (INVLPG).
   */
  unmap(pml4: number, vpn: number): number {
    let table = pml4;
    for (let level = 4; level > 1; level--) {
      const [lo, hi] = this.readPte(table, gpt_index(vpn, level));
      if ((lo & GPTE_P) === 0 || (level === 2 && (lo & GPTE_PS) !== 0)) return -1;
      table = gpte_gfn(lo, hi);
    }
    const idx = gpt_index(vpn, 1);
    const [lo, hi] = this.readPte(table, idx);
    if ((lo & GPTE_P) === 0) return -1;
    this.writePte(table, idx, 0, 0);
    this.ctx.invlpg(vpn);
    return gpte_gfn(lo, hi);
  }

  /**
   * Tears down the user part of an address space (every PML4 entry but the kernel's): clears
   * the entries top-down (as the PML4 entry goes first, the lower tables are unreachable and
   * are freed without being cleared), frees the tables and the PML4.
   */
  destroyAddressSpace(pml4: number): void {
    for (let i = 0; i < 512; i++) {
      if (this.kernelPml4e.has(i)) continue;
      const [lo, hi] = this.readPte(pml4, i);
      if ((lo & GPTE_P) === 0) continue;
      this.writePte(pml4, i, 0, 0);
      this.freeSubtree(gpte_gfn(lo, hi), 3);
    }
    this.freeTable(pml4);
  }

  private freeSubtree(table: number, level: number): void {
    if (level > 1) {
      for (let i = 0; i < 512; i++) {
        const lo = this.ctx.read32w(table, i * 2);
        if ((lo & GPTE_P) === 0 || (level === 2 && (lo & GPTE_PS) !== 0)) continue;
        this.freeSubtree(gpte_gfn(lo, this.ctx.read32w(table, i * 2 + 1)), level - 1);
      }
    }
    this.freeTable(table);
  }
}

/**
 * The boot sequence of a guest that turns paging on: with paging off (vpn == gfn), build an
 * address space with the kernel area identity-mapped and [vpn, vpn + pages) -> [gfn, ...), then
 * load CR3. Returns the kernel and the PML4.
 */
export function bootWithPaging(
  ctx: GuestContext,
  args: GuestPagingArgs,
  region: { vpn: number; gfn: number; pages: number; large?: boolean },
): { kernel: GuestKernel; pml4: number } {
  const kernel = new GuestKernel(ctx, args);
  const pml4 = kernel.newAddressSpace();
  kernel.mapRange(pml4, region.vpn, region.gfn, region.pages, MAP_RW, region.large ?? false);
  ctx.loadCr3(pml4);
  return { kernel, pml4 };
}

export { GPTE_A, GPTE_D, GPTE_P, GPTE_PS, GPTE_U, GPTE_W };

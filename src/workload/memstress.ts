/**
 * The memstress guest (tools/testing/selftests/kvm/lib/memstress.c): each vCPU owns a region of
 * the test slot and walks it in passes, one 8-byte access per page, sequential or random order,
 * writing with probability writePercent (the RNG is drawn for every access, as the guest does).
 */
import type { GuestContext } from "../guest/context.js";
import { ParkMiller } from "./rng.js";
import { bootWithPaging, GuestPagingArgs } from "./guest_paging.js";

export interface MemstressArgs {
  kind: "memstress";
  /** First gfn of this vCPU's region. */
  baseGfn: number;
  pages: number;
  writePercent: number;
  random: boolean;
  seed: number;
  /**
   * Guest paging (shadow mode): the vCPU first builds its page tables in its pool, mapping its
   * region at guest virtual page `vpn` (2 MiB guest pages if `large`), loads CR3, then runs as
   * without paging, on virtual addresses.
   */
  paging?: GuestPagingArgs & { vpn: number; large?: boolean };
}

/**
 * Pass 0 populates: sequential, every access a write (as memstress forces), so every page is
 * mapped before logging starts. Later passes follow the arguments.
 */
export function memstress_guest(ctx: GuestContext, a: MemstressArgs): never {
  const rng = new ParkMiller(a.seed + ctx.vcpuId);
  const pages = a.pages;
  let base = a.baseGfn;
  if (a.paging) {
    bootWithPaging(ctx, a.paging, {
      vpn: a.paging.vpn,
      gfn: a.baseGfn,
      pages,
      large: a.paging.large ?? false,
    });
    base = a.paging.vpn;
  }
  for (let i = 0; i < pages; i++) ctx.write64w(base + i, 0, 0x89abcdef | 0, 0x01234567);
  ctx.writes += pages;
  ctx.passDone();
  ctx.checkpoint();
  for (;;) {
    for (let i = 0; i < pages; i++) {
      const page = a.random ? rng.next() % pages : i;
      const write = rng.next() % 100 < a.writePercent;
      if (write) {
        ctx.write64w(base + page, 0, 0x89abcdef | 0, 0x01234567);
        ctx.writes++;
      } else {
        ctx.read32w(base + page, 0);
        ctx.reads++;
      }
    }
    ctx.passDone();
    ctx.checkpoint();
  }
}

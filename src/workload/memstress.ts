/**
 * The memstress guest (tools/testing/selftests/kvm/lib/memstress.c): each vCPU owns a region of
 * the test slot and walks it in passes, one 8-byte access per page, sequential or random order,
 * writing with probability writePercent (the RNG is drawn for every access, as the guest does).
 */
import { Vcpu } from "../vcpu/vcpu.js";
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
export function memstress_guest(vcpu: Vcpu, a: MemstressArgs): never {
  const rng = new ParkMiller(a.seed + vcpu.id);
  const pages = a.pages;
  let base = a.baseGfn;
  if (a.paging) {
    bootWithPaging(vcpu, a.paging, {
      vpn: a.paging.vpn,
      gfn: a.baseGfn,
      pages,
      large: a.paging.large ?? false,
    });
    base = a.paging.vpn;
  }
  for (let i = 0; i < pages; i++) vcpu.write64(base + i, 0, 0x89abcdef | 0, 0x01234567);
  vcpu.writes += pages;
  vcpu.passDone();
  vcpu.publishStats();
  vcpu.safePoint();
  for (;;) {
    for (let i = 0; i < pages; i++) {
      const page = a.random ? rng.next() % pages : i;
      const write = rng.next() % 100 < a.writePercent;
      if (write) {
        vcpu.write64(base + page, 0, 0x89abcdef | 0, 0x01234567);
        vcpu.writes++;
      } else {
        vcpu.read32(base + page, 0);
        vcpu.reads++;
      }
    }
    vcpu.passDone();
    vcpu.publishStats();
    vcpu.safePoint();
  }
}

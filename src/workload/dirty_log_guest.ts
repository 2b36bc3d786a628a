/**
 * The guests of the dirty-log correctness test (src/verify/dirty_log_test.ts).
 *
 * `dirty_log`: the guest of KVM's current dirty_log_test (tools/testing/selftests/kvm/
 * dirty_log_test.c). Until the host raises the stop flag it
 * stores the current iteration number (published by the host before it lets the vCPU run) as a
 * u64 into the first 8 bytes of a page chosen uniformly at random, with replacement, from its
 * region (Park-Miller, seed + vcpu id), counting the stores. The stop flag is tested before
 * every store; once it is set the vCPU parks: that is the GUEST_SYNC point, where every earlier
 * store has retired (the acknowledgement is a seq-cst store made after them).
 *
 * `dirty_log_incr`: QEMU's view of a guest during live migration: each vCPU walks its region in
 * order, pass after pass, reading the first word of every page and storing it back incremented.
 * Pass p writes at word (2p mod 1024) of each page, so the stores spread over whole pages.
 *
 * Both talk to the host through a small Int32Array control block (`ctl`, layout below) that is
 * separate from the VM's shared memory: it plays the part of the guest globals the selftest
 * shares with sync_global_to_guest / sync_global_from_guest.
 *
 * Parking: the vCPU leaves guest mode (so a remote TLB flush does not wait for it) and sleeps
 * on the stop flag with a timeout. Between sleeps it enters guest mode for a moment, which
 * takes pending requests (TLB flush) and honours pause and stop at a safe point, then leaves
 * again. A vCPU never blocks in Atomics.wait while in guest mode.
 */
import type { GuestContext } from "../guest/context.js";
import { ParkMiller } from "./rng.js";
import { bootWithPaging, GuestPagingArgs } from "./guest_paging.js";

/** Control block words (Int32Array over `ctl`). */
export const DLG_ITERATION = 0; // host -> guest: the stamp to write (published before resume)
export const DLG_STOP = 1; // host -> guest: 1 = park at the next sync point
export const DLG_VCPU_BASE = 4;
export const DLG_VCPU_STRIDE = 4;
/** Per-vCPU words, at DLG_VCPU_BASE + id * DLG_VCPU_STRIDE. */
export const DLG_PARKED = 0; // guest -> host: 1 while parked at the sync point
export const DLG_WRITES = 1; // guest -> host: stores done (wraps at 2^32; use differences)
export const DLG_LAST_PAGE = 2; // guest -> host: region-relative page of the last store
export const DLG_PASSES = 3; // guest -> host: completed passes (dirty_log_incr)

/** Int32 words of a control block for `vcpus` vCPUs (ids 0..vcpus-1). */
export function dlgCtlWords(vcpus: number): number {
  return DLG_VCPU_BASE + vcpus * DLG_VCPU_STRIDE;
}

/** Poll interval of a parked vCPU, ms. */
const PARK_POLL_MS = 5;
/** The store counter is published every this many stores, and at every park. */
const PUBLISH_EVERY = 64;

export interface DirtyLogGuestArgs {
  kind: "dirty_log";
  /** The control block (see DLG_*); `Int32Array` over it. */
  ctl: SharedArrayBuffer;
  /** First gfn of this vCPU's region, and its size in pages. */
  baseGfn: number;
  pages: number;
  seed: number;
  paging?: DirtyLogPaging;
}

/**
 * Guest paging (shadow mode): before its first sync point the vCPU builds its page tables,
 * mapping its region at guest virtual page `vpn`, and loads CR3; it then stores through virtual
 * addresses. The tables live outside the test slot.
 */
export type DirtyLogPaging = GuestPagingArgs & { vpn: number };

/** Boots with paging if asked; returns the page number the guest addresses its region by. */
function regionBase(
  ctx: GuestContext,
  a: { baseGfn: number; pages: number; paging?: DirtyLogPaging },
): number {
  if (!a.paging) return a.baseGfn;
  bootWithPaging(ctx, a.paging, { vpn: a.paging.vpn, gfn: a.baseGfn, pages: a.pages });
  return a.paging.vpn;
}

export interface DirtyLogIncrGuestArgs {
  kind: "dirty_log_incr";
  ctl: SharedArrayBuffer;
  baseGfn: number;
  pages: number;
  paging?: DirtyLogPaging;
}

/**
 * The sync point: acknowledge, then halt until the host clears the stop flag (each halt leaves
 * guest mode, so no remote TLB flush waits for us, and re-enters at a safe point that takes
 * requests and honours pause/stop). Called in guest mode; returns in guest mode.
 */
function park(ctx: GuestContext, ctl: Int32Array, me: number): void {
  Atomics.store(ctl, me + DLG_PARKED, 1);
  Atomics.notify(ctl, me + DLG_PARKED);
  while (Atomics.load(ctl, DLG_STOP) !== 0) ctx.halt(ctl, DLG_STOP, 1, PARK_POLL_MS);
  Atomics.store(ctl, me + DLG_PARKED, 0);
}

export function dirty_log_guest(ctx: GuestContext, a: DirtyLogGuestArgs): never {
  const ctl = new Int32Array(a.ctl);
  const me = DLG_VCPU_BASE + ctx.vcpuId * DLG_VCPU_STRIDE;
  const rng = new ParkMiller(a.seed + ctx.vcpuId);
  const pages = a.pages;
  const base = regionBase(ctx, a);
  let writes = Atomics.load(ctl, me + DLG_WRITES);
  for (;;) {
    while (Atomics.load(ctl, DLG_STOP) === 0) {
      const page = rng.next() % pages;
      // READ_ONCE(iteration): it changes only while every vCPU is parked.
      ctx.write64w(base + page, 0, Atomics.load(ctl, DLG_ITERATION), 0);
      writes = (writes + 1) | 0;
      if ((writes & (PUBLISH_EVERY - 1)) === 0) {
        Atomics.store(ctl, me + DLG_WRITES, writes);
        Atomics.store(ctl, me + DLG_LAST_PAGE, page);
      }
    }
    Atomics.store(ctl, me + DLG_WRITES, writes);
    park(ctx, ctl, me);
  }
}

export function dirty_log_incr_guest(ctx: GuestContext, a: DirtyLogIncrGuestArgs): never {
  const ctl = new Int32Array(a.ctl);
  const me = DLG_VCPU_BASE + ctx.vcpuId * DLG_VCPU_STRIDE;
  const pages = a.pages;
  const base = regionBase(ctx, a);
  let writes = Atomics.load(ctl, me + DLG_WRITES);
  let pass = Atomics.load(ctl, me + DLG_PASSES);
  let i = 0;
  for (;;) {
    while (Atomics.load(ctl, DLG_STOP) === 0) {
      const gfn = base + i;
      const w = (pass * 2) & 1023;
      const v = ctx.read32w(gfn, w);
      ctx.write64w(gfn, w, (v + 1) | 0, pass);
      writes = (writes + 1) | 0;
      if ((writes & (PUBLISH_EVERY - 1)) === 0) {
        Atomics.store(ctl, me + DLG_WRITES, writes);
        Atomics.store(ctl, me + DLG_LAST_PAGE, i);
      }
      if (++i === pages) {
        i = 0;
        pass++;
        Atomics.store(ctl, me + DLG_PASSES, pass);
        ctx.passDone();
      }
    }
    Atomics.store(ctl, me + DLG_WRITES, writes);
    park(ctx, ctl, me);
  }
}

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
import { defineBlock, defineRows } from "../layout.js";

/** Control block words (Int32Array over `ctl`): DLG, then one DLG_VCPU row per vCPU. */
export const DLG = defineBlock(
  "dirty-log guest: control words",
  "dirty-log guest ctl SAB",
  {
    iteration: { by: "the host writes it (atomic) while the vCPUs are parked", doc: "the stamp to write" },
    stop: { by: "the host writes it (atomic); vCPUs read it", doc: "1: park at the next sync point" },
  },
  { words: 4 },
);
export const DLG_VCPU = defineRows(
  "dirty-log guest: one vCPU",
  "dirty-log guest ctl SAB",
  {
    parked: { by: "its vCPU (atomic); the host waits on it", doc: "1 while parked at the sync point" },
    writes: { by: "its vCPU (atomic)", doc: "stores done (wraps at 2^32; use differences)" },
    last_page: { by: "its vCPU (atomic)", doc: "region-relative page of the last store" },
    passes: { by: "its vCPU (atomic)", doc: "completed passes (dirty_log_incr)" },
  },
  { stride: 4, base: 4 },
);

/** Int32 words of a control block for `vcpus` vCPUs (ids 0..vcpus-1). */
export function dlgCtlWords(vcpus: number): number {
  return DLG_VCPU.row(vcpus);
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
function park(ctx: GuestContext, ctl: Int32Array, id: number): void {
  Atomics.store(ctl, DLG_VCPU.parked(id), 1);
  Atomics.notify(ctl, DLG_VCPU.parked(id));
  while (Atomics.load(ctl, DLG.stop) !== 0) ctx.halt(ctl, DLG.stop, 1, PARK_POLL_MS);
  Atomics.store(ctl, DLG_VCPU.parked(id), 0);
}

export function dirty_log_guest(ctx: GuestContext, a: DirtyLogGuestArgs): never {
  const ctl = new Int32Array(a.ctl);
  const id = ctx.vcpuId;
  const rng = new ParkMiller(a.seed + ctx.vcpuId);
  const pages = a.pages;
  const base = regionBase(ctx, a);
  let writes = Atomics.load(ctl, DLG_VCPU.writes(id));
  for (;;) {
    while (Atomics.load(ctl, DLG.stop) === 0) {
      const page = rng.next() % pages;
      // READ_ONCE(iteration): it changes only while every vCPU is parked.
      ctx.write64w(base + page, 0, Atomics.load(ctl, DLG.iteration), 0);
      writes = (writes + 1) | 0;
      if ((writes & (PUBLISH_EVERY - 1)) === 0) {
        Atomics.store(ctl, DLG_VCPU.writes(id), writes);
        Atomics.store(ctl, DLG_VCPU.last_page(id), page);
      }
    }
    Atomics.store(ctl, DLG_VCPU.writes(id), writes);
    park(ctx, ctl, id);
  }
}

export function dirty_log_incr_guest(ctx: GuestContext, a: DirtyLogIncrGuestArgs): never {
  const ctl = new Int32Array(a.ctl);
  const id = ctx.vcpuId;
  const pages = a.pages;
  const base = regionBase(ctx, a);
  let writes = Atomics.load(ctl, DLG_VCPU.writes(id));
  let pass = Atomics.load(ctl, DLG_VCPU.passes(id));
  let i = 0;
  for (;;) {
    while (Atomics.load(ctl, DLG.stop) === 0) {
      const gfn = base + i;
      const w = (pass * 2) & 1023;
      const v = ctx.read32w(gfn, w);
      ctx.write64w(gfn, w, (v + 1) | 0, pass);
      writes = (writes + 1) | 0;
      if ((writes & (PUBLISH_EVERY - 1)) === 0) {
        Atomics.store(ctl, DLG_VCPU.writes(id), writes);
        Atomics.store(ctl, DLG_VCPU.last_page(id), i);
      }
      if (++i === pages) {
        i = 0;
        pass++;
        Atomics.store(ctl, DLG_VCPU.passes(id), pass);
        ctx.passDone();
      }
    }
    Atomics.store(ctl, DLG_VCPU.writes(id), writes);
    park(ctx, ctl, id);
  }
}

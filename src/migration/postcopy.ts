/**
 * Post-copy live migration, as QEMU's postcopy-ram does it with userfaultfd: the guest runs on
 * the destination before all its pages have arrived.
 *
 * Switch-over (the source's vCPUs paused, a last dirty sync made): the source sends the state
 * page (the vCPUs' registers live there), a discard bitmap of every page the destination does
 * not hold valid, the vCPU state, and "postcopy-run". The destination (postcopy_incoming.ts)
 * marks the discarded pages missing (vm.userfaultDiscard), releases the guest on its vCPUs,
 * started before switch-over, and answers "running".
 *
 * Then the source sends every page still owed: pages a destination vCPU is blocked on (page
 * requests on the return path) before the background stream, which goes in small sections so a
 * request waits at most one of them; then EOF with the stream digest. The destination places
 * each page as it arrives (vm.userfaultCopy), hashing it first: the guest cannot touch it before.
 * The hashes of the pages it held at switch-over plus those of the arrived pages must equal the
 * paused source's; then the guest's invariant is checked as in pre-copy.
 *
 * After "postcopy-run" neither side holds the whole guest. When the link drops and both sides
 * were given a way to reconnect, both pause (postcopy-paused) and resume on a new connection
 * (recover.ts); otherwise, or if either side fails, the guest is lost and both fail, typed.
 *
 * This file is the source's side, and the sections both sides share.
 */
import { PAGE_SIZE } from "../kvm_host.js";
import { for_each_set_bit } from "../dirty_bitmap.js";
import { GuestVm, pageHashes } from "./guest_vm.js";
import { isLinkFailure, requestRecvBitmap, sendResume } from "./recover.js";
import {
  jsonPayload,
  MigrationError,
  RamBuilder,
  Sec,
  Section,
  SectionWriter,
  writeRecordHeader,
} from "./stream.js";

/** Pages per RAM section after switch-over: a page request waits behind at most this many. */
const BACKGROUND_SECTION_PAGES = 16;
const WINDOW_MS = 100;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const yieldIo = (): Promise<void> => new Promise((r) => setImmediate(r));

/** What post-copy measured, with QEMU's query-migrate names. */
export interface PostcopyStats {
  /** Sum over the vCPUs of the time they were blocked on missing pages, ms. */
  "postcopy-blocktime": number;
  /** Per vCPU: total time blocked, ms. */
  "postcopy-vcpu-blocktime": number[];
  /** Per vCPU: the longest single wait, ms. */
  "postcopy-vcpu-blocktime-max": number[];
  /** Page requests the destination sent (QEMU's ram.postcopy-requests). */
  "postcopy-requests": number;
  /** Per vCPU: the waits on a missing page. */
  "postcopy-vcpu-requests": number[];
  /** Pages the destination did not hold at switch-over. */
  discardedPages: number;
  /** Of those, sent because they were requested, and in the background. */
  requestedPages: number;
  backgroundPages: number;
  /** From switch-over to the last page placed, ms (the time the guest depended on the source). */
  postcopyTimeMs: number;
  /** Post-copy recovery (recover.ts): links dropped and recovered. */
  recoveries: number;
  /** Time spent in postcopy-paused and postcopy-recover, ms. */
  pausedMs: number;
  /** Pages sent on a dropped link that never arrived, sent again (requested + background = discarded + resent). */
  resentPages: number;
}

/** The return path as the post-copy source uses it (precopy.ts's reader). */
export interface ReturnChannel {
  readonly failure: MigrationError | null;
  /** The failure is the link's (closed, broken): post-copy may recover. */
  readonly linkDown: boolean;
  /** Called with each page-request payload as it arrives. */
  onPageRequest: ((payload: Buffer, id: number) => void) | null;
  /** The next queued section if it has this type, else null (never waits). */
  take(type: number): Section | null;
  expect(type: number, timeoutMs: number): Promise<Section>;
}

export interface PostcopySourceContext {
  g: GuestVm;
  /** The connection: replaced by reconnect() after a recovery. */
  w: SectionWriter;
  ret: ReturnChannel;
  /** Pages dirty since they were last sent (bit n = page n): what the destination lacks. */
  pending: Uint32Array;
  /** The vCPU state (the guest's counters) at pause. */
  counts: number[];
  tPause: number;
  /** Bytes per second for background pages, 0: unlimited. */
  maxBandwidth: number;
  /** Called once "postcopy-run" is sent: from then on the guest is the destination's. */
  commit: () => void;
  /** Called once "postcopy-run" is sent (failure injection: kill-destination). */
  onRun?: () => void;
  /**
   * Post-copy recovery (recover.ts): after a dropped link, a new connection's writer and return
   * path (the old one closed). Absent: a dropped link loses the guest. Rejects when none comes.
   */
  reconnect?: (pausedAt: number) => Promise<{ w: SectionWriter; ret: ReturnChannel }>;
  /** Names this migration in a recovery handshake (the config section carried it). */
  migrationId?: string;
  /** The state machine's postcopy-paused / postcopy-recover / postcopy-active moves. */
  setState?: (to: "postcopy-paused" | "postcopy-recover" | "postcopy-active") => void;
}

export interface PostcopySourceResult {
  downtimeMs: number;
  /** postcopy-run written, and "running" received (performance.now()). */
  tRun: number;
  tRunning: number;
  pagesCompared: number;
  mismatches: number;
  guestInvariant: boolean;
  problems: string[];
  stats: PostcopyStats;
}

/** Page-request payload: be64 gpas. */
export function encodePageRequest(gpas: readonly number[]): Buffer {
  const b = Buffer.alloc(8 * gpas.length);
  gpas.forEach((gpa, i) => writeRecordHeader(b, 8 * i, gpa, 0));
  return b;
}

/** Parses a page request; every gpa must be a page of the slot (EPROTO / EFAULT otherwise). */
export function decodePageRequest(payload: Buffer, id: number, memoryBytes: number): number[] {
  if (payload.length === 0 || payload.length % 8 !== 0)
    throw new MigrationError(
      "EBADMSG",
      `section ${id} (page-request): ${payload.length} bytes, not 8 per page`,
    );
  const out: number[] = [];
  for (let off = 0; off < payload.length; off += 8) {
    const gpa = payload.readUInt32BE(off) * 2 ** 32 + payload.readUInt32BE(off + 4);
    if (gpa % PAGE_SIZE !== 0)
      throw new MigrationError(
        "EPROTO",
        `section ${id} (page-request): address 0x${gpa.toString(16)} is not a page`,
      );
    if (gpa + PAGE_SIZE > memoryBytes)
      throw new MigrationError(
        "EFAULT",
        `section ${id} (page-request): address 0x${gpa.toString(16)} is outside guest memory`,
      );
    out.push(gpa);
  }
  return out;
}

/** Discard payload: be32 page count, then the bitmap as little-endian 32-bit words. */
function encodeDiscard(bitmap: Uint32Array, pages: number): Buffer {
  const b = Buffer.alloc(4 + bitmap.length * 4);
  b.writeUInt32BE(pages, 0);
  for (let i = 0; i < bitmap.length; i++) b.writeUInt32LE(bitmap[i], 4 + 4 * i);
  return b;
}

export function decodeDiscard(payload: Buffer, id: number, pages: number): Uint32Array {
  const words = Math.ceil(pages / 32);
  if (payload.length !== 4 + 4 * words || payload.readUInt32BE(0) !== pages)
    throw new MigrationError(
      "EPROTO",
      `section ${id} (discard): ${payload.length} bytes for ${payload.length >= 4 ? payload.readUInt32BE(0) : "?"} pages, this guest has ${pages} pages (${4 + 4 * words} bytes)`,
    );
  const bm = new Uint32Array(words);
  for (let i = 0; i < words; i++) bm[i] = payload.readUInt32LE(4 + 4 * i);
  if (pages % 32 !== 0 && (bm[words - 1] & ~(2 ** (pages % 32) - 1)) !== 0)
    throw new MigrationError("EPROTO", `section ${id} (discard): bits set past page ${pages - 1}`);
  return bm;
}

/**
 * The source's side from switch-over on (vCPUs paused, final sync done). Throws on failure; the
 * caller knows from commit() whether the guest was already handed over.
 */
export async function postcopySource(c: PostcopySourceContext): Promise<PostcopySourceResult> {
  const s = new PostcopySender(c);
  const { discarded, tRun } = await s.sendPackage();
  let downtimeMs: number;
  for (;;) {
    try {
      downtimeMs = await s.drain();
      // A request that crossed its page on the wire may still come: the handler stays (ignored).
      await s.w.section(Sec.Eof, await s.w.digest());
      break;
    } catch (e) {
      // A dropped link pauses post-copy until a new connection (recover.ts), if one may come.
      const link = isLinkFailure(e) || (s.ret.failure !== null && s.ret.linkDown);
      if (!c.reconnect || !link) throw e;
      await s.recover();
    }
  }
  const postcopyTimeMs = performance.now() - tRun;
  const v = await checkDestination(c.g, s.ret);
  return {
    downtimeMs,
    tRun,
    tRunning: c.tPause + downtimeMs,
    pagesCompared: v.pages,
    mismatches: v.mismatches,
    guestInvariant: v.ver.ok,
    problems: v.ver.problems,
    stats: {
      ...v.stats,
      discardedPages: discarded,
      requestedPages: s.requested,
      backgroundPages: s.background,
      postcopyTimeMs,
      recoveries: s.recoveries,
      pausedMs: s.pausedMs,
      resentPages: s.resent,
    },
  };
}

/** The source's sending from postcopy-run on: requested pages first, then the background. */
class PostcopySender {
  private readonly pages: number;
  private readonly page32 = new Int32Array(PAGE_SIZE / 4);
  private readonly page8 = new Uint8Array(this.page32.buffer);
  private readonly ram = new RamBuilder(BACKGROUND_SECTION_PAGES);
  private readonly requests: number[] = [];
  private wake: (() => void) | null = null;
  /** A bad page request (set from the return path's handler, outside this control flow). */
  private protoError: MigrationError | null = null;
  private owed = 0;
  private cursor = 0;
  /** Pause to the destination's "running" (-1 until then). */
  private downtimeMs = -1;
  requested = 0;
  background = 0;
  resent = 0;
  recoveries = 0;
  pausedMs = 0;
  /** The current connection (a recovery replaces both). */
  w: SectionWriter;
  ret: ReturnChannel;

  constructor(private readonly c: PostcopySourceContext) {
    this.pages = c.g.layout.memoryBytes / PAGE_SIZE;
    this.w = c.w;
    this.ret = c.ret;
  }

  private isSet(p: number): boolean {
    return (this.c.pending[p >>> 5] & (1 << (p & 31))) !== 0;
  }

  private add(p: number): void {
    this.c.g.vm.readGuestPage(p * PAGE_SIZE, this.page32);
    this.ram.add(p * PAGE_SIZE, this.page8);
    this.c.pending[p >>> 5] &= ~(1 << (p & 31));
  }

  /** The package: the state page (the vCPUs' registers), the discard bitmap, the vCPU state, run. */
  /** Requests are served before background pages; a request wakes a throttled sender. */
  private readonly onPageRequest = (payload: Buffer, id: number): void => {
    try {
      for (const gpa of decodePageRequest(payload, id, this.c.g.layout.memoryBytes))
        this.requests.push(gpa / PAGE_SIZE);
    } catch (e) {
      this.protoError ??= e as MigrationError;
    }
    const k = this.wake;
    this.wake = null;
    k?.();
  };

  async sendPackage(): Promise<{ discarded: number; tRun: number }> {
    const { c, ram } = this;
    const layout = c.g.layout;
    // Installed before postcopy-run: a request may come back at once.
    c.ret.onPageRequest = this.onPageRequest;
    const statePages = Math.ceil((4 * layout.vcpus) / PAGE_SIZE);
    const first = layout.stateGpa / PAGE_SIZE;
    for (let p = first; p < first + statePages; p++) this.add(p);
    await c.w.section(Sec.Ram, ram.take());
    for_each_set_bit(c.pending, () => this.owed++);
    const discarded = this.owed;
    await c.w.section(Sec.Discard, encodeDiscard(c.pending, this.pages));
    await c.w.section(Sec.Vcpu, jsonPayload({ vcpus: c.counts.map((counter, id) => ({ id, counter })) }));
    await c.w.section(Sec.Postcopy, Buffer.alloc(0));
    c.commit();
    const tRun = performance.now();
    c.onRun?.();
    return { discarded, tRun };
  }

  private nap(ms: number): Promise<void> {
    return Promise.race([new Promise<void>((r) => (this.wake = r)), sleep(ms)]).finally(
      () => (this.wake = null),
    );
  }

  /** Sends every owed page; returns the downtime (pause to the destination's "running"). */
  async drain(): Promise<number> {
    const { c, ram } = this;
    let winStart = performance.now();
    let winBytes = 0;
    const cap = c.maxBandwidth > 0 ? (c.maxBandwidth * WINDOW_MS) / 1000 : Infinity;
    const runningBy = Date.now() + 30_000;
    while (this.owed > 0 || this.downtimeMs < 0) {
      if (this.ret.failure) throw this.ret.failure;
      if (this.protoError) throw this.protoError;
      if (this.downtimeMs < 0 && this.ret.take(Sec.Running)) this.downtimeMs = performance.now() - c.tPause;
      if (this.downtimeMs < 0 && Date.now() > runningBy)
        throw new MigrationError("ETIMEDOUT", "the destination did not start the guest in 30000 ms");
      await this.sendRequested();
      // Then one background section, once the guest runs there (so its first faults are requests).
      const now = performance.now();
      if (now - winStart >= WINDOW_MS) {
        winStart = now;
        winBytes = 0;
      }
      if (this.downtimeMs >= 0 && this.owed > 0 && winBytes < cap) {
        this.fillBackground();
        const before = this.w.bytes;
        await this.w.section(Sec.Ram, ram.take());
        winBytes += this.w.bytes - before;
        await yieldIo(); // let the return path's requests in
      } else await this.nap(winBytes >= cap ? Math.max(1, WINDOW_MS - (now - winStart)) : 5);
    }
    return this.downtimeMs;
  }

  /**
   * postcopy-paused until a new connection, then the recover handshake (recover.ts): what the
   * destination holds decides what is owed. A handshake cut short pauses again.
   */
  async recover(): Promise<void> {
    const c = this.c;
    const t0 = performance.now();
    c.setState?.("postcopy-paused");
    // What was built or asked on the dropped link is void: the destination's bitmap decides.
    this.ram.take();
    this.requests.length = 0;
    this.ret.onPageRequest = null;
    for (;;) {
      const conn = await c.reconnect!(t0);
      this.w = conn.w;
      this.ret = conn.ret;
      c.setState?.("postcopy-recover");
      try {
        const held = await requestRecvBitmap(this.w, this.ret, c.migrationId ?? "", this.pages);
        this.merge(held);
        this.ret.onPageRequest = this.onPageRequest;
        await sendResume(this.w, this.ret);
        break;
      } catch (e) {
        if (!isLinkFailure(e) && !(this.ret.failure && this.ret.linkDown)) throw e;
        c.setState?.("postcopy-paused");
      }
    }
    c.setState?.("postcopy-active");
    // The guest ran there before the link dropped, unless "running" was lost with it.
    if (this.downtimeMs < 0) this.downtimeMs = performance.now() - c.tPause;
    this.recoveries++;
    this.pausedMs += performance.now() - t0;
  }

  /** Owed from now on: exactly the pages the destination does not hold. */
  private merge(held: Uint32Array): void {
    const pending = this.c.pending;
    let owed = 0;
    for (let p = 0; p < this.pages; p++) {
      const bit = 1 << (p & 31);
      if ((held[p >>> 5] & bit) !== 0) pending[p >>> 5] &= ~bit;
      else {
        // Sent on the dropped link, never arrived: owed again.
        if ((pending[p >>> 5] & bit) === 0) this.resent++;
        pending[p >>> 5] |= bit;
        owed++;
      }
    }
    this.owed = owed;
  }

  /** Requested pages first, unthrottled: a vCPU is waiting for each. */
  private async sendRequested(): Promise<void> {
    const { ram } = this;
    while (this.requests.length > 0) {
      const p = this.requests.shift()!;
      if (!this.isSet(p)) continue; // already sent (a request and the background crossed)
      this.add(p);
      this.requested++;
      this.owed--;
      // As QEMU: the background goes on after the requested page (the guest likely touches it next).
      this.cursor = (p + 1) % this.pages;
      if (ram.full) await this.w.section(Sec.Ram, ram.take());
    }
    if (ram.pages > 0) await this.w.section(Sec.Ram, ram.take());
  }

  private fillBackground(): void {
    while (!this.ram.full && this.owed > 0) {
      while (!this.isSet(this.cursor)) this.cursor = (this.cursor + 1) % this.pages;
      this.add(this.cursor);
      this.background++;
      this.owed--;
    }
  }
}

/** After EOF: the destination's page hashes against our paused memory, and its verdict. */
async function checkDestination(
  g: GuestVm,
  ret: ReturnChannel,
): Promise<{
  pages: number;
  mismatches: number;
  ver: { ok: boolean; problems: string[] };
  stats: Pick<
    PostcopyStats,
    | "postcopy-blocktime"
    | "postcopy-vcpu-blocktime"
    | "postcopy-vcpu-blocktime-max"
    | "postcopy-requests"
    | "postcopy-vcpu-requests"
  >;
}> {
  const layout = g.layout;
  const pages = layout.memoryBytes / PAGE_SIZE;
  // Our paused memory is the reference for every page the destination holds.
  const loaded = await ret.expect(Sec.Loaded, 60_000);
  const mine = pageHashes(g.vm, layout);
  let mismatches = 0;
  for (let p = 0; p < pages; p++)
    if (
      loaded.payload.length < (p + 1) * 32 ||
      !mine.subarray(p * 32, p * 32 + 32).equals(loaded.payload.subarray(p * 32, p * 32 + 32))
    )
      mismatches++;
  const ver = JSON.parse((await ret.expect(Sec.Verified, 60_000)).payload.toString()) as {
    ok: boolean;
    problems: string[];
    postcopy?: { vcpus: { blockedMs: number; maxBlockedMs: number; faults: number }[]; requests: number };
  };
  const v = ver.postcopy?.vcpus ?? [];
  const blk = v.map((x) => Number(x.blockedMs.toFixed(3)));
  return {
    pages,
    mismatches,
    ver,
    stats: {
      "postcopy-blocktime": Number(blk.reduce((a, b) => a + b, 0).toFixed(3)),
      "postcopy-vcpu-blocktime": blk,
      "postcopy-vcpu-blocktime-max": v.map((x) => Number(x.maxBlockedMs.toFixed(3))),
      "postcopy-requests": ver.postcopy?.requests ?? 0,
      "postcopy-vcpu-requests": v.map((x) => x.faults),
    },
  };
}

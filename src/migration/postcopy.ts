/**
 * Post-copy live migration, as QEMU's postcopy-ram does it with userfaultfd: the guest runs on
 * the destination before all its pages have arrived.
 *
 * Switch-over (the source's vCPUs paused, a last dirty sync made): the source sends the state
 * page (the vCPUs' registers live there), a discard bitmap of every page the destination does
 * not hold valid, the vCPU state, and "postcopy-run". The destination marks the discarded pages
 * missing (vm.userfaultDiscard), starts the guest at once, and answers "running".
 *
 * Then the source sends every page still owed: pages a destination vCPU is blocked on (page
 * requests on the return path) before the background stream, which goes in small sections so a
 * request waits at most one of them; then EOF with the stream digest. The destination places
 * each page as it arrives (vm.userfaultCopy), hashing it first: the guest cannot touch it before.
 * The hashes of the pages it held at switch-over plus those of the arrived pages must equal the
 * paused source's; then the guest's invariant is checked as in pre-copy.
 *
 * After "postcopy-run" neither side holds the whole guest: if either fails the guest is lost
 * (QEMU's postcopy-paused recovery is not built). Both sides then fail with a typed error.
 */
import { PAGE_SIZE } from "../kvm_host.js";
import { for_each_set_bit } from "../dirty_bitmap.js";
import { GuestVm, guestCounts, pageHashes, pageHashInto, runAndCheck, runGuest } from "./guest_vm.js";
import {
  ByteReader,
  checkStreamDigest,
  decodeRam,
  jsonPayload,
  MigrationError,
  RamBuilder,
  Sec,
  Section,
  SectionWriter,
  sectionName,
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
}

/** The return path as the post-copy source uses it (precopy.ts's reader). */
export interface ReturnChannel {
  readonly failure: MigrationError | null;
  /** Called with each page-request payload as it arrives. */
  onPageRequest: ((payload: Buffer, id: number) => void) | null;
  /** The next queued section if it has this type, else null (never waits). */
  take(type: number): Section | null;
  expect(type: number, timeoutMs: number): Promise<Section>;
}

export interface PostcopySourceContext {
  g: GuestVm;
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
}

export interface PostcopySourceResult {
  downtimeMs: number;
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

function decodeDiscard(payload: Buffer, id: number, pages: number): Uint32Array {
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
  const downtimeMs = await s.drain();
  // A request that crossed its page on the wire may still come: the handler stays (and is ignored).
  await c.w.section(Sec.Eof, await c.w.digest());
  const postcopyTimeMs = performance.now() - tRun;
  const v = await checkDestination(c);
  return {
    downtimeMs,
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
  requested = 0;
  background = 0;

  constructor(private readonly c: PostcopySourceContext) {
    this.pages = c.g.layout.memoryBytes / PAGE_SIZE;
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
  async sendPackage(): Promise<{ discarded: number; tRun: number }> {
    const { c, ram } = this;
    const layout = c.g.layout;
    // Installed before postcopy-run: a request may come back at once. Requests are served
    // before background pages; a request wakes a throttled sender.
    c.ret.onPageRequest = (payload, id) => {
      try {
        for (const gpa of decodePageRequest(payload, id, layout.memoryBytes))
          this.requests.push(gpa / PAGE_SIZE);
      } catch (e) {
        this.protoError ??= e as MigrationError;
      }
      const k = this.wake;
      this.wake = null;
      k?.();
    };
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
    let downtimeMs = -1;
    let winStart = performance.now();
    let winBytes = 0;
    const cap = c.maxBandwidth > 0 ? (c.maxBandwidth * WINDOW_MS) / 1000 : Infinity;
    const runningBy = Date.now() + 30_000;
    while (this.owed > 0 || downtimeMs < 0) {
      if (c.ret.failure) throw c.ret.failure;
      if (this.protoError) throw this.protoError;
      if (downtimeMs < 0 && c.ret.take(Sec.Running)) downtimeMs = performance.now() - c.tPause;
      if (downtimeMs < 0 && Date.now() > runningBy)
        throw new MigrationError("ETIMEDOUT", "the destination did not start the guest in 30000 ms");
      await this.sendRequested();
      // Then one background section, once the guest runs there (so its first faults are requests).
      const now = performance.now();
      if (now - winStart >= WINDOW_MS) {
        winStart = now;
        winBytes = 0;
      }
      if (downtimeMs >= 0 && this.owed > 0 && winBytes < cap) {
        this.fillBackground();
        const before = c.w.bytes;
        await c.w.section(Sec.Ram, ram.take());
        winBytes += c.w.bytes - before;
        await yieldIo(); // let the return path's requests in
      } else await this.nap(winBytes >= cap ? Math.max(1, WINDOW_MS - (now - winStart)) : 5);
    }
    return downtimeMs;
  }

  /** Requested pages first, unthrottled: a vCPU is waiting for each. */
  private async sendRequested(): Promise<void> {
    const { c, ram } = this;
    while (this.requests.length > 0) {
      const p = this.requests.shift()!;
      if (!this.isSet(p)) continue; // already sent (a request and the background crossed)
      this.add(p);
      this.requested++;
      this.owed--;
      // As QEMU: the background goes on after the requested page (the guest likely touches it next).
      this.cursor = (p + 1) % this.pages;
      if (ram.full) await c.w.section(Sec.Ram, ram.take());
    }
    if (ram.pages > 0) await c.w.section(Sec.Ram, ram.take());
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
async function checkDestination(c: PostcopySourceContext): Promise<{
  pages: number;
  mismatches: number;
  ver: { ok: boolean; problems: string[] };
  stats: Omit<PostcopyStats, "discardedPages" | "requestedPages" | "backgroundPages" | "postcopyTimeMs">;
}> {
  const layout = c.g.layout;
  const pages = layout.memoryBytes / PAGE_SIZE;
  // Our paused memory is the reference for every page the destination holds.
  const loaded = await c.ret.expect(Sec.Loaded, 60_000);
  const mine = pageHashes(c.g.vm, layout);
  let mismatches = 0;
  for (let p = 0; p < pages; p++)
    if (
      loaded.payload.length < (p + 1) * 32 ||
      !mine.subarray(p * 32, p * 32 + 32).equals(loaded.payload.subarray(p * 32, p * 32 + 32))
    )
      mismatches++;
  const ver = JSON.parse((await c.ret.expect(Sec.Verified, 60_000)).payload.toString()) as {
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

/** What the destination's post-copy phase reports. */
export interface PostcopyIncomingReport {
  /** Sections read after postcopy-run (EOF included). */
  sections: number;
  pagesPlaced: number;
  discardedPages: number;
  requests: number;
  guestInvariant: boolean;
  problems: string[];
  vcpus: { id: number; blockedMs: number; maxBlockedMs: number; faults: number }[];
}

export interface PostcopyIncomingContext {
  g: GuestVm;
  r: ByteReader;
  back: SectionWriter;
  /** Id of the next section from the source. */
  nextId: number;
  vcpuState: { id: number; counter: number }[] | null;
  /** Reads one section under the destination's idle timeout. */
  read: (id: number) => Promise<Section>;
}

/** The destination's side of a discard section (before postcopy-run): marks the pages missing. */
export function applyDiscard(g: GuestVm, payload: Buffer, id: number): number {
  const bm = decodeDiscard(payload, id, g.layout.memoryBytes / PAGE_SIZE);
  return g.vm.userfaultDiscard(bm);
}

/**
 * The destination from "postcopy-run" on: checks the vCPU state, starts the guest, asks for the
 * pages its vCPUs block on, places what arrives until EOF, then sends its page hashes and the
 * invariant check. Throws on failure (the caller stops the VM: the guest is lost).
 */
export async function postcopyIncoming(c: PostcopyIncomingContext): Promise<PostcopyIncomingReport> {
  const { g, back } = c;
  const vm = g.vm;
  checkVcpuState(g, c.vcpuState);
  // The pages held at switch-over are hashed now, before the guest runs.
  const pages = g.layout.memoryBytes / PAGE_SIZE;
  const hashes = Buffer.alloc(pages * 32);
  const page32 = new Int32Array(PAGE_SIZE / 4);
  const discarded = vm.userfaultStats().missing;
  for (let p = 0; p < pages; p++)
    if (!vm.userfaultMissing(p * PAGE_SIZE))
      pageHashInto(new Uint8Array(vm.readGuestPage(p * PAGE_SIZE, page32).buffer), hashes, p);

  const asker = new PageAsker(g, back);
  let got: { sections: number; placed: number };
  try {
    // Asking starts with the guest: a vCPU may fault before the last one has started.
    asker.start();
    await runGuest(g);
    await back.section(Sec.Running, Buffer.alloc(0));
    got = await placeUntilEof(c, hashes);
  } catch (e) {
    const left = vm.userfaultStats().missing;
    const err =
      e instanceof MigrationError ? e : new MigrationError("EIO", (e as Error).message ?? String(e));
    throw new MigrationError(
      err.code,
      `post-copy failed with ${left} of ${pages} pages still on the source, so the guest is lost: ${err.message.replace(/^[A-Z]+: /, "")}`,
    );
  } finally {
    await asker.stop();
  }
  if (asker.error) throw asker.error;

  await back.section(Sec.Loaded, hashes);
  const chk = await runAndCheck(g);
  const stats = vm.userfaultStats();
  vm.resume();
  await back.section(
    Sec.Verified,
    jsonPayload({
      ok: chk.ok,
      problems: chk.problems,
      before: chk.before,
      after: chk.after,
      postcopy: { vcpus: stats.vcpus, requests: asker.requests },
    }),
  );
  return {
    sections: got.sections,
    pagesPlaced: got.placed,
    discardedPages: discarded,
    requests: asker.requests,
    guestInvariant: chk.ok,
    problems: chk.problems,
    vcpus: stats.vcpus,
  };
}

function checkVcpuState(g: GuestVm, vcpuState: { id: number; counter: number }[] | null): void {
  if (!vcpuState || vcpuState.length !== g.layout.vcpus)
    throw new MigrationError(
      "EPROTO",
      `vcpu state: ${vcpuState?.length ?? 0} vCPUs, the config has ${g.layout.vcpus}`,
    );
  const counts = guestCounts(g);
  vcpuState.forEach((v, i) => {
    if (v.id !== i || v.counter !== counts[i])
      throw new MigrationError(
        "EBADMSG",
        `vcpu ${i}: state says count ${v.counter}, memory holds ${counts[i]}`,
      );
  });
}

/** The fault handler: whatever a vCPU blocks on that was not asked for yet goes to the source. */
class PageAsker {
  private done = false;
  private running: Promise<void> | null = null;
  private readonly asked = new Set<number>();
  requests = 0;
  error: Error | null = null;

  constructor(
    private readonly g: GuestVm,
    private readonly back: SectionWriter,
  ) {}

  start(): void {
    this.running = this.ask();
  }

  async stop(): Promise<void> {
    this.done = true;
    if (this.running) await this.running;
  }

  private async ask(): Promise<void> {
    const vm = this.g.vm;
    let seq = 0;
    try {
      while (!this.done) {
        const pend = vm.userfaultPending();
        const fresh = pend.gpas.filter((gpa) => !this.asked.has(gpa) && vm.userfaultMissing(gpa));
        if (fresh.length > 0) {
          for (const gpa of fresh) this.asked.add(gpa);
          this.requests += fresh.length;
          await this.back.section(Sec.PageReq, encodePageRequest(fresh));
        }
        if (pend.seq === seq) await vm.waitUserfault(seq, 20);
        seq = pend.seq;
      }
    } catch (e) {
      this.error = e instanceof Error ? e : new Error(String(e));
    }
  }
}

/** Places each arriving page (hashed first: the guest cannot have changed it yet) until EOF. */
async function placeUntilEof(
  c: PostcopyIncomingContext,
  hashes: Buffer,
): Promise<{ sections: number; placed: number }> {
  const { r } = c;
  const vm = c.g.vm;
  const end = c.g.layout.memoryBytes;
  const zero = new Uint8Array(PAGE_SIZE);
  let placed = 0;
  let sections = 0;
  for (let id = c.nextId; ; id++) {
    r.hash!.mark();
    const s = await c.read(id);
    sections++;
    if (s.type === Sec.Ram) {
      for (const rec of decodeRam(s.payload, id, (gpa) => gpa + PAGE_SIZE <= end)) {
        if (!vm.userfaultMissing(rec.gpa))
          throw new MigrationError(
            "EPROTO",
            `section ${id} (ram): page 0x${rec.gpa.toString(16)} was not missing (sent twice?)`,
          );
        pageHashInto(rec.data ?? zero, hashes, rec.gpa / PAGE_SIZE);
        vm.userfaultCopy(rec.gpa, rec.data);
        placed++;
      }
    } else if (s.type === Sec.Eof) {
      await checkStreamDigest(r, s.payload);
      break;
    } else throw new MigrationError("EPROTO", `section ${id} (${sectionName(s.type)}) during post-copy`);
  }
  const left = vm.userfaultStats().missing;
  if (left !== 0) throw new MigrationError("EPROTO", `the stream ended with ${left} pages still missing`);
  return { sections, placed };
}

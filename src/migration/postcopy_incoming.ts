/**
 * Post-copy's destination side (postcopy.ts is the source's): the discard before postcopy-run,
 * then the guest released at once on its already started vCPUs, the pages they block on asked
 * for on the return path, each arriving page placed (UFFDIO_COPY) until EOF, then the page
 * hashes and the invariant check. A dropped link pauses it (postcopy-paused: the vCPUs keep
 * waiting on their missing pages) until a new connection's recover handshake (recover.ts).
 */
import { PAGE_SIZE } from "../kvm_host.js";
import { GuestVm, guestCounts, pageHashInto, runAndCheck } from "./guest_vm.js";
import { MIG_CTL } from "./guest.js";
import {
  ByteReader,
  checkStreamDigest,
  decodeRam,
  jsonPayload,
  MigrationError,
  Sec,
  Section,
  SectionWriter,
  sectionName,
} from "./stream.js";
import { decodeDiscard, encodePageRequest } from "./postcopy.js";
import { acceptResume, IncomingLink, isLinkFailure, RecoverConnection } from "./recover.js";

/** What the destination's post-copy phase reports. */
export interface PostcopyIncomingReport {
  /** Sections read after postcopy-run (EOF included), over every connection. */
  sections: number;
  pagesPlaced: number;
  discardedPages: number;
  requests: number;
  guestInvariant: boolean;
  problems: string[];
  vcpus: { id: number; blockedMs: number; maxBlockedMs: number; faults: number }[];
  /** Links dropped and recovered, and the time spent in postcopy-paused and -recover (ms). */
  recoveries: number;
  pausedMs: number;
}

export interface PostcopyIncomingContext {
  g: GuestVm;
  /** The connection postcopy-run came on. */
  link: IncomingLink;
  vcpuState: { id: number; counter: number }[] | null;
  /** Reads one section under the destination's idle timeout. */
  read: (r: ByteReader, id: number) => Promise<Section>;
  /**
   * Post-copy recovery: the next connection after a dropped link (authenticated as the first);
   * absent, a dropped link loses the guest. Rejects (typed) when no source comes back.
   */
  recover?: RecoverConnection;
  /** This migration's id (the config section's): a resuming source must name it. */
  migrationId?: string | null;
  idleMs: number;
  /** The state machine's moves, and its current state (named by an idle timeout). */
  setState: (to: "postcopy-paused" | "postcopy-recover" | "postcopy-active") => void;
  phase: () => string;
  /** Called with each new connection (the caller closes the one in use when it ends). */
  onLink?: (l: IncomingLink) => void;
}

/**
 * The destination's side of a discard section (before postcopy-run): parks the held vCPUs (a
 * discard drops mappings: no vCPU may be in guest mode) and marks the pages missing. They stay
 * parked and held until postcopy-run releases them.
 */
export async function applyDiscard(g: GuestVm, payload: Buffer, id: number): Promise<number> {
  const bm = decodeDiscard(payload, id, g.layout.memoryBytes / PAGE_SIZE);
  // Ask for the park first, then wake the held vCPUs from their halt so they park at once.
  const parking = g.vm.pause();
  Atomics.notify(g.ctl, MIG_CTL.hold);
  await parking;
  return g.vm.userfaultDiscard(bm);
}

/** postcopy-run: the parked, held vCPUs run the guest (they were started before switch-over). */
function releaseGuest(g: GuestVm): void {
  Atomics.store(g.ctl, MIG_CTL.hold, 0);
  Atomics.notify(g.ctl, MIG_CTL.hold);
  g.vm.resume();
}

/**
 * The destination from "postcopy-run" on: checks the vCPU state, releases the guest, asks for
 * the pages its vCPUs block on, places what arrives until EOF (pausing and recovering on a
 * dropped link when it may), then sends its page hashes and the invariant check. Throws on
 * failure (the caller stops the VM: the guest is lost).
 */
export async function postcopyIncoming(c: PostcopyIncomingContext): Promise<PostcopyIncomingReport> {
  const g = c.g;
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

  let link = c.link;
  const asker = new PageAsker(g, link.back);
  const got = { sections: 0, placed: 0, recoveries: 0, pausedMs: 0 };
  try {
    // Asking starts with the guest: a vCPU may fault before the last one is released.
    asker.start();
    releaseGuest(g);
    let running = false;
    for (;;) {
      try {
        if (!running) await link.back.section(Sec.Running, Buffer.alloc(0));
        running = true;
        await placeUntilEof(c, link, hashes, got);
        break;
      } catch (e) {
        if (!c.recover || !isLinkFailure(e)) throw e;
        // "running" lost with the link: the source counts the downtime to the resume instead.
        running = true;
        link = await recoverIncoming(c, link, asker, got);
      }
    }
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

  await link.back.section(Sec.Loaded, hashes);
  const chk = await runAndCheck(g);
  const stats = vm.userfaultStats();
  vm.resume();
  await link.back.section(
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
    recoveries: got.recoveries,
    pausedMs: got.pausedMs,
  };
}

/**
 * postcopy-paused: the dropped connection is closed, the vCPUs keep waiting on their missing
 * pages, the asker holds its requests; each new connection runs the recover handshake, and one
 * that fails it (cut again, or not this migration's source) is dropped and the next awaited.
 * Throws when no source comes back (c.recover rejects).
 */
async function recoverIncoming(
  c: PostcopyIncomingContext,
  old: IncomingLink,
  asker: PageAsker,
  got: { recoveries: number; pausedMs: number },
): Promise<IncomingLink> {
  const t0 = performance.now();
  c.setState("postcopy-paused");
  asker.pause();
  old.r.drain();
  old.stream.destroy();
  for (;;) {
    const conn = await c.recover!(t0);
    c.setState("postcopy-recover");
    try {
      const link = await acceptResume(c.g, conn, c.migrationId ?? "", c.idleMs, c.phase);
      c.onLink?.(link);
      c.setState("postcopy-active");
      asker.resume(link.back);
      got.recoveries++;
      got.pausedMs += performance.now() - t0;
      return link;
    } catch (e) {
      conn.reader.drain();
      conn.stream.destroy();
      if (!(e instanceof MigrationError)) throw e;
      c.setState("postcopy-paused");
    }
  }
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

/**
 * The fault handler: whatever a vCPU blocks on that was not asked for yet goes to the source.
 * Paused (no connection) it asks nothing; on resume it asks again for every blocked page.
 */
class PageAsker {
  private done = false;
  private running: Promise<void> | null = null;
  private readonly asked = new Set<number>();
  requests = 0;
  error: Error | null = null;

  constructor(
    private readonly g: GuestVm,
    private back: SectionWriter | null,
  ) {}

  start(): void {
    this.running = this.ask();
  }

  async stop(): Promise<void> {
    this.done = true;
    if (this.running) await this.running;
  }

  pause(): void {
    this.back = null;
  }

  /** A new connection: the requests in flight were lost with the old one. */
  resume(back: SectionWriter): void {
    this.asked.clear();
    this.back = back;
  }

  private async ask(): Promise<void> {
    const vm = this.g.vm;
    let seq = 0;
    try {
      while (!this.done) {
        const pend = vm.userfaultPending();
        const back = this.back;
        const fresh = back ? pend.gpas.filter((gpa) => !this.asked.has(gpa) && vm.userfaultMissing(gpa)) : [];
        if (fresh.length > 0) {
          for (const gpa of fresh) this.asked.add(gpa);
          this.requests += fresh.length;
          vm.traceEvent("migration_page_request", "i", fresh.length, Math.floor(fresh[0] / 4096));
          try {
            await back!.section(Sec.PageReq, encodePageRequest(fresh));
          } catch (e) {
            // The link dropped: the place loop sees it too and pauses; a resume asks again.
            if (!isLinkFailure(e)) throw e;
            if (this.back === back) this.back = null;
          }
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
  link: IncomingLink,
  hashes: Buffer,
  got: { sections: number; placed: number },
): Promise<void> {
  const { r } = link;
  const vm = c.g.vm;
  const end = c.g.layout.memoryBytes;
  const zero = new Uint8Array(PAGE_SIZE);
  for (let id = link.nextId; ; id++) {
    r.hash!.mark();
    const s = await c.read(r, id);
    got.sections++;
    link.nextId = id + 1;
    if (s.type === Sec.Ram) {
      for (const rec of decodeRam(s.payload, id, (gpa) => gpa + PAGE_SIZE <= end)) {
        if (!vm.userfaultMissing(rec.gpa))
          throw new MigrationError(
            "EPROTO",
            `section ${id} (ram): page 0x${rec.gpa.toString(16)} was not missing (sent twice?)`,
          );
        pageHashInto(rec.data ?? zero, hashes, rec.gpa / PAGE_SIZE);
        vm.userfaultCopy(rec.gpa, rec.data);
        got.placed++;
      }
    } else if (s.type === Sec.Eof) {
      await checkStreamDigest(r, s.payload);
      break;
    } else throw new MigrationError("EPROTO", `section ${id} (${sectionName(s.type)}) during post-copy`);
  }
  const left = vm.userfaultStats().missing;
  if (left !== 0) throw new MigrationError("EPROTO", `the stream ended with ${left} pages still missing`);
}

/**
 * Guest RAM as a migration section, shaped like QEMU's SaveVMHandlers for "ram": the source's
 * save_setup / save_live_iterate / save_live_complete_precopy / state_pending_*, with the dirty
 * bitmap sync (migration_bitmap_sync) between them, and the destination's load_state.
 */
import { PAGE_SIZE } from "../kvm_host.js";
import { for_each_set_bit, hweight32 } from "../dirty_bitmap.js";
import type { GuestVm } from "./guest_vm.js";
import type { DirtyLogStrategy } from "./log_sync.js";
import type { RateLimiter } from "./rate_limit.js";
import { decodeRam, RamBuilder, Sec, SectionWriter } from "./stream.js";
import type { MultifdSend } from "./multifd.js";

/** The source side of a live section, as QEMU's SaveVMHandlers (the methods this model uses). */
export interface SaveVMHandlers {
  /** Before the first iteration: everything is to be sent. */
  save_setup(): void;
  /** One iteration: sends what is pending, under the rate limit. */
  save_live_iterate(): Promise<void>;
  /** The completion stage (guest stopped): sends what is left, not rate-limited. */
  save_live_complete_precopy(): Promise<void>;
  /** Bytes still to send, as known now (no sync). */
  state_pending_estimate(): number;
  /** Bytes still to send after a sync of the dirty log. */
  state_pending_exact(): number;
}

/** The destination side: one section's payload applied. */
export interface LoadVMHandlers {
  /** Applies one section; returns the pages it held. */
  load_state(payload: Buffer, sectionId: number): number;
}

/**
 * Pages per RAM section while iterating: 1 MiB frames, so the per-section costs (a CRC call, a
 * socket write, an await, the rate limiter's accounting) are paid once per 256 pages.
 */
const RAM_SECTION_PAGES = 256;

export class RamSaveState implements SaveVMHandlers {
  readonly pages: number;
  /** Pages dirty since they were last sent (bit n = page n): what the destination lacks. */
  readonly pending: Uint32Array;
  private readonly harvest: Uint32Array;
  private readonly page32 = new Int32Array(PAGE_SIZE / 4);
  private readonly page8 = new Uint8Array(this.page32.buffer);
  private readonly ram = new RamBuilder(RAM_SECTION_PAGES);
  /** QEMU's ram counters: zero pages and full pages sent. */
  duplicate = 0;
  normal = 0;
  /** Dirty-log syncs made (QEMU's dirty-sync-count). */
  syncs = 0;
  /** The last sync: its duration, and the pages it found newly dirty. */
  syncMs = 0;
  freshPages = 0;
  /** multifd (`channels` > 1): pages go over the channels, the main stream the round markers. */
  multifd: MultifdSend | null = null;

  constructor(
    private readonly g: GuestVm,
    private readonly w: SectionWriter,
    private readonly limiter: RateLimiter,
    private readonly log: DirtyLogStrategy,
  ) {
    this.pages = g.layout.memoryBytes / PAGE_SIZE;
    this.pending = new Uint32Array(Math.ceil(this.pages / 32));
    this.harvest = new Uint32Array(this.pending.length);
  }

  /** The bulk round: clear the log, then every page is pending (a write after the clear is logged). */
  save_setup(): void {
    this.log.sync(this.g, this.harvest);
    this.syncs++;
    this.pending.fill(0xffffffff);
    if (this.pages % 32 !== 0) this.pending[this.pending.length - 1] = 2 ** (this.pages % 32) - 1;
  }

  save_live_iterate(): Promise<void> {
    return this.sendPending();
  }

  save_live_complete_precopy(): Promise<void> {
    this.limiter.enabled = false;
    return this.sendPending();
  }

  state_pending_estimate(): number {
    let n = 0;
    for (let i = 0; i < this.pending.length; i++) n += hweight32(this.pending[i]);
    return n * PAGE_SIZE;
  }

  state_pending_exact(): number {
    this.bitmapSync();
    return this.state_pending_estimate();
  }

  /** migration_bitmap_sync: harvests the dirty log into `pending`. */
  bitmapSync(): void {
    const ts = performance.now();
    this.log.sync(this.g, this.harvest);
    this.syncMs = performance.now() - ts;
    this.syncs++;
    let fresh = 0;
    for (let i = 0; i < this.pending.length; i++) {
      fresh += hweight32(this.harvest[i]);
      this.pending[i] |= this.harvest[i];
    }
    this.freshPages = fresh;
  }

  /** Sends every page set in `pending` and clears it. */
  private async sendPending(): Promise<void> {
    const list: number[] = [];
    for_each_set_bit(this.pending, (p) => list.push(p));
    this.pending.fill(0);
    if (this.multifd) return this.sendMultifd(list);
    for (const p of list) {
      const gpa = p * PAGE_SIZE;
      this.g.vm.readGuestPage(gpa, this.page32);
      if (this.ram.add(gpa, this.page8)) this.duplicate++;
      else this.normal++;
      if (this.ram.full) await this.flush();
    }
    await this.flush();
  }

  /** The round over the channels, then its marker (RAM_SAVE_FLAG_MULTIFD_FLUSH) on the main stream. */
  private async sendMultifd(list: number[]): Promise<void> {
    const r = await this.multifd!.send(list, this.limiter.enabled);
    this.normal += r.normal;
    this.duplicate += r.duplicate;
    const marker = Buffer.alloc(4);
    marker.writeUInt32BE(r.round, 0);
    await this.w.section(Sec.MultifdFlush, marker);
  }

  private async flush(): Promise<void> {
    if (this.ram.pages === 0) return;
    const before = this.w.bytes;
    await this.w.frame(Sec.Ram, this.ram.takeFrame(), (f) => this.ram.release(f));
    await this.limiter.account(this.w.bytes - before);
  }
}

/** The destination's RAM: pages are written into the guest as their section arrives. */
export class RamLoadState implements LoadVMHandlers {
  private readonly zero = new Uint8Array(PAGE_SIZE);
  constructor(private readonly g: GuestVm) {}

  load_state(payload: Buffer, sectionId: number): number {
    const end = this.g.layout.memoryBytes;
    const recs = decodeRam(payload, sectionId, (gpa) => gpa + PAGE_SIZE <= end);
    for (const rec of recs) this.g.vm.writeGuest(rec.gpa, rec.data ?? this.zero);
    return recs.length;
  }
}

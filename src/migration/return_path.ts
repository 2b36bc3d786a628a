/**
 * The source's reader of the return path (QEMU's source_return_path_thread): remembers the
 * first error the destination sends, hands page requests to post-copy, queues the rest.
 */
import { ByteReader, MigErrno, MigrationError, readSection, Sec, Section, sectionName } from "./stream.js";
import type { ReturnChannel } from "./postcopy.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * What a side sees when the other end (or one of its channels) failed and closed, or went
 * silent: a consequence, which the peer's own error may explain.
 */
const CONSEQUENCES: readonly MigErrno[] = ["ECONNRESET", "ENODATA", "ECANCELED", "ETIMEDOUT"];

export function isConsequence(e: MigrationError): boolean {
  return CONSEQUENCES.includes(e.code);
}

export class ReturnPath implements ReturnChannel {
  private queue: Section[] = [];
  private wake: (() => void) | null = null;
  failure: MigrationError | null = null;
  /** The failure is the link's (closed, broken), not an error the destination sent. */
  linkDown = false;
  /** Post-copy: where page requests go (any other time one is a protocol error). */
  onPageRequest: ((payload: Buffer, id: number) => void) | null = null;
  private nextId = 1;

  constructor(private readonly r: ByteReader) {
    void this.pump();
  }

  private async pump(): Promise<void> {
    try {
      for (;;) {
        const s = await readSection(this.r, this.nextId++, [
          Sec.Loaded,
          Sec.Running,
          Sec.Verified,
          Sec.PageReq,
          Sec.RecvBitmap,
          Sec.ResumeAck,
          Sec.MultifdChannels,
          Sec.Error,
        ]);
        if (s.type === Sec.PageReq) {
          if (!this.onPageRequest)
            throw new MigrationError("EPROTO", `section ${s.id} (page-request) outside post-copy`);
          this.onPageRequest(s.payload, s.id);
          continue;
        }
        if (s.type === Sec.Error) {
          const e = JSON.parse(s.payload.toString()) as { code: MigErrno; message: string };
          this.failure = new MigrationError(e.code, `destination: ${e.message.replace(/^[A-Z]+: /, "")}`);
          break;
        }
        this.queue.push(s);
        this.kick();
      }
    } catch (e) {
      const gone = e instanceof MigrationError && (e.code === "ENODATA" || e.code === "ECONNRESET");
      if (!this.failure) this.linkDown = gone;
      this.failure ??= gone
        ? new MigrationError("ECONNRESET", "the destination went away (its connection closed)")
        : (e as MigrationError);
    }
    this.kick();
  }

  private kick(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  async expect(type: number, timeoutMs: number): Promise<Section> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const s = this.queue.shift();
      if (s) {
        if (s.type !== type)
          throw new MigrationError(
            "EPROTO",
            `destination sent ${sectionName(s.type)} where ${sectionName(type)} was expected`,
          );
        return s;
      }
      if (this.failure) throw this.failure;
      const left = end - Date.now();
      if (left <= 0)
        throw new MigrationError(
          "ETIMEDOUT",
          `no ${sectionName(type)} answer from the destination in ${timeoutMs} ms`,
        );
      await Promise.race([new Promise<void>((r) => (this.wake = r)), sleep(Math.min(left, 200))]);
    }
  }

  /** The next queued section if it has this type, else null (never waits). */
  take(type: number): Section | null {
    return this.queue[0]?.type === type ? this.queue.shift()! : null;
  }

  /**
   * The source's error to report (the first cause wins): `own` when it is a cause; when it is
   * only a consequence, the destination's (it saw the failure from the other end: a truncated
   * stream, a bad checksum), waited for up to `ms` (it comes at once from a destination that
   * failed, since it sends it before it closes).
   */
  async reported(own: MigrationError, ms: number): Promise<MigrationError> {
    if (!isConsequence(own)) return own;
    return (await this.settle(ms)) ?? own;
  }

  /** The destination's own error, if it sends one within `ms`. */
  async settle(ms: number): Promise<MigrationError | null> {
    const end = Date.now() + ms;
    while (!this.failure && Date.now() < end) await sleep(10);
    return this.failure;
  }
}

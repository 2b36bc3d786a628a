/**
 * Progress of long commands, on stderr only (stdout carries the result alone):
 *  - on a terminal, one status line rewritten in place (at most 10 times a second), with the time
 *    since the command started; cleared when the command ends;
 *  - otherwise (piped, redirected, CI), a one-line heartbeat every 10 s once the command has run
 *    for 30 s, so that a log shows the run is alive and what it is doing;
 *  - with --quiet, nothing.
 */

/** Where progress goes and when: the process's stderr and clock, or a test's. */
export interface ProgressSink {
  isTTY: boolean;
  columns: number;
  write(s: string): void;
  now(): number;
}

export const HEARTBEAT_AFTER_MS = 30_000;
export const HEARTBEAT_EVERY_MS = 10_000;
const REDRAW_MS = 100;

export class Progress {
  /** When the command started: the time shown is counted from here, not from the first status. */
  private t0: number;
  private last = "";
  private drawnAt = -Infinity;
  private beatAt = 0;
  private timer: ReturnType<typeof setInterval> | null = null;
  private drawn = false;
  quiet = false;

  constructor(private readonly sink: ProgressSink) {
    this.t0 = sink.now();
  }

  /** The command starts now (the CLI's reporter outlives module load: main calls this per command). */
  start(): void {
    this.t0 = this.sink.now();
  }

  private elapsed(): string {
    return `${Math.round((this.sink.now() - this.t0) / 1000)} s`;
  }

  /** A new status: what the command is doing now. */
  say(msg: string): void {
    if (this.quiet) return;
    const now = this.sink.now();
    this.last = msg.replace(/\s*\n\s*/g, " ");
    if (this.sink.isTTY) {
      if (now - this.drawnAt >= REDRAW_MS) this.draw(now);
    } else if (this.timer === null) {
      this.beatAt = this.t0 + HEARTBEAT_AFTER_MS;
      this.timer = setInterval(() => this.tick(), 1000);
      this.timer.unref();
    }
  }

  /** The heartbeat's clock: called every second while piped (and by tests). */
  tick(): void {
    const now = this.sink.now();
    if (this.quiet || this.sink.isTTY || this.timer === null || now < this.beatAt) return;
    this.beatAt = now + HEARTBEAT_EVERY_MS;
    this.sink.write(`kvmmu: ${this.elapsed()}: ${this.last}\n`);
  }

  private draw(now: number): void {
    this.drawnAt = now;
    const line = `${this.elapsed()}  ${this.last}`;
    const width = Math.max(20, this.sink.columns - 1);
    this.sink.write(`\r\x1b[2K${line.length > width ? line.slice(0, width - 1) + "…" : line}`);
    this.drawn = true;
  }

  /** The command ended: clear the status line, stop the heartbeat. */
  done(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    if (this.drawn) this.sink.write("\r\x1b[2K");
    this.drawn = false;
  }
}

/** The CLI's progress: stderr, a terminal only when it is one and not under CI. */
export const cliProgress = new Progress({
  get isTTY() {
    return process.stderr.isTTY === true && !process.env["CI"];
  },
  get columns() {
    return process.stderr.columns ?? 80;
  },
  write: (s) => void process.stderr.write(s),
  now: () => performance.now(),
});

/** The status callback commands hand to the runners. */
export function progress(msg: string): void {
  cliProgress.say(msg);
}

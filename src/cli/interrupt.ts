/**
 * Ctrl-C for long commands: the first SIGINT aborts `interrupt.signal`, which the runners check
 * between iterations, so the command prints what it measured so far and exits 130; a second
 * SIGINT exits 130 at once.
 */
import { cliProgress } from "./progress.js";

export const interrupt = new AbortController();

export const EXIT_INTERRUPTED = 130;

export function installSigint(): void {
  process.once("SIGINT", () => {
    interrupt.abort();
    cliProgress.done();
    process.stderr.write("kvmmu: interrupted; printing what was measured so far\n");
    process.once("SIGINT", () => process.exit(EXIT_INTERRUPTED));
  });
}

/**
 * Runs the real `kvmmu` command line (bin/kvmmu.js over dist/) in a child process: capturing a
 * command's stdout inside the node:test process would interleave with the runner's own output.
 */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";

const bin = fileURLToPath(new URL("../../../bin/kvmmu.js", import.meta.url));

export interface CliResult {
  out: string;
  err: string;
  code: number;
}

export function runKvmmu(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      { env: { ...process.env, CI: "1" }, maxBuffer: 64 << 20 },
      (e, out, err) => resolve({ out, err, code: e ? ((e as { code?: number }).code ?? 1) : 0 }),
    );
  });
}

/**
 * Runs the real `kvmmu` command line (bin/kvmmu.js over dist/) in a child process: capturing a
 * command's stdout inside the node:test process would interleave with the runner's own output.
 */
import { execFile, spawn } from "node:child_process";
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

/** A `kvmmu migrate-incoming` started on a free port: its port, its exit code, its output so far. */
export interface Incoming {
  port: number;
  exit: Promise<number>;
  out(): string;
  err(): string;
}

/** Starts `kvmmu migrate-incoming --listen 127.0.0.1:0 --json ARGS`; resolves once it listens. */
export async function startIncoming(args: string[]): Promise<Incoming> {
  const p = spawn(process.execPath, [bin, "migrate-incoming", "--listen", "127.0.0.1:0", "--json", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  p.stdout.on("data", (c: Buffer) => (out += c.toString()));
  const exit = new Promise<number>((r) => p.once("exit", (c) => r(c ?? -1)));
  const port = await new Promise<number>((res, rej) => {
    p.stderr.on("data", (c: Buffer) => {
      err += c.toString();
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(err);
      if (m) res(Number(m[1]));
    });
    void exit.then(() => rej(new Error(`exited before listening: ${err}`)));
  });
  return { port, exit, out: () => out, err: () => err };
}

/** Parsers for CLI values: each throws a KvmError(EINVAL) that names the option. */
import { einval } from "../errors.js";

/** parse_size of KVM's selftests: a number (0x allowed) with an optional b/k/m/g/t suffix. */
export function parseSize(opt: string, v: string): number {
  const m = /^(0x[0-9a-f]+|\d+)([bkmgt]?)$/i.exec(v.trim());
  if (!m) throw einval(opt, `"${v}" is not a size (e.g. 512M, 1G, 0x1000)`);
  const n = Number(m[1]);
  const mul = { "": 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase()]!;
  const r = n * mul;
  if (!Number.isSafeInteger(r)) throw einval(opt, `"${v}" is too large`);
  return r;
}

export function parseIntIn(opt: string, v: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(v.trim())) throw einval(opt, `"${v}" is not an integer`);
  const n = Number(v);
  if (n < min || n > max) throw einval(opt, `${n} is out of range ${min}..${max}`);
  return n;
}

export function parseNumberIn(opt: string, v: string, min: number, max: number): number {
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n)) throw einval(opt, `"${v}" is not a number`);
  if (n < min || n > max) throw einval(opt, `${n} is out of range ${min}..${max}`);
  return n;
}

export function parseList<T extends string>(opt: string, v: string, allowed: readonly T[]): T[] {
  const items = v
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (items.length === 0) throw einval(opt, "empty list");
  for (const it of items)
    if (!(allowed as readonly string[]).includes(it))
      throw einval(opt, `"${it}" is not one of ${allowed.join(", ")}`);
  return [...new Set(items)] as T[];
}

/** One value of `allowed`: a list (`tdp,shadow`) where one is expected is EINVAL naming `opt`. */
export function parseOne<T extends string>(opt: string, v: string, allowed: readonly T[]): T {
  const l = parseList(opt, v, allowed);
  if (l.length !== 1) throw einval(opt, `takes one value, got "${v}"`);
  return l[0];
}

/** Progress on stderr: a status line on a terminal, a heartbeat otherwise (progress.ts). */
export { progress } from "./progress.js";

/**
 * Runs `f`; an EINVAL from the library (KvmError or MigrationError) comes out with its option
 * names as this command's flags: `dirtyLimit: needs logMode "dirty-ring"` becomes `--dirty-limit:
 * needs --log-mode dirty-ring`. The argument is renamed where it starts the message; in the text,
 * camelCase names only (a plain word such as "throttle" may be prose there).
 */
export async function withFlagNames<T>(flags: Record<string, string>, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof Error && (e as { code?: unknown }).code === "EINVAL")
      e.message = flagNames(e.message, flags);
    throw e;
  }
}

export function flagNames(message: string, flags: Record<string, string>): string {
  let m = message.replace(/^(EINVAL: )(\w+):/, (all, pre: string, arg: string) =>
    flags[arg] !== undefined ? `${pre}${flags[arg]}:` : all,
  );
  for (const [name, flag] of Object.entries(flags))
    if (/[A-Z]/.test(name))
      m = m.replace(new RegExp(`\\b${name}\\b(?: "([^"]*)")?`, "g"), (_a, v?: string) =>
        v === undefined ? flag : `${flag} ${v}`,
      );
  return m;
}

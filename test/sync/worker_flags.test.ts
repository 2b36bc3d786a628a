/**
 * Worker flags: a host process started with per-process Node flags (heap and stack sizes,
 * --expose-gc, --title) still runs its vCPUs; the flags a worker refuses are left out and the
 * heap and stack sizes reach the workers as resourceLimits.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { workerFlags } from "../../src/sync/worker_flags.js";

test("workerFlags: refused flags dropped, accepted ones kept with their values, sizes as resourceLimits", () => {
  const f = workerFlags([
    "--max-old-space-size=4096",
    "--expose-gc",
    "--stack-size",
    "2048",
    "--title=kvmmu-host",
    "--max-semi-space-size=16",
    "--enable-source-maps",
    "--conditions",
    "x",
    "-e",
    "console.log(1)",
  ]);
  assert.deepEqual(f.execArgv, ["--enable-source-maps", "--conditions", "x"]);
  assert.deepEqual(f.resourceLimits, {
    maxOldGenerationSizeMb: 4096,
    maxYoungGenerationSizeMb: 16,
    stackSizeMb: 2,
  });
  assert.deepEqual(workerFlags([]), { execArgv: [], resourceLimits: {} });
});

test(
  "a host started with per-process Node flags runs its VMs (dirty-log-test passes)",
  { timeout: 120_000 },
  async () => {
    const bin = fileURLToPath(new URL("../../../bin/kvmmu.js", import.meta.url));
    const flags = [
      "--max-old-space-size=4096",
      "--expose-gc",
      "--stack-size=2000",
      "--title=kvmmu-flags-test",
    ];
    const { code, out, err } = await new Promise<{ code: number; out: string; err: string }>((resolve) =>
      execFile(
        process.execPath,
        [...flags, bin, "dirty-log-test", "-v", "1", "-b", "2M", "-i", "1", "--json"],
        { env: { ...process.env, CI: "1" } },
        (e, o, r) => resolve({ code: e ? ((e as { code?: number }).code ?? 1) : 0, out: o, err: r }),
      ),
    );
    assert.equal(code, 0, err);
    const r = JSON.parse(out) as { violations: number; pagesChecked: number };
    assert.equal(r.violations, 0);
    assert.ok(r.pagesChecked > 0);
  },
);

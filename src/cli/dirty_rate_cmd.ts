/**
 * `kvmmu dirty-rate`: QEMU's calc-dirty-rate on the migration-test guest (the same guest
 * `kvmmu migrate` moves): page-sampling, dirty-bitmap or dirty-ring, in MB/s, per vCPU in ring
 * mode (src/migration/dirtyrate.ts).
 */
import { Command } from "commander";
import { designNames, parseDesignList } from "../mmu/design.js";
import { einval } from "../errors.js";
import {
  DIRTY_RATE_MODES,
  DIRTYRATE_DEFAULT_SAMPLE_PAGES,
  DirtyRateResult,
  guestDirtyRate,
  GuestDirtyRateOptions,
  MAX_CALC_TIME_MS,
  MAX_SAMPLE_PAGE_COUNT,
  MIN_CALC_TIME_MS,
  MIN_SAMPLE_PAGE_COUNT,
} from "../migration/dirtyrate.js";
import { checkOutput, envelope, finished, writeResult } from "../bench/result.js";
import { parseIntIn, parseOne, parseSize } from "./parse.js";

/** The flags as the library's options; bad values are usage errors (EINVAL). */
function dirtyRateArgs(a: Record<string, string | boolean | undefined>): GuestDirtyRateOptions {
  const wp = parseDesignList("--wp", String(a["wp"]));
  if (wp.length !== 1) throw einval("--wp", "takes one value");
  const mode = parseOne("--calc-mode", String(a["calcMode"]), DIRTY_RATE_MODES);
  const o: GuestDirtyRateOptions = {
    mode,
    calcTimeMs: parseIntIn("--calc-time", String(a["calcTime"]), MIN_CALC_TIME_MS, MAX_CALC_TIME_MS),
    samplePagesPerGiB: parseIntIn(
      "--sample-pages",
      String(a["samplePages"]),
      MIN_SAMPLE_PAGE_COUNT,
      MAX_SAMPLE_PAGE_COUNT,
    ),
    wp: wp[0],
    guestMode: parseOne("--mode", String(a["mode"]), ["tdp", "shadow"] as const),
    memoryBytes: parseSize("--memory", String(a["memory"])),
    vcpus: parseIntIn("--vcpus", String(a["vcpus"]), 1, 64),
    warmupMs: parseIntIn("--warmup", String(a["warmup"]), 0, 600_000),
  };
  if (a["seed"] !== undefined) o.seed = parseIntIn("--seed", String(a["seed"]), 0, 2 ** 31 - 1);
  if (a["dirtyRingSize"] !== undefined) {
    if (mode !== "dirty-ring") throw einval("--dirty-ring-size", "needs --calc-mode dirty-ring");
    o.dirtyRingSize = parseIntIn("--dirty-ring-size", String(a["dirtyRingSize"]), 256, 65536);
  }
  return o;
}

export function formatDirtyRate(r: DirtyRateResult): string {
  const out = [`dirty-rate: ${r["dirty-rate"]} MB/s (${r.mode}, ${r["calc-time-ms"].toFixed(0)} ms)`];
  if (r.sampled !== undefined)
    out.push(`  ${r.dirtySamples} of ${r.sampled} sampled pages changed (${r["sample-pages"]} per GiB)`);
  else out.push(`  ${r.dirtyPages} pages dirtied`);
  for (const v of r["vcpu-dirty-rate"] ?? [])
    out.push(`  vCPU ${v.id}: ${v["dirty-rate"]} MB/s (${v.pages} pages)`);
  return out.join("\n");
}

export function registerDirtyRate(program: Command): void {
  program
    .command("dirty-rate")
    .description(
      "QEMU's calc-dirty-rate: how fast the migration-test guest dirties its memory (MB/s; per vCPU with the dirty ring)",
    )
    .option("--calc-mode <mode>", `how: ${DIRTY_RATE_MODES.join(", ")}`, "page-sampling")
    .option("--calc-time <ms>", `the calculation time (${MIN_CALC_TIME_MS}..${MAX_CALC_TIME_MS})`, "1000")
    .option(
      "--sample-pages <n>",
      `page-sampling: pages sampled per GiB (${MIN_SAMPLE_PAGE_COUNT}..${MAX_SAMPLE_PAGE_COUNT})`,
      String(DIRTYRATE_DEFAULT_SAMPLE_PAGES),
    )
    .option("--seed <n>", "page-sampling: the sample's seed (default: random)")
    .option("--dirty-ring-size <entries>", "dirty-ring: entries per vCPU ring (a power of two; default 4096)")
    .option("--wp <wp>", `design: ${designNames().join(", ")}`, "lockless")
    .option("-b, --memory <size>", "guest memory (suffix k/m/g)", "32M")
    .option("-v, --vcpus <n>", "vCPUs", "1")
    .option("--mode <mode>", "tdp or shadow", "tdp")
    .option("--warmup <ms>", "let the guest run this long before measuring", "200")
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the result, in the saved-results schema, to this file")
    .action(async (a: Record<string, string | boolean | undefined>) => {
      if (a["output"] !== undefined) checkOutput(String(a["output"]));
      const o = dirtyRateArgs(a);
      const r = await guestDirtyRate(o);
      const doc = finished({ ...envelope("dirty-rate", o), results: r });
      if (a["output"] !== undefined) writeResult(String(a["output"]), doc);
      process.stdout.write(a["json"] ? JSON.stringify(doc) + "\n" : formatDirtyRate(r) + "\n");
    });
}

/** `kvmmu dirty-log-perf`: flags of KVM's dirty_log_perf_test where they apply. */
import os from "node:os";
import { Command } from "commander";
import {
  CONTENTION,
  dirtyLogPerf,
  fitVcpus,
  PerfOptions,
  PRESETS,
  threadFit,
} from "../bench/dirty_log_perf.js";
import { formatPerf } from "../bench/dirty_log_perf_format.js";
import { checkOutput, writeResult } from "../bench/result.js";
import { parseIntIn, parseList, parseSize, progress } from "./parse.js";
import { einval } from "../errors.js";
import { interrupt } from "./interrupt.js";
import { perfCsv, writeCsv } from "../results/csv.js";

export function registerDirtyLogPerf(program: Command): void {
  program
    .command("dirty-log-perf")
    .description("time get-dirty-log and guest throughput for the locked and the lockless write-protect")
    .option(
      "-v, --vcpus <n>",
      "vCPUs (default: as many as fit the cores next to the harvester and host thread)",
    )
    .option("-b, --bytes <size>", "guest memory per vCPU (suffix k/m/g)", "512M")
    .option("-i, --iterations <n>", "measured iterations per strategy (after the warm-up)", "10")
    .option("--warmup <n>", "warm-up iterations per strategy, left out of the statistics", "1")
    .option("-w, --write-percent <p>", "percentage of accesses that write", "100")
    .option("-a, --random", "random access order (default sequential)", false)
    .option("-r, --seed <n>", "guest RNG seed", "1")
    .option("--wp <list>", "write-protect strategies, alternated", "locked,lockless")
    .option("--no-thp", "back guest memory with 4 KiB pages only")
    .option("--contention <level>", "MMU-notifier churn: none, default, heavy", "default")
    .option("--mode <mode>", "tdp (EPT on) or shadow (EPT off: the guest runs on its own page tables)", "tdp")
    .option("--guest-huge", "shadow mode: the guest maps its region with 2 MiB pages", false)
    .option("--migrate-rate <n>", "page migrations per second (overrides --contention)")
    .option("--invalidate-rate <n>", "range invalidations per second (overrides --contention)")
    .option("--invalidate-pages <n>", "pages per invalidation (default 512: 2 MiB)")
    .option(
      "--numa-scan-period <ms>",
      "NUMA balancing as Linux 3.8-3.12: every <ms> a vCPU unmaps the next --numa-scan-size of guest memory through the MMU notifier (0: off)",
      "0",
    )
    .option(
      "-c, --pin <cpus>",
      'pin threads to CPUs as KVM\'s test -c: the vCPUs\' CPUs, then the harvester\'s (e.g. 1,0); "auto": harvester on 0, vCPUs on the others; "none"',
      "none",
    )
    .option("--numa-scan-size <size>", "guest memory each NUMA balancing scan unmaps (suffix k/m/g)", "256M")
    .option(
      "--lock <kind>",
      "mmu_lock waiters: sleep (spin briefly, then sleep) or spin (3.11's ticket spinlock)",
      "sleep",
    )
    .option(
      "--preset <name>",
      `a set of options (${Object.keys(PRESETS).join(", ")}); options given here win`,
    )
    .option(
      "--park",
      "park the vCPUs during get-dirty-log (KVM's perf test); default: they keep writing",
      false,
    )
    .option(
      "-g, --no-manual-protect",
      "classic KVM_GET_DIRTY_LOG (clear and protect in GET); by default GET + KVM_CLEAR_DIRTY_LOG with manual protect and initially-set, as KVM's test",
    )
    .option(
      "--clear-chunk <pages>",
      "pages per KVM_CLEAR_DIRTY_LOG call, a multiple of 64 (0: the whole slot)",
      "0",
    )
    .option(
      "--ring <entries>",
      "a per-vCPU dirty ring of this many entries instead of the bitmap (256..65536)",
    )
    .option(
      "--window <ms>",
      "timed iterations: each iteration runs this many ms, get-dirty-log every --harvest-every ms (0: wait for two passes)",
    )
    .option("--harvest-every <ms>", "timed iterations: ms between get-dirty-log calls (default: the window)")
    .option("--json", "print one JSON object on stdout", false)
    .option("--output <file>", "also write the JSON object to FILE")
    .option("--csv <file>", "also write the iterations as CSV to FILE")
    .action(async (a: Record<string, string | boolean | undefined>, cmd: Command) => {
      const given = (k: string): boolean => a[k] !== undefined && cmd.getOptionValueSource(k) === "cli";
      if (a["output"] !== undefined) checkOutput(String(a["output"]));
      if (a["csv"] !== undefined) checkOutput(String(a["csv"]), "--csv");
      const presetName = a["preset"] === undefined ? undefined : String(a["preset"]);
      const preset = presetName === undefined ? {} : PRESETS[presetName];
      if (!preset)
        throw einval("--preset", `"${presetName}" is not one of ${Object.keys(PRESETS).join(", ")}`);
      const level = String(a["contention"]);
      const base = CONTENTION[level];
      if (!base)
        throw einval("--contention", `"${level}" is not one of ${Object.keys(CONTENTION).join(", ")}`);
      const contention = { ...(given("contention") || !preset.contention ? base : preset.contention) };
      if (a["migrateRate"] !== undefined)
        contention.migrateRate = parseIntIn("--migrate-rate", String(a["migrateRate"]), 0, 1e6);
      if (a["invalidateRate"] !== undefined)
        contention.invalidateRate = parseIntIn("--invalidate-rate", String(a["invalidateRate"]), 0, 1e6);
      if (a["invalidatePages"] !== undefined)
        contention.invalidatePages = parseIntIn(
          "--invalidate-pages",
          String(a["invalidatePages"]),
          1,
          1 << 22,
        );
      const cpus = os.availableParallelism();
      let vcpus: number;
      let from: "auto" | "user";
      if (a["vcpus"] !== undefined) {
        vcpus = parseIntIn("--vcpus", String(a["vcpus"]), 1, 64);
        from = "user";
      } else {
        vcpus = preset.vcpus ?? fitVcpus(cpus, contention);
        from = "auto";
      }
      const threads = threadFit(cpus, vcpus, contention, from);
      const lockSpin = given("lock") ? a["lock"] === "spin" : (preset.lock ?? a["lock"]) === "spin";
      const host = threads.hostThread ? " + the host thread" : "";
      if (from === "auto")
        progress(`dirty-log-perf: ${vcpus} vCPUs, so that vCPUs + the harvester${host} fit ${cpus} cores`);
      else if (threads.oversubscribed)
        process.stderr.write(
          `kvmmu: warning: ${vcpus} vCPUs + the harvester${host} = ${vcpus + 1 + threads.hostThread} threads on ${cpus} cores: ` +
            `oversubscribed, the timings measure CPU sharing as much as the MMU` +
            (lockSpin
              ? "; with --lock spin, waiters burn the cores that holders need: the run can take orders of magnitude longer"
              : "") +
            "\n",
        );
      const pick = <K extends keyof PerfOptions>(
        k: K,
        cli: string,
        parse: () => PerfOptions[K],
      ): PerfOptions[K] => (given(cli) || preset[k] === undefined ? parse() : preset[k]);
      const o: PerfOptions = {
        vcpus,
        bytesPerVcpu: pick("bytesPerVcpu", "bytes", () => parseSize("--bytes", String(a["bytes"]))),
        iterations: pick("iterations", "iterations", () =>
          parseIntIn("--iterations", String(a["iterations"]), 1, 100000),
        ),
        warmup: pick("warmup", "warmup", () => parseIntIn("--warmup", String(a["warmup"]), 0, 1000)),
        writePercent: pick("writePercent", "writePercent", () =>
          parseIntIn("--write-percent", String(a["writePercent"]), 0, 100),
        ),
        random: pick("random", "random", () => a["random"] === true),
        seed: parseIntIn("--seed", String(a["seed"]), 0, 2 ** 31 - 2),
        wp: parseList("--wp", String(a["wp"]), ["locked", "lockless"] as const),
        thp: pick("thp", "thp", () => a["thp"] !== false),
        contention,
        park: pick("park", "park", () => a["park"] === true),
        lock: pick(
          "lock",
          "lock",
          () => parseList("--lock", String(a["lock"]), ["sleep", "spin"] as const)[0],
        ),
        mode: parseList("--mode", String(a["mode"]), ["tdp", "shadow"] as const)[0],
        guestHuge: a["guestHuge"] === true,
        ...(a["ring"] !== undefined
          ? { ring: parseIntIn("--ring", String(a["ring"]), 256, 65536), manualProtect: false }
          : { manualProtect: pick("manualProtect", "manualProtect", () => a["manualProtect"] !== false) }),
        clearChunkPages: parseIntIn("--clear-chunk", String(a["clearChunk"]), 0, 1 << 30),
        windowMs: pick("windowMs", "window", () =>
          a["window"] === undefined ? 0 : parseIntIn("--window", String(a["window"]), 0, 600_000),
        ),
        ...(a["harvestEvery"] !== undefined || preset.harvestIntervalMs !== undefined
          ? {
              harvestIntervalMs: pick("harvestIntervalMs", "harvestEvery", () =>
                parseIntIn("--harvest-every", String(a["harvestEvery"]), 1, 600_000),
              ),
            }
          : {}),
        numaScanPeriodMs: pick("numaScanPeriodMs", "numaScanPeriod", () =>
          parseIntIn("--numa-scan-period", String(a["numaScanPeriod"]), 0, 3_600_000),
        ),
        numaScanBytes: pick("numaScanBytes", "numaScanSize", () =>
          parseSize("--numa-scan-size", String(a["numaScanSize"])),
        ),
        ...(() => {
          const pin = pick("pin", "pin", () => {
            const v = String(a["pin"]);
            if (v === "none") return undefined;
            if (v === "auto") return "auto";
            return v.split(",").map((x) => parseIntIn("--pin", x.trim(), 0, os.cpus().length - 1));
          });
          return pin === undefined ? {} : { pin };
        })(),
        threads,
        progress,
        signal: interrupt.signal,
        ...(presetName ? { preset: presetName } : {}),
      };
      const r = await dirtyLogPerf(o);
      if (a["output"] !== undefined) writeResult(String(a["output"]), r);
      if (a["csv"] !== undefined) writeCsv(String(a["csv"]), perfCsv(r));
      process.stdout.write(a["json"] ? JSON.stringify(r) + "\n" : formatPerf(r) + "\n");
    });
}

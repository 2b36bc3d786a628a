/**
 * `--trace FILE` and `--trace-sample N` of dirty-log-perf, dirty-log-test and migrate: every VM
 * the command makes is traced (vm.enableTrace before its vCPUs exist) and a TraceTimeline streams
 * the VMs' rings into FILE (Trace Event Format: ui.perfetto.dev, chrome://tracing).
 */
import { closeSync, openSync, writeSync } from "node:fs";
import type { Command } from "commander";
import { TraceWriter } from "../sync/trace_event.js";
import { TRACE_SAMPLE_MAX, TraceTimeline } from "../vm/trace.js";
import type { Vm } from "../vm.js";
import { checkOutput } from "../bench/result.js";
import { parseIntIn, progress } from "./parse.js";

/**
 * One in this many per-access events is recorded by default: measured runs of dirty-log-perf wrote
 * about 0.2 MB/s at 1 in 64, so a 60 s run stays well under 50 MB (docs/design.md §17).
 */
export const TRACE_SAMPLE_DEFAULT = 64;

export function traceFlags(cmd: Command): Command {
  return cmd
    .option(
      "--trace <file>",
      "write a timeline of the run to FILE (Trace Event Format, for ui.perfetto.dev or chrome://tracing)",
    )
    .option(
      "--trace-sample <n>",
      `with --trace: record one in N per-access events (faults, spte changes, ring pushes, read holds of mmu_lock)`,
      String(TRACE_SAMPLE_DEFAULT),
    );
}

/** A command's trace: `onVm` for the runner's options, `close` when the run ends (even on failure). */
export interface CliTrace {
  onVm: (vm: Vm, name: string) => void;
  close: () => { bytes: number; records: number; dropped: number };
}

/** Buffers the writer's chunks and writes them 64 KiB at a time. */
function fileSink(path: string): { sink: (c: string) => void; end: () => number } {
  const fd = openSync(path, "w");
  let buf: string[] = [];
  let pending = 0;
  let bytes = 0;
  const flush = (): void => {
    if (pending === 0) return;
    bytes += writeSync(fd, buf.join(""));
    buf = [];
    pending = 0;
  };
  return {
    sink: (c) => {
      buf.push(c);
      pending += c.length;
      if (pending >= 65536) flush();
    },
    end: () => {
      flush();
      closeSync(fd);
      return bytes;
    },
  };
}

/** The trace the flags ask for (null without --trace); checks the flags first (usage errors). */
export function openTrace(a: Record<string, string | boolean | undefined>, command: string): CliTrace | null {
  if (a["trace"] === undefined) return null;
  const path = String(a["trace"]);
  checkOutput(path, "--trace");
  const sample = parseIntIn("--trace-sample", String(a["traceSample"]), 1, TRACE_SAMPLE_MAX);
  const file = fileSink(path);
  const meta: Record<string, unknown> = { command, sample };
  const timeline = new TraceTimeline(new TraceWriter(file.sink, meta));
  timeline.start();
  let closed: ReturnType<CliTrace["close"]> | null = null;
  return {
    onVm: (vm, name) => {
      vm.enableTrace(sample);
      const src = vm.traceSource(name);
      if (src !== null) timeline.add(src);
    },
    close: () => {
      if (closed !== null) return closed;
      timeline.close(meta);
      closed = { bytes: file.end(), records: timeline.records, dropped: timeline.dropped };
      return closed;
    },
  };
}

/** Closes the trace and says what it wrote (as progress). */
export function traceDone(t: CliTrace): void {
  const r = t.close();
  const lost = r.dropped > 0 ? `, ${r.dropped} lost to full rings` : "";
  progress(`trace: ${r.records} records, ${(r.bytes / 1e6).toFixed(1)} MB${lost}`);
}

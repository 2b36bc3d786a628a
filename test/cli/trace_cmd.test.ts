/**
 * `--trace FILE` of dirty-log-perf, dirty-log-test, migrate and migrate-incoming, in a child
 * process: the file is well formed (checkTraceEvents), names its tracks, and bad flags are usage
 * errors (exit 2) that write no file.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { runKvmmu, startIncoming } from "../helpers/cli.js";
import { checkTraceEvents, type TraceEvent } from "../../src/sync/trace_event.js";

const dir = mkdtempSync(join(tmpdir(), "kvmmu-trace-"));
test.after(() => rmSync(dir, { recursive: true, force: true }));

function load(file: string): { traceEvents: TraceEvent[]; otherData: Record<string, unknown> } {
  const t = JSON.parse(readFileSync(file, "utf8")) as {
    traceEvents: TraceEvent[];
    otherData: Record<string, unknown>;
  };
  assert.deepEqual(checkTraceEvents(t.traceEvents), [], "well formed");
  return t;
}

test("dirty-log-perf --trace: a well-formed timeline, one process per design, tracks named", async () => {
  const file = join(dir, "perf.json");
  const r = await runKvmmu([
    "dirty-log-perf",
    ...["-v", "1", "-b", "8M", "-i", "1", "--warmup", "0", "--wp", "locked,tdp-mmu", "--contention", "none"],
    ...["--trace", file, "--trace-sample", "4", "--json"],
  ]);
  assert.equal(r.code, 0, r.err);
  const t = load(file);
  const procs = t.traceEvents
    .filter((e) => e.name === "process_name")
    .map((e) => (e.args as { name: string }).name);
  assert.deepEqual(procs.sort(), ["locked", "tdp-mmu"]);
  const threads = new Set(
    t.traceEvents.filter((e) => e.name === "thread_name").map((e) => (e.args as { name: string }).name),
  );
  assert.ok(threads.has("vcpu 0") && threads.has("main (ioctls)"), [...threads].join());
  assert.ok(t.traceEvents.some((e) => e.name === "kvm_vm_ioctl_get_dirty_log" && e.ph === "B"));
  assert.ok(t.traceEvents.some((e) => e.name === "mmu_lock_write" && e.ph === "B"));
  assert.ok(t.traceEvents.some((e) => e.ph === "C"));
  assert.deepEqual([t.otherData.command, t.otherData.sample], ["dirty-log-perf", 4]);
  // The result itself does not carry the hook.
  assert.equal("onVm" in (JSON.parse(r.out) as { options: object }).options, false);
});

test("dirty-log-test --trace: one process per design and oracle run", async () => {
  const file = join(dir, "test.json");
  const r = await runKvmmu([
    "dirty-log-test",
    ...["--wp", "locked", "--iterations", "2", "--json", "--trace", file],
  ]);
  assert.equal(r.code, 0, r.err);
  const t = load(file);
  assert.ok(t.traceEvents.some((e) => e.name === "process_name"));
  assert.ok(t.traceEvents.some((e) => e.name === "kvm_vm_ioctl_get_dirty_log"));
});

test("migrate --local --trace: one file, a process per side: the source's rounds, the destination's receive and both switch-overs", async () => {
  const file = join(dir, "mig.json");
  const r = await runKvmmu(["migrate", "--local", "-b", "1M", "--warmup", "50", "--json", "--trace", file]);
  assert.equal(r.code, 0, r.err);
  const t = load(file);
  assert.deepEqual(checkTraceEvents(t.traceEvents), []);
  const procs = new Map(
    t.traceEvents
      .filter((e) => e.name === "process_name")
      .map((e) => [(e.args as { name: string }).name, e.pid]),
  );
  const src = procs.get("migration source");
  const dst = procs.get("migration destination");
  assert.ok(src !== undefined && dst !== undefined && src !== dst, [...procs.keys()].join());
  const on = (pid: number, name: string): boolean =>
    t.traceEvents.some((e) => e.pid === pid && e.name === name && e.ph === "B");
  assert.ok(on(src, "migration_round"));
  assert.ok(on(src, "migration_switchover"));
  assert.ok(on(dst, "migration_incoming"));
  assert.ok(on(dst, "migration_switchover"));
  // The destination's receive ends with the pages it applied.
  const end = t.traceEvents.find((e) => e.pid === dst && e.name === "migration_incoming" && e.ph === "E");
  assert.ok(Number((end?.args as { pages?: number } | undefined)?.pages) > 0, JSON.stringify(end));
});

test("migrate --local --postcopy --trace: the destination's page requests", async () => {
  const file = join(dir, "pc.json");
  const r = await runKvmmu([
    ...["migrate", "--local", "--postcopy", "-b", "1M", "--warmup", "50", "--json", "--trace", file],
  ]);
  assert.equal(r.code, 0, r.err);
  const t = load(file);
  assert.deepEqual(checkTraceEvents(t.traceEvents), []);
  const dst = t.traceEvents.find(
    (e) => e.name === "process_name" && (e.args as { name: string }).name === "migration destination",
  )?.pid;
  const ev = t.traceEvents.filter((e) => e.name === "migration_page_request");
  // The guest runs on the destination before its pages are there: its faults ask for them.
  assert.ok(ev.length > 0, "no page request traced");
  for (const e of ev) {
    assert.equal(e.pid, dst);
    assert.ok(Number((e.args as { pages: number }).pages) > 0);
  }
});

test("migrate-incoming --trace: the destination's own file, its receive slice with the pages it applied", async () => {
  const file = join(dir, "incoming.json");
  const key = "trace-incoming-key";
  const d = await startIncoming(["--key", key, "--trace", file]);
  const src = await runKvmmu([
    "migrate",
    "--to",
    `127.0.0.1:${d.port}`,
    "--key",
    key,
    "-b",
    "1M",
    "--warmup",
    "50",
  ]);
  assert.equal(src.code, 0, src.err);
  assert.equal(await d.exit, 0, d.err());
  assert.equal((JSON.parse(d.out()) as { status: string }).status, "completed");
  const t = load(file);
  assert.deepEqual([t.otherData.command], ["migrate-incoming"]);
  const procs = t.traceEvents
    .filter((e) => e.name === "process_name")
    .map((e) => (e.args as { name: string }).name);
  assert.deepEqual(procs, ["migration destination"]);
  assert.ok(t.traceEvents.some((e) => e.name === "migration_incoming" && e.ph === "B"));
  assert.ok(t.traceEvents.some((e) => e.name === "migration_switchover" && e.ph === "B"));
  const end = t.traceEvents.find((e) => e.name === "migration_incoming" && e.ph === "E");
  assert.ok(Number((end?.args as { pages?: number } | undefined)?.pages) > 0, JSON.stringify(end));
});

test("--trace-sample out of range, --trace into a missing directory: usage errors, no file", async () => {
  const file = join(dir, "never.json");
  const bad = await runKvmmu([
    "dirty-log-perf",
    "-v",
    "1",
    "-b",
    "8M",
    "--trace",
    file,
    "--trace-sample",
    "0",
  ]);
  assert.equal(bad.code, 2, bad.err);
  assert.match(bad.err, /--trace-sample/);
  assert.equal(existsSync(file), false);
  const missing = await runKvmmu(["migrate", "--local", "--trace", join(dir, "no", "t.json")]);
  assert.equal(missing.code, 2, missing.err);
  assert.match(missing.err, /--trace/);
});

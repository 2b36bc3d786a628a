/**
 * Progress as people expect it: one status line on a terminal, a heartbeat every 10 s after 30 s
 * when piped, nothing with --quiet; an interrupted dirty-log-test says INTERRUPTED and what did
 * not run, never PASS. The clock is the test's.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { HEARTBEAT_AFTER_MS, HEARTBEAT_EVERY_MS, Progress, ProgressSink } from "../../src/cli/progress.js";
import { dirtyLogTest } from "../../src/verify/dirty_log_test.js";
import { formatDirtyLogTest } from "../../src/cli/dirty_log_test_cmd.js";

function sink(isTTY: boolean): ProgressSink & { out: string[]; t: number } {
  const s = {
    isTTY,
    columns: 60,
    out: [] as string[],
    t: 0,
    write(x: string) {
      s.out.push(x);
    },
    now: () => s.t,
  };
  return s;
}

test("terminal: one line rewritten in place, at most 10 times a second, cleared at the end", () => {
  const s = sink(true);
  const p = new Progress(s);
  for (let i = 0; i < 1000; i++) {
    s.t = i * 10; // 1000 messages over 10 s
    p.say(`iteration ${i}`);
  }
  p.done();
  assert.ok(
    s.out.every((x) => !x.includes("\n")),
    "no line is ever ended: no flood",
  );
  assert.ok(s.out.length >= 90 && s.out.length <= 102, `${s.out.length} redraws in 10 s`);
  assert.ok(
    s.out.slice(0, -1).every((x) => x.startsWith("\r\x1b[2K") && x.length - 5 <= 59),
    "fits the width",
  );
  assert.equal(s.out.at(-1), "\r\x1b[2K", "the status line is cleared");
  assert.ok(s.out.at(-2)!.startsWith("\r\x1b[2K10 s  iteration 99"), s.out.at(-2));
});

test("piped: silent for 30 s, then a heartbeat line every 10 s with the last status", () => {
  const s = sink(false);
  const p = new Progress(s);
  for (let t = 0; t <= 65_000; t += 500) {
    s.t = t;
    p.say(`at ${t}`);
    p.tick();
  }
  p.done();
  assert.deepEqual(s.out, [
    `kvmmu: 30 s: at ${HEARTBEAT_AFTER_MS}\n`,
    `kvmmu: 40 s: at ${HEARTBEAT_AFTER_MS + HEARTBEAT_EVERY_MS}\n`,
    "kvmmu: 50 s: at 50000\n",
    "kvmmu: 60 s: at 60000\n",
  ]);
});

test("a run shorter than 30 s writes nothing when piped; --quiet writes nothing anywhere", () => {
  const s = sink(false);
  const p = new Progress(s);
  for (let t = 0; t < 29_000; t += 1000) {
    s.t = t;
    p.say("x");
    p.tick();
  }
  p.done();
  assert.deepEqual(s.out, []);
  for (const tty of [true, false]) {
    const q = sink(tty);
    const pq = new Progress(q);
    pq.quiet = true;
    for (let t = 0; t < 100_000; t += 1000) {
      q.t = t;
      pq.say("x");
      pq.tick();
    }
    pq.done();
    assert.deepEqual(q.out, [], `quiet, tty ${tty}`);
  }
});

test("the time shown counts from the command's start (construction, or start()), not from its first status", () => {
  const tty = sink(true);
  tty.t = 5_000;
  const p = new Progress(tty);
  tty.t = 25_000; // 20 s of work before the first status
  p.say("loading");
  assert.ok(tty.out[0].startsWith("\r\x1b[2K20 s  loading"), tty.out[0]);
  tty.t = 100_000;
  p.start(); // the next command
  tty.t = 103_000;
  p.say("next");
  assert.ok(tty.out.at(-1)!.startsWith("\r\x1b[2K3 s  next"), tty.out.at(-1));
  p.done();
  // Piped: a first status after 40 s is already past the 30 s of silence.
  const piped = sink(false);
  const q = new Progress(piped);
  piped.t = 40_000;
  q.say("late");
  q.tick();
  q.done();
  assert.deepEqual(piped.out, ["kvmmu: 40 s: late\n"]);
});

test(
  "an interrupted dirty-log-test is INTERRUPTED, never PASS, and names the runs left out",
  { timeout: 120_000 },
  async () => {
    const ac = new AbortController();
    const statuses: string[] = [];
    const r = await dirtyLogTest({
      iterations: 2,
      intervalMs: 5,
      vcpus: 1,
      bytesPerVcpu: 2 << 20,
      wp: ["locked", "lockless"],
      oracles: ["kvm", "qemu"],
      modes: ["dirty-log"],
      thp: true,
      mode: "tdp",
      migrateRate: 0,
      invalidateRate: 0,
      seed: 1,
      // Ctrl-C during the first run.
      progress: (msg) => {
        statuses.push(msg);
        if (/run 1\/4/.test(msg)) ac.abort();
      },
      signal: ac.signal,
    });
    assert.equal(r.interrupted, true);
    assert.deepEqual(r.notRun, ["locked qemu", "lockless kvm", "lockless qemu"]);
    assert.ok(
      statuses.some((m) => m.startsWith("locked kvm, run 1/4")),
      statuses.join("\n"),
    );
    const text = formatDirtyLogTest(r);
    assert.match(text, /INTERRUPTED \(not run: locked qemu, lockless kvm, lockless qemu\)$/);
    assert.doesNotMatch(text, /PASS/);
  },
);

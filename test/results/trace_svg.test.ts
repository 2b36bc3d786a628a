/**
 * The trace timeline of `kvmmu report`: generic over any Trace Event Format file (a benchmark's
 * long trace is drawn in one window), and in headless Chromium for the explorer's counterexample
 * (skipped without chromium unless KVMMU_REQUIRE_BROWSER=1, as report.test.ts's browser test).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { memoryTraceSink, TraceWriter } from "../../src/sync/trace_event.js";
import { readTrace, traceTimelineSvg, WINDOW_EVENTS } from "../../src/results/trace_svg.js";
import { runKvmmu } from "../helpers/cli.js";
import { browserSkip, withReportPage } from "../helpers/browser.js";

const dir = mkdtempSync(join(tmpdir(), "kvmmu-trace-svg-"));

/** A benchmark-like trace: two vCPU threads with lock slices, a flush flow each round, a counter. */
function benchTrace(rounds: number): string {
  const m = memoryTraceSink();
  const w = new TraceWriter(m.sink, { tool: "test" });
  w.nameThread(1, 1, "vcpu 0", "kvmmu dirty-log-perf");
  w.nameThread(1, 2, "vcpu 1");
  for (let r = 0; r < rounds; r++) {
    const t = r * 100;
    w.begin(1, 1, t, "mmu_lock hold");
    const id = w.flowStart(1, 1, t + 1, "flush request");
    w.end(1, 1, t + 40);
    w.complete(1, 2, t + 10, 20, "mmu_lock wait");
    w.flowEnd(id, 1, 2, t + 15, "flush request");
    w.counter(1, t, "guest writes/s", { v: r });
  }
  w.close();
  return m.text();
}

test("timeline: any trace, a long one drawn in one window; bad traces are EINVAL", () => {
  const small = join(dir, "small.json");
  writeFileSync(small, benchTrace(5));
  const t = readTrace(small);
  assert.ok(t);
  const { svg, caption } = traceTimelineSvg(t);
  assert.match(svg, /vcpu 0/);
  assert.match(svg, /vcpu 1/);
  assert.equal((svg.match(/class="flow"/g) ?? []).length, 5);
  assert.equal((svg.match(/class="slice"/g) ?? []).length, 5);
  assert.equal((svg.match(/class="step"/g) ?? []).length, 5);
  assert.match(caption, /all \d+ events/);
  const big = join(dir, "big.json");
  writeFileSync(big, benchTrace(2000));
  const b = traceTimelineSvg(readTrace(big)!);
  assert.match(b.caption, new RegExp(`the first ${WINDOW_EVENTS} of \\d+ events \\(one window\\)`));
  assert.ok((b.svg.match(/class="flow"/g) ?? []).length < 2000);
  const result = join(dir, "result.json");
  writeFileSync(result, JSON.stringify({ command: "explore" }));
  assert.equal(readTrace(result), null, "a saved result is no trace");
  const bad = join(dir, "bad.json");
  writeFileSync(bad, JSON.stringify({ traceEvents: [{ ph: "X" }] }));
  assert.throws(() => readTrace(bad), { code: "EINVAL" });
});

test(
  "explore --trace, then report: the timeline in headless Chromium names the spte, the function and the violation",
  { skip: browserSkip, timeout: 240_000 },
  async () => {
    const t = join(dir, "t.json");
    const html = join(dir, "r.html");
    assert.equal((await runKvmmu(["explore", "--bug", "skip-flush", "--trace", t])).code, 1);
    const r = await runKvmmu(["report", t, "-o", html]);
    assert.equal(r.code, 0, r.err);
    await withReportPage(html, { width: 900, height: 1200 }, async (page) => {
      const svg = page.locator("section[data-trace] svg.timeline");
      assert.equal(await svg.count(), 1);
      const box = await svg.boundingBox();
      assert.ok(box && box.width > 500 && box.height > 300, `timeline drawn at ${JSON.stringify(box)}`);
      const text = (await svg.textContent()) ?? "";
      assert.match(text, /vcpu0/);
      assert.match(text, /migration/);
      assert.match(text, /spte gfn 0x64 level 1/);
      assert.match(text, /kvm_get_dirty_log/);
      assert.match(text, /violation: lost dirty page/);
      const v = await page.locator("svg.timeline g.violation line").boundingBox();
      assert.ok(v && v.width > 300, "the violation spans the threads");
      assert.ok((await page.locator("svg.timeline g.flow line").count()) > 0, "a flow arrow");
      // The flush that never came: the red dashed arrow into the stale TLB hit, drawn.
      const nf = await page.locator("svg.timeline g.no-flush line").boundingBox();
      assert.ok(nf && nf.height > 10, `the no-flush arrow drawn at ${JSON.stringify(nf)}`);
      assert.match(text, /no TLB flush/);
      assert.match(text, /stale TLB hit/);
      await page.screenshot({ path: join(dir, "timeline.png"), fullPage: true });
      process.stderr.write(`# timeline screenshot: ${join(dir, "timeline.png")}\n`);
    });
  },
);

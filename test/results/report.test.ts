/**
 * `kvmmu report`: the HTML's structure, checked in Node with linkedom (axes, marks, series), and
 * the same file in a real browser: headless Chromium (Debian's chromium package) opens it, no
 * console error, no network request, every plot drawn at a real size; a screenshot is saved.
 * Without chromium the browser test skips, unless KVMMU_REQUIRE_BROWSER=1 (test/helpers/browser.ts).
 * One file, so that the report's input files (real runs of each command) are made once.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseHTML } from "linkedom";
import { runKvmmu } from "../helpers/cli.js";
import { browserSkip, withReportPage } from "../helpers/browser.js";
import { loadResult } from "../../src/results/load.js";
import { plotSpecs, renderPlot } from "../../src/results/report.js";
import { ALL_PLOTS, MIGRATE_PERF_RUNS, reportFiles } from "./report_fixture.js";
import { tmp } from "./helpers.js";
import { designNames, designSupportsMode } from "../../src/mmu/design.js";
import { MmuMode } from "../../src/kvm_host.js";

/** The part of a DOM element the checks use (the project compiles without the DOM lib). */
interface El {
  textContent: string | null;
  getAttribute(name: string): string | null;
  querySelector(sel: string): El | null;
  querySelectorAll(sel: string): ArrayLike<El> & Iterable<El>;
}

let reported: Promise<string> | undefined;

/** `kvmmu report` of the fixture's files: the HTML file, written once per test process. */
function reportHtml(): Promise<string> {
  reported ??= (async () => {
    const out = join(tmp, "report.html");
    const r = await runKvmmu(["report", ...(await reportFiles()), "-o", out]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, "");
    return out;
  })();
  return reported;
}

test(
  "report: one self-contained HTML file with every plot, titled, labelled, with legend and caption",
  // It makes the fixture (a real run of each command) for the file's tests: minutes when loaded.
  { timeout: 600_000 },
  async () => {
    const html = readFileSync(await reportHtml(), "utf8");
    // Self-contained: no script, no external stylesheet, image or font.
    assert.doesNotMatch(html, /<script|<link |src=|url\((?!#)|@import/i);
    assert.doesNotMatch(html, /https?:\/\/(?!www\.w3\.org\/)/);
    const { document } = parseHTML(html) as unknown as { document: El };
    const sections = [...document.querySelectorAll("section.plot")].map((s) => s.getAttribute("data-plot"));
    assert.deepEqual(sections, ALL_PLOTS);
    for (const id of ALL_PLOTS) {
      const s = document.querySelector(`section[data-plot="${id}"]`)!;
      const what = `plot ${id}`;
      assert.ok(s.querySelector("figure > h2")?.textContent?.trim(), `${what}: title`);
      assert.match(
        s.querySelector("figure > figcaption")?.textContent ?? "",
        /\. From: (kvmmu|node|npm) /,
        `${what}: caption names the command`,
      );
      assert.ok(s.querySelectorAll("[class*=swatch] svg").length >= 1, `${what}: legend`);
      const svg = s.querySelector("figure > svg");
      assert.ok(svg, `${what}: svg`);
      // The forest plot's rows name themselves: its unit is on the x axis.
      const axis = id.endsWith("ratios") ? "x" : "y";
      const yLabel = svg.querySelector(`[aria-label="${axis}-axis label"]`)?.textContent ?? "";
      assert.match(yLabel, /\(.+\)|bug/, `${what}: ${axis} axis labelled with its unit`);
      assert.ok(
        svg.querySelector('[aria-label="x-axis tick label"], [aria-label="fx-axis tick label"]'),
        `${what}: x axis`,
      );
    }
    // The SVG element each mark draws a datum with (facets nest them in a <g> per panel).
    const TAG: Record<string, string> = {
      line: "path",
      rect: "rect",
      bar: "rect",
      rule: "line",
      dot: "circle",
    };
    const marks = (id: string, label: string): unknown[] => [
      ...document.querySelectorAll(`section[data-plot="${id}"] svg [aria-label="${label}"] ${TAG[label]}`),
    ];
    // Two files x every design (the fixtures run --wp all).
    const series = 2 * designNames().length;
    // Every measured iteration of every call is a dot (3 iterations; GET, CLEAR and their total).
    assert.equal(marks("get-dirty-log", "dot").length, series * 3 * 3);
    assert.equal(marks("guest-throughput", "dot").length, series * 3);
    assert.equal(marks("ns-per-page", "bar").length, series);
    // A CI per bar and the one kernel figure for the runs' condition (vCPUs writing: 50 ns).
    assert.equal(marks("ns-per-page", "rule").length, series + 1);
    assert.match(
      document.querySelector('section[data-plot="ns-per-page"]')!.textContent ?? "",
      /kernel, 2 vCPUs writing: 50 ns/,
    );
    // The answer first: a ratio per design but the baseline, per call and guest throughput, per file.
    const figureCells = [...document.querySelectorAll("table.ratios tbody tr td:nth-child(2)")].map(
      (td) => td.textContent ?? "",
    );
    const migrateRows = figureCells.filter((f) => f.startsWith("migration "));
    const ratioRows = figureCells.length - migrateRows.length;
    assert.equal(ratioRows, 2 * (designNames().length - 1) * 4);
    assert.equal(marks("ratios", "dot").length, ratioRows);
    // migrate-perf: lockless/locked per metric, in the table and the forest plot; at least the three
    // metrics every completed migration has.
    for (const f of ["migration total time", "migration downtime", "migration rounds"])
      assert.ok(migrateRows.includes(f), `ratio table: ${f}`);
    assert.equal(marks("migrate-perf-ratios", "dot").length, migrateRows.length);
    assert.equal(
      marks("migrate-perf-ratios", "rule").length,
      migrateRows.length + 1,
      "a CI bar per row and 1.0",
    );
    // Every measured migration a dot, a median tick and a CI bar per design (locked, lockless).
    for (const id of ["migrate-perf-total-time", "migrate-perf-rounds"]) {
      assert.equal(marks(id, "dot").length, 2 * MIGRATE_PERF_RUNS, `${id}: dots`);
      assert.equal(marks(id, "rule").length, 2, `${id}: CI bars`);
    }
    assert.equal(marks("migrate-perf-downtime", "dot").length, 2 * MIGRATE_PERF_RUNS);
    const swatches = (id: string): string[] =>
      [
        ...document.querySelectorAll(
          `section[data-plot="${id}"] [class*=swatch] > span, section[data-plot="${id}"] span[class*=swatch]`,
        ),
      ].map((e) => e.textContent?.trim() ?? "");
    assert.deepEqual(swatches("decomposition"), [
      "mmu_lock wait",
      "harvest + write-protect",
      "remote TLB flush",
    ]);
    assert.equal(
      marks("scale-sweep", "line").length,
      designNames().length,
      "one line per design over the two sizes",
    );
    // kernbench: per mode, logging off and every design that has the mode; 2 runs each.
    const cells = [MmuMode.Tdp, MmuMode.Shadow]
      .map((m) => 1 + designNames().filter((d) => designSupportsMode(d, m)).length)
      .reduce((a, b) => a + b);
    assert.equal(marks("kernbench", "bar").length, cells);
    assert.equal(marks("kernbench", "dot").length, 2 * cells);
    assert.ok(marks("catalog", "bar").length >= 5);
    assert.equal(marks("migrate-remaining", "line").length, 2);
    assert.equal(marks("migrate-downtime", "bar").length, 2 * 2);
  },
);

test("report refuses a bad file with exit 2 and writes nothing", async () => {
  const out = join(tmp, "never.html");
  const r = await runKvmmu(["report", join(tmp, "nope.json"), "-o", out]);
  assert.equal(r.code, 2);
  assert.match(r.err, /nope\.json: cannot read/);
  assert.throws(() => readFileSync(out));
  const r2 = await runKvmmu(["report", join(tmp, "nope.json")]);
  assert.equal(r2.code, 2);
  assert.match(r2.err, /--output/);
});

test("report: migrate-perf's downtime limit drawn where it falls near the runs, else named off the scale", async () => {
  const files = await reportFiles();
  const loaded = loadResult(files.find((f) => f.endsWith("rep-migperf.json"))!);
  const mp = loaded.doc;
  assert.ok(mp.command === "migrate-perf");
  const downtime = (limit: number): string => {
    const doc = { ...mp, options: { ...mp.options, downtimeLimitMs: limit } };
    const spec = plotSpecs([{ file: loaded.file, doc }]).find((p) => p.id === "migrate-perf-downtime");
    assert.ok(spec, "downtime plot");
    return renderPlot(spec);
  };
  const median = mp.results["locked"].stats.downtimeMs!.median;
  const near = Math.max(1, Math.round(median));
  const html = downtime(near);
  assert.match(html, new RegExp(`limit ${near} ms<`), "the limit drawn and labelled");
  assert.match(html, new RegExp(`downtime limit ${near} ms\\. From:`));
  const far = Math.round(median * 100) + 1000;
  const off = downtime(far);
  assert.doesNotMatch(off, new RegExp(`limit ${far} ms<`), "no line far off the scale");
  assert.match(off, new RegExp(`downtime limit ${far} ms \\(off the scale where not drawn\\)`));
});

test(
  "report in headless Chromium: no console error, every plot drawn, screenshot saved",
  { skip: browserSkip, timeout: 240_000 },
  async () => {
    await withReportPage(await reportHtml(), { width: 900, height: 1200 }, async (page) => {
      for (const id of ALL_PLOTS) {
        const svg = page.locator(`section[data-plot="${id}"] figure > svg`);
        assert.equal(await svg.count(), 1, `plot ${id} missing`);
        const box = await svg.boundingBox();
        assert.ok(box && box.width > 300 && box.height > 100, `plot ${id} drawn at ${JSON.stringify(box)}`);
        const marks = await page
          .locator(`section[data-plot="${id}"] svg :is(path, rect, circle)`)
          .evaluateAll(
            (els) =>
              els.filter((e) => (e as unknown as { getBBox(): { width: number } }).getBBox().width > 0)
                .length,
          );
        assert.ok(marks > 0, `plot ${id}: no visible marks`);
      }
      // The rendered text: the ratio table leads, and no axis title overlaps another text.
      const table = await page.locator("table.ratios").boundingBox();
      const firstPlot = await page.locator("section.plot").first().boundingBox();
      assert.ok(table && firstPlot && table.y < firstPlot.y, "the ratio table comes first");
      assert.ok((await page.locator("table.ratios tbody tr").count()) > 0, "ratio rows");
      for (const id of ALL_PLOTS) {
        const overlaps = await page
          .locator(`section[data-plot="${id}"] figure > svg`)
          .evaluate((svg: unknown): string[] => {
            type Box = { left: number; right: number; top: number; bottom: number };
            type El = { textContent: string | null; getBoundingClientRect(): Box };
            const all = (sel: string): El[] =>
              Array.from((svg as { querySelectorAll(s: string): ArrayLike<El> }).querySelectorAll(sel));
            const titles = all('[aria-label$="axis label"] text');
            const texts = all("text").filter(
              (t) => !titles.includes(t) && (t.textContent ?? "").trim() !== "",
            );
            const hit = (a: Box, b: Box): boolean =>
              a.left < b.right - 1 && b.left < a.right - 1 && a.top < b.bottom - 1 && b.top < a.bottom - 1;
            return titles.flatMap((t) =>
              texts
                .filter((x) => hit(t.getBoundingClientRect(), x.getBoundingClientRect()))
                .map((x) => `"${t.textContent}" over "${x.textContent}"`),
            );
          });
        assert.deepEqual(overlaps, [], `plot ${id}: axis titles overlap text`);
      }
      const nsText = await page.locator('section[data-plot="ns-per-page"] figure > svg').textContent();
      assert.match(nsText ?? "", /kernel, 2 vCPUs writing: 50 ns/);
      assert.match((await page.locator('section[data-plot="ratios"] figure > svg').textContent()) ?? "", /×/);
      const shot = join(tmp, "report.png");
      await page.screenshot({ path: shot, fullPage: true });
      assert.ok(statSync(shot).size > 10_000);
      process.stderr.write(`# report screenshot: ${shot}\n`);
    });
  },
);

/**
 * The report in a real browser: headless Chromium (Debian's chromium package) opens the HTML file,
 * no console error, no network request, every plot drawn at a real size; a screenshot is saved.
 * Without chromium the test skips, unless KVMMU_REQUIRE_BROWSER=1 (test/helpers/browser.ts).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync } from "node:fs";
import { join } from "node:path";
import { runKvmmu } from "../helpers/cli.js";
import { browserSkip, withReportPage } from "../helpers/browser.js";
import { ALL_PLOTS, reportFiles } from "./report_fixture.js";
import { tmp } from "./helpers.js";

test(
  "report in headless Chromium: no console error, every plot drawn, screenshot saved",
  { skip: browserSkip, timeout: 240_000 },
  async () => {
    const out = join(tmp, "browser-report.html");
    const r = await runKvmmu(["report", ...(await reportFiles()), "-o", out]);
    assert.equal(r.code, 0, r.err);
    await withReportPage(out, { width: 900, height: 1200 }, async (page) => {
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

/**
 * The report in a real browser: headless Chromium (Debian's chromium package) opens the HTML file,
 * no console error, no network request, every plot drawn at a real size; a screenshot is saved.
 * Without chromium the test skips, unless KVMMU_REQUIRE_BROWSER=1 (set by .ci/run): then it fails.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { chromium } from "playwright-core";
import { runKvmmu } from "../helpers/cli.js";
import { ALL_PLOTS, reportFiles } from "./report_fixture.js";
import { tmp } from "./helpers.js";

const CHROMIUM = process.env["KVMMU_CHROMIUM"] ?? "/usr/bin/chromium";
const required = process.env["KVMMU_REQUIRE_BROWSER"] === "1";
const present = existsSync(CHROMIUM);
const skip =
  !present && !required
    ? `${CHROMIUM} not found: apt-get install chromium (set KVMMU_REQUIRE_BROWSER=1 to fail instead)`
    : false;

test(
  "report in headless Chromium: no console error, every plot drawn, screenshot saved",
  { skip, timeout: 240_000 },
  async () => {
    assert.ok(present, `KVMMU_REQUIRE_BROWSER=1 but ${CHROMIUM} is missing`);
    const out = join(tmp, "browser-report.html");
    const r = await runKvmmu(["report", ...(await reportFiles()), "-o", out]);
    assert.equal(r.code, 0, r.err);
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    try {
      const page = await browser.newPage({ viewport: { width: 900, height: 1200 } });
      const errors: string[] = [];
      const requests: string[] = [];
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(m.text());
      });
      page.on("pageerror", (e) => errors.push(e.message));
      page.on("request", (q) => {
        if (!q.url().startsWith("file:")) requests.push(q.url());
      });
      await page.goto(pathToFileURL(out).href, { waitUntil: "load" });
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
      assert.deepEqual(errors, [], "console errors");
      assert.deepEqual(requests, [], "network requests");
    } finally {
      await browser.close();
    }
  },
);

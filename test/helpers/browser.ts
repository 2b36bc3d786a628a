/**
 * Headless Chromium for the tests that check the report in a real browser (Debian's chromium
 * package, through playwright-core). Without it those tests skip, unless
 * KVMMU_REQUIRE_BROWSER=1 (set by .ci/run): then they fail.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { chromium, type Page } from "playwright-core";

export const CHROMIUM = process.env["KVMMU_CHROMIUM"] ?? "/usr/bin/chromium";
const required = process.env["KVMMU_REQUIRE_BROWSER"] === "1";
const present = existsSync(CHROMIUM);

/** The `skip` option of a browser test. */
export const browserSkip: string | false =
  !present && !required
    ? `${CHROMIUM} not found: apt-get install chromium (set KVMMU_REQUIRE_BROWSER=1 to fail instead)`
    : false;

/**
 * Opens `file` in headless Chromium at `viewport`, runs `check` on the page, then asserts that
 * the page logged no console error and made no network request (the report is self-contained).
 */
export async function withReportPage(
  file: string,
  viewport: { width: number; height: number },
  check: (page: Page) => Promise<void>,
): Promise<void> {
  assert.ok(present, `KVMMU_REQUIRE_BROWSER=1 but ${CHROMIUM} is missing`);
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
    const page = await browser.newPage({ viewport });
    const errors: string[] = [];
    const requests: string[] = [];
    page.on("console", (m) => void (m.type() === "error" && errors.push(m.text())));
    page.on("pageerror", (e) => errors.push(e.message));
    page.on("request", (q) => void (!q.url().startsWith("file:") && requests.push(q.url())));
    await page.goto(pathToFileURL(file).href, { waitUntil: "load" });
    await check(page);
    assert.deepEqual(errors, [], "console errors");
    assert.deepEqual(requests, [], "network requests");
  } finally {
    await browser.close();
  }
}

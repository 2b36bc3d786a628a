/** `kvmmu report`: the HTML's structure, checked in Node with linkedom (axes, marks, series). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseHTML } from "linkedom";
import { runKvmmu } from "../helpers/cli.js";
import { ALL_PLOTS, reportFiles } from "./report_fixture.js";
import { tmp } from "./helpers.js";

/** The part of a DOM element the checks use (the project compiles without the DOM lib). */
interface El {
  textContent: string | null;
  getAttribute(name: string): string | null;
  querySelector(sel: string): El | null;
  querySelectorAll(sel: string): ArrayLike<El> & Iterable<El>;
}

test(
  "report: one self-contained HTML file with every plot, titled, labelled, with legend and caption",
  { timeout: 240_000 },
  async () => {
    const files = await reportFiles();
    const out = join(tmp, "report.html");
    const r = await runKvmmu(["report", ...files, "-o", out]);
    assert.equal(r.code, 0, r.err);
    assert.equal(r.out, "");
    const html = readFileSync(out, "utf8");
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
      const yLabel = svg.querySelector('[aria-label="y-axis label"]')?.textContent ?? "";
      assert.match(yLabel, /\(.+\)|bug/, `${what}: y axis labelled with its unit`);
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
    // Two files x two designs.
    assert.equal(marks("get-dirty-log", "line").length, 4);
    assert.equal(marks("get-dirty-log", "rect").length, 4, "a CI band per series");
    assert.equal(marks("guest-throughput", "line").length, 4);
    assert.equal(marks("ns-per-page", "bar").length, 4);
    // Both kernel reference lines.
    assert.equal(marks("ns-per-page", "rule").length, 4 + 2);
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
    assert.equal(marks("scale-sweep", "line").length, 2, "one line per design over the two sizes");
    // kernbench: 2 modes x 3 logging settings, 2 runs each.
    assert.equal(marks("kernbench", "bar").length, 6);
    assert.equal(marks("kernbench", "dot").length, 12);
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

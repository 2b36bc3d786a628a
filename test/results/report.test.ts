/** `kvmmu report`: the HTML's structure, checked in Node with linkedom (axes, marks, series). */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseHTML } from "linkedom";
import { runKvmmu } from "../helpers/cli.js";
import { ALL_PLOTS, reportFiles } from "./report_fixture.js";
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
      // The forest plot's rows name themselves: its unit is on the x axis.
      const axis = id === "ratios" ? "x" : "y";
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
    const ratioRows = document.querySelectorAll("table.ratios tbody tr").length;
    assert.equal(ratioRows, 2 * (designNames().length - 1) * 4);
    assert.equal(marks("ratios", "dot").length, ratioRows);
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

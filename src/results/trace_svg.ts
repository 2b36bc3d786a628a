/**
 * `kvmmu report` of a trace file (Trace Event Format, the JSON of `explore --trace` and of the
 * benchmarks' `--trace`): a self-contained SVG timeline, drawn here as text (no script). Time
 * runs down; each thread is a column, side by side; B/E and X slices are boxes (nested slices
 * indented), flows are arrows (the explorer's "no TLB flush": red, dashed, labelled), instants
 * are lines across their thread (or across every thread for a global one, such as the
 * explorer's violation) with their message. A long trace is drawn in one window: its first
 * WINDOW_EVENTS events.
 */
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { KvmError, einval } from "../errors.js";
import type { TraceEvent } from "../sync/trace_event.js";

export interface LoadedTrace {
  file: string;
  events: TraceEvent[];
  otherData: Record<string, unknown>;
}

/** Events of one window at most (a benchmark's trace holds millions). */
export const WINDOW_EVENTS = 1500;
const COL_MAX = 300;
const WIDTH = 860;
const TOP = 40;
const LEFT = 60;
const ROW = 16;
const MAX_HEIGHT = 6000;
/** Width of the strip a slice keeps left of what it encloses: its name runs down it. */
const INDENT = 14;

/** True when `json` is a trace file (an object with a traceEvents array). */
export function isTrace(json: unknown): json is { traceEvents: unknown[] } {
  return (
    typeof json === "object" &&
    json !== null &&
    Array.isArray((json as { traceEvents?: unknown }).traceEvents)
  );
}

/**
 * Reads `file` as a trace: null when it is JSON but no trace (a saved result); EINVAL when it is
 * not JSON, or a trace whose events lack a name or phase.
 */
export function readTrace(file: string): LoadedTrace | null {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code !== undefined)
      throw new KvmError(err.code === "ENOENT" ? "ENOENT" : "EIO", `${file}: cannot read: ${err.message}`);
    throw einval(file, `is not JSON (${err.message})`);
  }
  if (!isTrace(json)) return null;
  const events = json.traceEvents.filter(
    (e): e is TraceEvent =>
      typeof e === "object" &&
      e !== null &&
      typeof (e as TraceEvent).ph === "string" &&
      typeof (e as TraceEvent).name === "string" &&
      ((e as TraceEvent).ph === "M" || Number.isFinite((e as TraceEvent).ts)),
  );
  if (events.length !== json.traceEvents.length)
    throw einval(file, "traceEvents holds events without name, ph or ts");
  const other = (json as { otherData?: unknown }).otherData;
  return {
    file,
    events,
    otherData: typeof other === "object" && other !== null ? (other as Record<string, unknown>) : {},
  };
}

/** The timeline of one trace as a report section. */
export function timelineSection(t: LoadedTrace, i: number): string {
  const { svg, caption } = traceTimelineSvg(t);
  return `<section class="plot" data-trace="${i}"><figure><h2>Timeline: ${esc(basename(t.file))}</h2>${svg}<figcaption>${esc(caption)}</figcaption></figure></section>`;
}

function esc(s: string): string {
  return s.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
}

/** A stable light colour per name. */
function colour(name: string, light: number): string {
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return `hsl(${h % 360} 55% ${light}%)`;
}

function clip(s: string, px: number): string {
  const n = Math.max(0, Math.floor(px / 6.2));
  return s.length <= n ? s : `${s.slice(0, Math.max(0, n - 1))}…`;
}

interface Box {
  key: string;
  ts: number;
  end: number;
  depth: number;
  name: string;
  step: boolean;
  args?: Record<string, unknown>;
}

/** The window's events and its time range. */
function windowOf(events: TraceEvent[]): { evs: TraceEvent[]; t0: number; t1: number; total: number } {
  const timed = events.filter((e) => e.ph !== "M");
  const total = timed.length;
  const sorted = [...timed].sort((a, b) => a.ts - b.ts);
  const t0 = sorted.length ? sorted[0].ts : 0;
  const cut = sorted.length > WINDOW_EVENTS ? sorted[WINDOW_EVENTS - 1].ts : Infinity;
  // A slice still open at the cut is drawn to the end of the window.
  const evs = timed.filter((e) => e.ts <= cut);
  let t1 = t0;
  for (const e of evs) t1 = Math.max(t1, e.ts + (e.ph === "X" ? (e.dur ?? 0) : 0));
  return { evs, t0, t1: Math.max(t1, t0 + 1), total };
}

/** Slices (B/E pairs and X) as boxes, per thread key, with their nesting depth. */
function boxesOf(evs: TraceEvent[], t1: number): Box[] {
  const boxes: Box[] = [];
  const open = new Map<string, Box[]>();
  for (const e of evs) {
    const key = `${e.pid}/${e.tid}`;
    const st = open.get(key) ?? [];
    open.set(key, st);
    if (e.ph === "B") {
      const b: Box = { key, ts: e.ts, end: t1, depth: st.length, name: e.name, step: false, args: e.args };
      st.push(b);
      boxes.push(b);
    } else if (e.ph === "E") {
      const b = st.pop();
      if (b !== undefined) b.end = Math.min(e.ts, t1);
    } else if (e.ph === "X") {
      boxes.push({
        key,
        ts: e.ts,
        end: e.ts + (e.dur ?? 0),
        depth: st.length,
        name: e.name,
        step: true,
        args: e.args,
      });
    }
  }
  return boxes;
}

/** Thread keys in first-seen order, with their names from the metadata events. */
function threadsOf(events: TraceEvent[]): { keys: string[]; names: Map<string, string> } {
  const names = new Map<string, string>();
  const keys: string[] = [];
  for (const e of events) {
    const key = `${e.pid}/${e.tid}`;
    if (e.ph === "M") {
      if (e.name !== "thread_name") continue;
      const n = e.args?.["name"];
      names.set(key, typeof n === "string" ? n : key);
      if (!keys.includes(key)) keys.push(key);
    } else if (e.ph !== "C" && !keys.includes(key)) keys.push(key);
  }
  return { keys, names };
}

function argsText(a: Record<string, unknown> | undefined): string {
  if (a === undefined) return "";
  return Object.entries(a)
    .map(([k, v]) => `\n${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`)
    .join("");
}

/** The timeline of `t` as one <svg> element, and a caption saying what window it shows. */
export function traceTimelineSvg(t: LoadedTrace): { svg: string; caption: string } {
  const { evs, t0, t1, total } = windowOf(t.events);
  const all = threadsOf(t.events);
  const boxes = boxesOf(evs, t1);
  // Threads with no slice in the window (a metadata-only track) take no column.
  const keys = all.keys.filter((k) => boxes.some((b) => b.key === k));
  const names = all.names;
  const col = Math.min(COL_MAX, (WIDTH - LEFT - 10) / Math.max(1, keys.length));
  const xOf = (key: string): number => LEFT + keys.indexOf(key) * col;
  const minDur = Math.min(...boxes.filter((b) => b.step && b.end > b.ts).map((b) => b.end - b.ts), t1 - t0);
  const scale = Math.min(ROW / minDur, MAX_HEIGHT / (t1 - t0));
  const yOf = (ts: number): number => TOP + (ts - t0) * scale;
  const height = Math.ceil(yOf(t1)) + 30;
  const out: string[] = [];
  keys.forEach((k) => {
    out.push(
      `<text class="thread" x="${xOf(k) + 4}" y="${TOP - 12}" font-weight="600">${esc(clip(names.get(k) ?? k, col - 8))}</text>`,
    );
    out.push(`<line x1="${xOf(k)}" y1="${TOP - 4}" x2="${xOf(k)}" y2="${height - 20}" stroke="#ddd"/>`);
  });
  for (const b of boxes) {
    const x = xOf(b.key) + 2 + b.depth * INDENT;
    const w = Math.max(4, col - 4 - b.depth * INDENT);
    const y = yOf(b.ts);
    const h = Math.max(1, (b.end - b.ts) * scale - (b.step ? 1 : 0));
    const fill = b.step ? colour(b.name.split(" ")[0], 90) : colour(b.name, 80);
    // A step's name on its box; a function's down its left strip, beside the steps it encloses.
    const label = b.step
      ? h >= 11
        ? `<text x="${x + 3}" y="${y + 11}" font-size="10">${esc(clip(b.name, w - 6))}</text>`
        : ""
      : h >= 30
        ? `<text x="${x + 4}" y="${y + 3}" font-size="10" transform="rotate(90 ${x + 4} ${y + 3})">${esc(clip(b.name, h - 6))}</text>`
        : "";
    out.push(
      `<g class="${b.step ? "step" : "slice"}"><title>${esc(b.name + argsText(b.args))}</title><rect x="${x}" y="${y}" width="${w}" height="${h}" fill="${fill}" stroke="${b.step ? "none" : "#888"}" fill-opacity="${b.step ? 1 : 0.35}"/>${label}</g>`,
    );
  }
  out.push(...flowsSvg(evs, xOf, yOf, col), ...instantsSvg(evs, keys, xOf, yOf, col));
  const axis = [0, 0.25, 0.5, 0.75, 1].map((f) => {
    const ts = t0 + f * (t1 - t0);
    return `<text x="4" y="${yOf(ts) + 4}" font-size="10" fill="#666">${+(ts - t0).toFixed(1)} µs</text>`;
  });
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="system-ui, sans-serif" font-size="12"><defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#1565c0"/></marker><marker id="arrow-red" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#c62828"/></marker></defs><rect width="100%" height="100%" fill="white"/>${axis.join("")}${out.join("")}</svg>`;
  const shown =
    evs.length < total ? `the first ${evs.length} of ${total} events (one window)` : `all ${total} events`;
  const what =
    typeof t.otherData["scenario"] === "string" ? ` of scenario ${String(t.otherData["scenario"])}` : "";
  return {
    svg,
    caption: `${basename(t.file)}: timeline${what}, ${shown}, ${+(t1 - t0).toFixed(1)} µs; time runs down, one column per thread; hover a box for its fields.`,
  };
}

function flowsSvg(
  evs: TraceEvent[],
  xOf: (k: string) => number,
  yOf: (ts: number) => number,
  col: number,
): string[] {
  const starts = new Map<number, TraceEvent>();
  const out: string[] = [];
  for (const e of evs) {
    if (e.ph === "s" && e.id !== undefined) starts.set(e.id, e);
    if (e.ph !== "f" || e.id === undefined) continue;
    const s = starts.get(e.id);
    if (s === undefined) continue;
    const [x1, y1] = [xOf(`${s.pid}/${s.tid}`) + col / 2, yOf(s.ts) + 6];
    const [x2, y2] = [xOf(`${e.pid}/${e.tid}`) + col / 2, yOf(e.ts) + 6];
    // A change whose TLB flush never came (explore_trace.ts): red, dashed, labelled.
    const stale = e.cat === "stale-tlb";
    const [cls, stroke, marker] = stale
      ? ["flow no-flush", "#c62828", "arrow-red"]
      : ["flow", "#1565c0", "arrow"];
    const label = stale
      ? `<text x="${(x1 + x2) / 2 + 4}" y="${(y1 + y2) / 2}" font-size="11" fill="${stroke}">${esc(e.name)}</text>`
      : "";
    out.push(
      `<g class="${cls}"><title>${esc(e.name)}</title><line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="${stroke}" stroke-width="1.5"${stale ? ` stroke-dasharray="5 3"` : ""} marker-end="url(#${marker})"/>${label}</g>`,
    );
  }
  return out;
}

function instantsSvg(
  evs: TraceEvent[],
  keys: string[],
  xOf: (k: string) => number,
  yOf: (ts: number) => number,
  col: number,
): string[] {
  const out: string[] = [];
  // Instants at one time on one track (the explorer's stale TLB hit and missed copy): labels stacked.
  const seen = new Map<string, number>();
  for (const e of evs) {
    if (e.ph !== "i") continue;
    const global = e.s === "g" || e.s === "p";
    const key = `${e.pid}/${e.tid}`;
    const x1 = global || !keys.includes(key) ? LEFT : xOf(key);
    const x2 = global || !keys.includes(key) ? LEFT + keys.length * col : x1 + col;
    const y = yOf(e.ts);
    const msg = typeof e.args?.["invariant"] === "string" ? `${e.name}: ${e.args["invariant"]}` : e.name;
    const red = e.name === "violation";
    const at = `${global ? "g" : key}@${e.ts}`;
    const n = seen.get(at) ?? 0;
    seen.set(at, n + 1);
    const ty = y + 13 + 12 * n;
    out.push(
      `<g class="${red ? "violation" : "instant"}"><title>${esc(e.name + argsText(e.args))}</title><line x1="${x1}" y1="${y}" x2="${x2}" y2="${y}" stroke="${red ? "#c62828" : "#ef6c00"}" stroke-width="${red ? 3 : 2}"/><text x="${x1 + 3}" y="${ty}" font-size="11" fill="${red ? "#c62828" : "#ef6c00"}">${esc(clip(msg, x2 - x1 - 6))}</text></g>`,
    );
  }
  return out;
}

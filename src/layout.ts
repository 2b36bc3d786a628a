/**
 * Declared layouts of the structures that live in shared memory.
 *
 * Every shared structure is declared once, with its fields and what protects each of them; the
 * offsets and index functions come from that declaration and nothing else computes
 * `row * STRIDE + FIELD` by hand. docs/locking.md carries the table that `layoutsMarkdown()`
 * prints (a test keeps the two equal).
 *
 * A *block* is a run of words at fixed offsets (the VM control words): `CTL.notifier_seq` is an
 * offset. A *row* structure has one row per object (a shadow page, a memslot, a vCPU):
 * `SP.gfn(sp)` is the index of that field of that row. The index functions are tiny closures
 * over constants, which V8 inlines at their call sites, so they cost what the arithmetic did.
 */

/**
 * KVM_MAX_VCPUS: the vCPU rows every per-vCPU layout declares, here at the bottom so that the
 * layouts of src/sync (the trace rings) and of kvm_host.ts share it (kvm_host.ts re-exports it).
 */
export const KVM_MAX_VCPUS = 64;

/** One field: how many words it takes (default 1), what protects it, and what it is. */
export interface FieldDecl {
  readonly words?: number;
  /** The lock, ordering rule or ownership that protects the field (docs/locking.md). */
  readonly by: string;
  readonly doc: string;
}

export interface FieldInfo {
  readonly name: string;
  readonly offset: number;
  readonly words: number;
  readonly by: string;
  readonly doc: string;
}

/** What every declared layout can say about itself. */
export interface LayoutInfo {
  /** The KVM structure it stands for, e.g. `struct kvm_mmu_page`. */
  readonly struct: string;
  /** The array that holds it, e.g. `kvm.spHdr`. */
  readonly array: string;
  /** Words per row (rows) or in all (blocks). */
  readonly stride: number;
  /** Rows: the word where row 0 starts (after a block of other words in the same array). */
  readonly base: number;
  readonly rows: boolean;
  readonly fields: readonly FieldInfo[];
}

export type Block<F extends string> = { readonly [K in F]: number } & {
  readonly layout: LayoutInfo;
  /** Words the block takes. */
  readonly WORDS: number;
};

export type Rows<F extends string> = { readonly [K in F]: (row: number) => number } & {
  readonly layout: LayoutInfo;
  /** Words per row. */
  readonly STRIDE: number;
  /** Index of the first word of a row (for `subarray` of a whole row). */
  readonly row: (row: number) => number;
};

const registry: LayoutInfo[] = [];

function place(fields: Record<string, FieldDecl>, minStride: number): [FieldInfo[], number] {
  const out: FieldInfo[] = [];
  let offset = 0;
  for (const [name, f] of Object.entries(fields)) {
    const words = f.words ?? 1;
    if (!Number.isInteger(words) || words < 1) throw new Error(`layout: ${name}: bad word count ${words}`);
    out.push({ name, offset, words, by: f.by, doc: f.doc });
    offset += words;
  }
  if (minStride !== 0 && minStride < offset)
    throw new Error(`layout: stride ${minStride} < ${offset} words of fields`);
  return [out, Math.max(minStride, offset)];
}

/** Declares a block of words: each field's value is its offset. */
export function defineBlock<F extends string>(
  struct: string,
  array: string,
  fields: Record<F, FieldDecl>,
  opts: { words?: number } = {},
): Block<F> {
  const [infos, words] = place(fields, opts.words ?? 0);
  const layout: LayoutInfo = { struct, array, stride: words, base: 0, rows: false, fields: infos };
  registry.push(layout);
  const o: Record<string, unknown> = { layout, WORDS: words };
  for (const f of infos) o[f.name] = f.offset;
  return Object.freeze(o) as Block<F>;
}

/** Declares a row structure: each field's value maps a row number to the field's index. */
export function defineRows<F extends string>(
  struct: string,
  array: string,
  fields: Record<F, FieldDecl>,
  opts: { stride?: number; base?: number } = {},
): Rows<F> {
  const [infos, stride] = place(fields, opts.stride ?? 0);
  const base = opts.base ?? 0;
  if (!Number.isInteger(base) || base < 0) throw new Error(`layout: ${struct}: bad base ${base}`);
  const layout: LayoutInfo = { struct, array, stride, base, rows: true, fields: infos };
  registry.push(layout);
  const o: Record<string, unknown> = { layout, STRIDE: stride, row: (r: number) => base + r * stride };
  for (const f of infos) {
    const off = base + f.offset;
    o[f.name] = (r: number) => r * stride + off;
  }
  return Object.freeze(o) as Rows<F>;
}

/** The field at word `offset` of a row (or block) of `l`: "mode", "sptes[3]", or "word N". */
export function fieldAt(l: LayoutInfo, offset: number): string {
  for (const f of l.fields) {
    if (offset >= f.offset && offset < f.offset + f.words)
      return f.words === 1 ? f.name : `${f.name}[${offset - f.offset}]`;
  }
  return `word ${offset}`;
}

/** Every layout declared so far, in declaration order. */
export function declaredLayouts(): readonly LayoutInfo[] {
  return registry;
}

/** The field table of docs/locking.md. */
export function layoutsMarkdown(layouts: readonly LayoutInfo[] = registry): string {
  const lines: string[] = [];
  for (const l of layouts) {
    const from = l.base !== 0 ? ` from word ${l.base}` : "";
    const shape = l.rows ? `one row of ${l.stride} words per object${from}` : `${l.stride} words`;
    lines.push(`### ${l.struct} (\`${l.array}\`, ${shape})`, "");
    lines.push("| field | offset | words | protected by | what |", "| --- | --- | --- | --- | --- |");
    for (const f of l.fields) {
      lines.push(`| \`${f.name}\` | ${f.offset} | ${f.words} | ${f.by} | ${f.doc} |`);
    }
    lines.push("");
  }
  return lines.join("\n");
}

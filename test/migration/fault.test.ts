/**
 * The fault-injection wrapper over a plain stream: it passes frames through until armed (except
 * bad-version, which rewrites the header), then damages exactly one frame as its kind says.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import { FaultInjector, FaultKind } from "../../src/migration/fault.js";
import {
  ByteReader,
  decodeRam,
  encodeHeader,
  encodeSection,
  jsonPayload,
  MIG_VERSION,
  RamBuilder,
  readHeader,
  readSection,
  Sec,
  SectionWriter,
} from "../../src/migration/stream.js";

const ALL = [Sec.Config, Sec.Ram, Sec.Vcpu, Sec.Eof];

function ramPayload(): Buffer {
  const b = new RamBuilder(4);
  const page = new Uint8Array(4096).fill(7);
  b.add(0, page);
  b.add(4096, page);
  return b.take();
}

/** Writes header, config, ram, (arm), ram, vcpu through the wrapper; returns what came out. */
async function through(kind: FaultKind): Promise<{ bytes: Buffer; inj: FaultInjector }> {
  const inner = new PassThrough();
  const chunks: Buffer[] = [];
  inner.on("data", (c: Buffer) => chunks.push(c));
  const inj = new FaultInjector(inner, kind);
  const w = new SectionWriter(inj);
  await w.raw(encodeHeader());
  await w.section(Sec.Config, jsonPayload({ x: 1 }));
  await w.section(Sec.Ram, ramPayload());
  inj.arm();
  await w.section(Sec.Ram, ramPayload());
  await w.section(Sec.Vcpu, jsonPayload({ vcpus: [] }));
  inj.end();
  await new Promise((r) => inner.once("end", r));
  return { bytes: Buffer.concat(chunks), inj };
}

/** Reads the stream back as a destination would: the sections, or the error it fails with. */
async function readBack(bytes: Buffer): Promise<{ types: number[]; error: string | null }> {
  const src = new PassThrough();
  const r = new ByteReader(src);
  src.end(bytes);
  const types: number[] = [];
  try {
    await readHeader(r);
    for (let id = 1; id <= 4; id++) {
      const s = await readSection(r, id, ALL);
      if (s.type === Sec.Ram) decodeRam(s.payload, id, () => true);
      types.push(s.type);
    }
    return { types, error: null };
  } catch (e) {
    return { types, error: (e as { code: string }).code };
  }
}

test("kill-destination passes every frame through unchanged", async () => {
  const { bytes, inj } = await through("kill-destination");
  const clean = Buffer.concat([
    encodeHeader(),
    encodeSection(Sec.Config, 1, jsonPayload({ x: 1 })),
    encodeSection(Sec.Ram, 2, ramPayload()),
    encodeSection(Sec.Ram, 3, ramPayload()),
    encodeSection(Sec.Vcpu, 4, jsonPayload({ vcpus: [] })),
  ]);
  assert.ok(bytes.equals(clean));
  assert.equal(inj.injected, 0);
  assert.deepEqual(await readBack(bytes), {
    types: ALL.slice(0, 2).concat([Sec.Ram, Sec.Vcpu]),
    error: null,
  });
});

for (const [kind, code, before] of [
  ["bad-version", "EPROTONOSUPPORT", 0],
  ["flip", "EBADMSG", 2], // the armed RAM frame: its CRC no longer matches
  ["bad-flag", "EPROTO", 2], // a valid frame whose first page record has an unknown flag
  ["truncate", "ENODATA", 2], // half the armed RAM frame, then the link is cut
  ["bad-section", "EPROTO", 3], // an unknown section where the vCPU state was due
] as const)
  test(`${kind}: one frame damaged after the ones before it; the reader fails with ${code}`, async () => {
    const { bytes, inj } = await through(kind);
    assert.equal(inj.injected, 1);
    const back = await readBack(bytes);
    assert.equal(back.error, code);
    assert.equal(back.types.length, before, `sections read before the damage: ${back.types.join(",")}`);
    if (kind === "bad-version") assert.equal(bytes.readUInt32BE(4), MIG_VERSION + 98);
  });

test("drop-link: nothing is cut before postcopy-run; the 8th RAM frame after it is cut in half and the link destroyed", async () => {
  const inner = new PassThrough();
  const chunks: Buffer[] = [];
  inner.on("data", (c: Buffer) => chunks.push(c));
  const closed = new Promise((r) => inner.once("close", r));
  const inj = new FaultInjector(inner, "drop-link");
  const w = new SectionWriter(inj);
  const frame = encodeSection(Sec.Ram, 1, ramPayload()).length;
  await w.raw(encodeHeader());
  // Pre-copy frames, however many, are never cut.
  for (let i = 0; i < 10; i++) await w.section(Sec.Ram, ramPayload());
  await w.section(Sec.Postcopy, Buffer.alloc(0));
  for (let i = 0; i < 7; i++) await w.section(Sec.Ram, ramPayload());
  assert.equal(inj.injected, 0);
  await w.section(Sec.Ram, ramPayload()).catch(() => {});
  await closed;
  assert.equal(inj.injected, 1);
  const n = Buffer.concat(chunks).length;
  const whole = 8 + 17 * frame + 13;
  assert.ok(n >= whole && n < whole + frame, `${n} bytes: the 8th RAM frame must not get through whole`);
  // The link is gone: the next write fails as a dropped connection does.
  await assert.rejects(w.section(Sec.Ram, ramPayload()), /ECONNRESET/);
});

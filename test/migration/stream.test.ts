/** The migration stream's decoder: each kind of damage is refused with an error naming it. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { PassThrough } from "node:stream";
import {
  ByteReader,
  decodeRam,
  encodeHeader,
  encodeSection,
  MigrationError,
  RAM_PAGE,
  RamBuilder,
  readHeader,
  readSection,
  Sec,
  writeRecordHeader,
} from "../../src/migration/stream.js";

const KNOWN = [Sec.Config, Sec.Ram, Sec.Eof];

function reader(bytes: Buffer, end = true): ByteReader {
  const p = new PassThrough();
  const r = new ByteReader(p);
  p.write(bytes);
  if (end) p.end();
  return r;
}

async function fails(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof MigrationError, String(e));
    assert.equal(e.code, code);
    assert.match(e.message, re);
    return true;
  });
}

function ramPayload(): Buffer {
  const b = new RamBuilder(4);
  const page = new Uint8Array(4096);
  page[7] = 9;
  assert.equal(b.add(0x3000, page), false);
  assert.equal(b.add(0x5000, new Uint8Array(4096)), true, "an all-zero page is a ZERO record");
  return b.take();
}

test("stream: a good header and section round-trip", async () => {
  const payload = ramPayload();
  assert.equal(payload.length, 8 + 4096 + 8, "a zero record carries no page");
  const r = reader(Buffer.concat([encodeHeader(), encodeSection(Sec.Ram, 1, payload)]));
  await readHeader(r);
  const s = await readSection(r, 1, KNOWN);
  assert.equal(s.type, Sec.Ram);
  const recs = decodeRam(s.payload, 1, (gpa) => gpa < 0x10000);
  assert.deepEqual(
    recs.map((x) => [x.gpa, x.data === null ? null : x.data[7]]),
    [
      [0x3000, 9],
      [0x5000, null],
    ],
  );
});

test("stream: truncated stream", async () => {
  const full = Buffer.concat([encodeHeader(), encodeSection(Sec.Ram, 1, ramPayload())]);
  const r = reader(full.subarray(0, 500));
  await readHeader(r);
  await fails(readSection(r, 1, KNOWN), "ENODATA", /truncated stream: section 1 \(ram, 4112 bytes\)/);
});

test("stream: a flipped byte fails the section checksum", async () => {
  const sec = encodeSection(Sec.Ram, 1, ramPayload());
  sec[100] ^= 1;
  await fails(readSection(reader(sec), 1, KNOWN), "EBADMSG", /bad checksum in section 1 \(ram\)/);
});

test("stream: unknown section type, wrong section id", async () => {
  await fails(
    readSection(reader(encodeSection(0x7e, 1, Buffer.alloc(3))), 1, KNOWN),
    "EPROTO",
    /unknown section type 0x7e/,
  );
  await fails(
    readSection(reader(encodeSection(Sec.Ram, 5, Buffer.alloc(0))), 4, KNOWN),
    "EPROTO",
    /section id 5 where 4/,
  );
});

test("stream: version mismatch and bad magic", async () => {
  await fails(readHeader(reader(encodeHeader(7))), "EPROTONOSUPPORT", /stream version 7/);
  await fails(readHeader(reader(Buffer.from("GARBAGE!"))), "EPROTO", /bad magic/);
});

test("stream: unknown page flag and out-of-range address", () => {
  const b = Buffer.alloc(8);
  writeRecordHeader(b, 0, 0x2000, 0x40);
  assert.throws(() => decodeRam(b, 3, () => true), /EPROTO: section 3 \(ram\): unknown page flags 0x40/);
  const c = Buffer.alloc(8 + 4096);
  writeRecordHeader(c, 0, 0x100000, RAM_PAGE);
  assert.throws(() => decodeRam(c, 4, (gpa) => gpa < 0x100000), /EFAULT: .*address 0x100000 is outside/);
  assert.throws(() => decodeRam(c.subarray(0, 100), 4, () => true), /EBADMSG: .*has 92 of 4096 bytes/);
});

test("stream: a peer that breaks the connection", async () => {
  const p = new PassThrough();
  const r = new ByteReader(p);
  const pending = readHeader(r);
  p.destroy(new Error("reset by peer"));
  await fails(pending, "ECONNRESET", /went away/);
});

test("the idle timeout waits again while busy() reports other activity (multifd channels), then fails", async () => {
  const p = new PassThrough();
  const r = new ByteReader(p);
  let asked = 0;
  r.idle = { ms: 20, phase: () => "active", busy: () => ++asked <= 3 };
  await fails(r.read(4, "a section header"), "ETIMEDOUT", /no data from the peer in 20 ms \(phase active/);
  assert.equal(asked, 4, "three busy periods waited out, the fourth expiry fails");
  // Data that arrives while the channels keep it alive is read.
  const q = new PassThrough();
  const r2 = new ByteReader(q);
  let n = 0;
  r2.idle = {
    ms: 20,
    phase: () => "active",
    busy: () => {
      if (++n === 2) q.write(Buffer.from([1, 2, 3, 4]));
      return true;
    },
  };
  assert.deepEqual([...(await r2.read(4, "a section header"))], [1, 2, 3, 4]);
});

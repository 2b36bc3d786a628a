/** The software TLB's entries: tags, write tags, frame bases (both widths), invalidation. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { SoftTlb, TLB_INVALID } from "../../src/vcpu/tlb.js";
import { PAGE_WORDS } from "../../src/kvm_host.js";

test("tlb: fill, lookup, invlpg, flush; the write tag only for writable translations", () => {
  const tlb = new SoftTlb(4, 1 << 20);
  assert.ok(tlb.base instanceof Int32Array, "small guest memory: int32 bases");
  tlb.fill(3, 40, true);
  tlb.fill(4, 41, false);
  assert.equal(tlb.lookup(3), (40 << 1) | 1);
  assert.equal(tlb.lookup(4), 41 << 1);
  assert.equal(tlb.lookup(3 + 16), -1, "same set, other gfn");
  assert.equal(tlb.tag[3], 4, "tag gfn + 1");
  assert.equal(tlb.wtag[4], TLB_INVALID, "read-only: no write tag");
  assert.equal(tlb.base[3], 40 * PAGE_WORDS);
  assert.deepEqual(tlb.writableEntries(), [{ gfn: 3, pfn: 40 }]);
  tlb.invalidate(3 + 16);
  assert.equal(tlb.lookup(3), (40 << 1) | 1, "INVLPG of another gfn of the set leaves it");
  tlb.invalidate(3);
  assert.equal(tlb.lookup(3), -1);
  assert.equal(tlb.wtag[3], TLB_INVALID);
  tlb.flush();
  assert.equal(tlb.lookup(4), -1);
  assert.equal(tlb.flushes, 1);
});

test("tlb: frames past 8 GiB keep their base in a Uint32Array (no int32 wrap)", () => {
  const tlb = new SoftTlb(4, 2 ** 31 + PAGE_WORDS * 4);
  assert.ok(tlb.base instanceof Uint32Array);
  const pfn = 2 ** 21 + 2; // its first word is 2^31 + 2048
  tlb.fill(5, pfn, true);
  assert.equal(tlb.base[5], pfn * PAGE_WORDS);
  assert.equal(tlb.lookup(5), (pfn << 1) | 1);
  assert.deepEqual(tlb.writableEntries(), [{ gfn: 5, pfn }]);
});

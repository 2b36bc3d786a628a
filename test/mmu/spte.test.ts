import { KVM_HPAGE_GFN_SHIFT, KVM_PAGES_PER_HPAGE } from "../../src/kvm_host.js";
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  is_large_pte,
  is_last_spte,
  is_shadow_present_pte,
  is_writable_leaf,
  is_writable_pte,
  make_link_spte,
  PT64_INDEX,
  PT_DIRECTORY_LEVEL,
  PT_PAGE_SIZE_MASK,
  PT_PAGE_TABLE_LEVEL,
  PT_PDPE_LEVEL,
  PT_PRESENT_MASK,
  PT_USER_MASK,
  PT_WRITABLE_MASK,
  PT64_ROOT_LEVEL,
  spte_has_volatile_bits,
  spte_is_locklessly_modifiable,
  SPTE_HOST_WRITEABLE,
  SPTE_MAX_PFN,
  SPTE_MMU_WRITEABLE,
  SPTE_PFN_SHIFT,
  spte_to_child_sp,
  spte_to_pfn,
} from "../../src/mmu/spte.js";

const P = PT_PRESENT_MASK;
const W = PT_WRITABLE_MASK;
const U = PT_USER_MASK;
const HW = SPTE_HOST_WRITEABLE;
const MW = SPTE_MMU_WRITEABLE;
const L = PT_PAGE_SIZE_MASK;

/** A leaf spte as set_spte builds it (mmu.ts): pfn in bits 8..31. */
function leaf(pfn: number, bits: number): number {
  return (pfn << SPTE_PFN_SHIFT) | bits;
}

const PFNS = [0, 1, 2, 511, 512, 0x7fffff, 0x800000, 0xabcdef, SPTE_MAX_PFN];

test("spte: pfn field round-trips for every pfn up to SPTE_MAX_PFN, through an Int32Array cell", () => {
  assert.equal(SPTE_MAX_PFN, 2 ** 24 - 1);
  const cell = new Int32Array(1);
  for (const pfn of PFNS) {
    for (const bits of [0, P, P | W | HW | MW, P | L | HW | MW | U]) {
      const s = leaf(pfn, bits);
      cell[0] = s;
      assert.equal(spte_to_pfn(cell[0]), pfn, `pfn 0x${pfn.toString(16)} bits 0x${bits.toString(16)}`);
      // the flag bits are not disturbed by the pfn, even when the pfn sets the sign bit
      assert.equal(cell[0] & 0xff, bits);
    }
  }
});

test("spte: presence, W, large predicates look at their bit only", () => {
  for (const pfn of PFNS) {
    assert.equal(is_shadow_present_pte(leaf(pfn, 0)), false);
    assert.equal(is_shadow_present_pte(leaf(pfn, P)), true);
    assert.equal(is_writable_pte(leaf(pfn, P)), false);
    assert.equal(is_writable_pte(leaf(pfn, P | W)), true);
    assert.equal(is_large_pte(leaf(pfn, P | W)), false);
    assert.equal(is_large_pte(leaf(pfn, P | L)), true);
  }
  assert.equal(is_shadow_present_pte(0), false);
});

test("spte: is_writable_leaf needs PRESENT, W and HOST_WRITEABLE together", () => {
  for (const pfn of PFNS) {
    for (let bits = 0; bits < 256; bits++) {
      const want = (bits & P) !== 0 && (bits & W) !== 0 && (bits & HW) !== 0;
      assert.equal(is_writable_leaf(leaf(pfn, bits)), want, `pfn ${pfn} bits 0x${bits.toString(16)}`);
    }
  }
});

test("spte: spte_is_locklessly_modifiable needs HOST_WRITEABLE and MMU_WRITEABLE, W does not matter", () => {
  for (const pfn of PFNS) {
    for (let bits = 0; bits < 256; bits++) {
      const want = (bits & HW) !== 0 && (bits & MW) !== 0;
      const s = leaf(pfn, bits);
      assert.equal(spte_is_locklessly_modifiable(s), want, `pfn ${pfn} bits 0x${bits.toString(16)}`);
      // without hardware A/D bits, volatile == locklessly modifiable
      assert.equal(spte_has_volatile_bits(s), want);
    }
  }
  // a read-only spte the fast path may make writable again
  assert.equal(spte_is_locklessly_modifiable(leaf(5, P | HW | MW)), true);
  // pt_protect cleared MMU_W: the fast path must not touch it
  assert.equal(spte_is_locklessly_modifiable(leaf(5, P | W | HW)), false);
});

test("spte: is_last_spte: any spte at level 1, only large ones above", () => {
  assert.equal(is_last_spte(leaf(7, P | W | HW | MW), PT_PAGE_TABLE_LEVEL), true);
  assert.equal(is_last_spte(leaf(7, P), PT_PAGE_TABLE_LEVEL), true);
  assert.equal(is_last_spte(leaf(7, P | L | HW | MW), PT_DIRECTORY_LEVEL), true);
  assert.equal(is_last_spte(leaf(7, P | L), PT_PDPE_LEVEL), true);
  for (const level of [PT_DIRECTORY_LEVEL, PT_PDPE_LEVEL, PT64_ROOT_LEVEL]) {
    assert.equal(is_last_spte(make_link_spte(3), level), false, `link at level ${level}`);
    assert.equal(is_last_spte(leaf(7, P | W | HW | MW), level), false, `4k-style spte at level ${level}`);
  }
});

test("spte: make_link_spte / spte_to_child_sp round-trip; link sptes are never writable leaves", () => {
  for (const sp of [1, 2, 63, 64, 4095, 0x7fffff, 0x800000, SPTE_MAX_PFN]) {
    const s = make_link_spte(sp);
    const cell = new Int32Array([s]);
    assert.equal(spte_to_child_sp(cell[0]), sp);
    assert.equal(is_shadow_present_pte(s), true);
    assert.equal(is_writable_pte(s), true, "link sptes are PRESENT|WRITABLE|USER");
    assert.equal(is_large_pte(s), false);
    // no HOST_W / MMU_W on links, so the value decides leafness
    assert.equal(s & (HW | MW), 0);
    assert.equal(is_writable_leaf(s), false);
    assert.equal(spte_is_locklessly_modifiable(s), false);
  }
});

test("spte: PT64_INDEX and huge-page geometry", () => {
  assert.equal(KVM_HPAGE_GFN_SHIFT(1), 0);
  assert.equal(KVM_HPAGE_GFN_SHIFT(2), 9);
  assert.equal(KVM_HPAGE_GFN_SHIFT(3), 18);
  assert.equal(KVM_PAGES_PER_HPAGE(1), 1);
  assert.equal(KVM_PAGES_PER_HPAGE(2), 512);
  assert.equal(KVM_PAGES_PER_HPAGE(3), 512 * 512);
  const gfn = 0b101_000000011_000000010_000000001;
  assert.equal(PT64_INDEX(gfn, 1), 1);
  assert.equal(PT64_INDEX(gfn, 2), 2);
  assert.equal(PT64_INDEX(gfn, 3), 3);
  assert.equal(PT64_INDEX(gfn, 4), 5);
  // gfns at or above 2^31 (the sign bit of an int32) still index correctly
  const big = 2 ** 31 + 3 * 2 ** 27 + 5 * 2 ** 18 + 9;
  assert.equal(PT64_INDEX(big, 4), 16 + 3);
  assert.equal(PT64_INDEX(big, 3), 5);
  assert.equal(PT64_INDEX(big, 2), 0);
  assert.equal(PT64_INDEX(big, 1), 9);
});

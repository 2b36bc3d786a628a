import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL, hvaPages, PAGE_WORDS } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import {
  host_migrate_page,
  host_mmap,
  HPT_WRITABLE,
  hpt_pfn,
  hva_is_huge,
  hva_to_pfn,
  make_hpt,
} from "../../src/mem/host_memory.js";
import { aload } from "../../src/sync/atomic.js";
import { makeKvm } from "../helpers/kvm.js";

test("host_mmap: small mappings are packed, not 2 MiB each", () => {
  const kvm = makeKvm({ hostFrames: 2048 });
  const space = hvaPages(kvm.shared.config);
  // More small mappings than the address space has 2 MiB blocks: each used to take one.
  const n = Math.ceil(space / 512) + 10;
  const seen = new Set<number>();
  let prev = 0;
  for (let i = 0; i < n; i++) {
    const hva = host_mmap(kvm, 1, i % 2 === 0);
    assert.ok(hva > prev, "mappings do not overlap");
    assert.ok(hva_to_pfn(kvm, hva) >= 0, "the page is backed");
    seen.add(hva_to_pfn(kvm, hva));
    prev = hva;
  }
  assert.equal(seen.size, n, "every mapping has its own frame");
  assert.ok(kvm.ctl[CTL.hva_next] <= n + 1, `address space used: ${kvm.ctl[CTL.hva_next]} pages for ${n}`);
  // A THP mapping of 2 MiB or more after them is still 2 MiB aligned and huge.
  const big = host_mmap(kvm, 1024, true);
  assert.equal(big % 512, 0);
  assert.ok(hva_is_huge(kvm, big) && hva_is_huge(kvm, big + 512));
  // A mapping without THP is packed right after, whatever its size.
  const plain = host_mmap(kvm, 600, false);
  assert.equal(plain, big + 1024);
  assert.ok(!hva_is_huge(kvm, plain + 512));
});

test("host_mmap: running out of host frames is ENOMEM naming bytes, and maps nothing", () => {
  const kvm = makeKvm({ hostFrames: 64 });
  const next = kvm.ctl[CTL.hva_next];
  assert.throws(
    () => host_mmap(kvm, 65, false),
    (e: unknown) => e instanceof KvmError && e.code === "ENOMEM" && /\bbytes\b/.test(e.message),
  );
  assert.equal(kvm.ctl[CTL.hva_next], next);
});

test("every frame, frame 0 included, is handed out; one more page is ENOMEM", () => {
  const kvm = makeKvm({ hostFrames: 64 });
  const hva = host_mmap(kvm, 64, false);
  const pfns = new Set<number>();
  for (let p = 0; p < 64; p++) pfns.add(hva_to_pfn(kvm, hva + p));
  assert.deepEqual(
    [...pfns].sort((a, b) => a - b),
    Array.from({ length: 64 }, (_, i) => i),
  );
  assert.equal(hva_to_pfn(kvm, hva), 0, "the first page is on frame 0");
  assert.equal(hva_to_pfn(kvm, hva + 64), -1, "past the mapping: not mapped");
  assert.throws(
    () => host_mmap(kvm, 1, false),
    (e: unknown) => e instanceof KvmError && e.code === "ENOMEM",
  );
});

test("hpt entries: frame 0 read-only is mapped, not 0; the highest frame of 16 GiB round-trips", () => {
  assert.notEqual(make_hpt(0, 0), 0);
  assert.equal(hpt_pfn(make_hpt(0, 0)), 0);
  assert.equal(make_hpt(0, 0) & HPT_WRITABLE, 0);
  assert.equal(make_hpt(0, HPT_WRITABLE) & HPT_WRITABLE, HPT_WRITABLE);
  assert.equal(hpt_pfn(0), -1);
  const top = 2 ** 22 - 1;
  assert.equal(hpt_pfn(make_hpt(top, HPT_WRITABLE)), top);
  assert.ok(make_hpt(top, HPT_WRITABLE) > 0, "a positive int32");
});

test("host_migrate_page moves a page off frame 0 and back onto it, contents kept", () => {
  const kvm = makeKvm({ hostFrames: 2 });
  const hva = host_mmap(kvm, 1, false);
  assert.equal(hva_to_pfn(kvm, hva), 0);
  kvm.mem[5] = 0x1234;
  const notifier = { invalidateRangeStart: (): void => {}, invalidateRangeEnd: (): void => {} };
  assert.ok(host_migrate_page(kvm, hva, notifier));
  assert.equal(hva_to_pfn(kvm, hva), 1);
  assert.equal(kvm.mem[PAGE_WORDS + 5], 0x1234);
  assert.ok(host_migrate_page(kvm, hva, notifier), "frame 0 was freed and is taken again");
  assert.equal(hva_to_pfn(kvm, hva), 0);
  assert.equal(kvm.mem[5], 0x1234);
  assert.equal(aload(kvm.hpt, hva) & HPT_WRITABLE, HPT_WRITABLE, "still writable");
  host_mmap(kvm, 1, false);
  assert.ok(!host_migrate_page(kvm, hva, notifier), "no frame free: the page stays");
  assert.equal(hva_to_pfn(kvm, hva), 0);
});

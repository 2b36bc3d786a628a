import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL, hvaPages } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import { host_mmap, hva_is_huge, hva_to_pfn } from "../../src/mem/host_memory.js";
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

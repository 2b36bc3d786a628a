import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL, VCPU } from "../../src/kvm_host.js";
import { KvmError } from "../../src/errors.js";
import {
  MMU_CACHE_MIN_DESC,
  MMU_CACHE_MIN_SP,
  MMU_TOPUP_WAIT_MS,
  mmu_free_memory_caches,
  mmu_topup_memory_caches,
} from "../../src/mmu/mmu_cache.js";
import { kvm_mmu_get_page, link_shadow_page, mmu_alloc_roots } from "../../src/mmu/mmu_page.js";
import { mmu_alloc_pte_list_desc } from "../../src/alloc/slab.js";
import { makeKvm } from "../helpers/kvm.js";

const VCPU0 = 0;
const VCPU1 = 1;

test("top-up fills a vCPU's caches from the pools; allocation under mmu_lock draws from them", () => {
  const kvm = makeKvm({ maxSp: 16, maxDesc: 16 });
  kvm.ctl[CTL.nr_vcpus] = 2;
  mmu_topup_memory_caches(kvm, VCPU0);
  const nSp = kvm.vcpu[VCPU.sp_cache_n(0)];
  const nDesc = kvm.vcpu[VCPU.desc_cache_n(0)];
  assert.equal(nSp, MMU_CACHE_MIN_SP, "a small pool: only the minimum");
  assert.equal(nDesc, MMU_CACHE_MIN_DESC);
  assert.equal(kvm.ctl[CTL.sp_cached], nSp);
  assert.equal(kvm.ctl[CTL.desc_cached], nDesc);
  const high = kvm.ctl[CTL.sp_high];
  kvm.mmu_lock.lock();
  kvm.mmu_cache_vcpu = VCPU0;
  try {
    mmu_alloc_roots(kvm);
    mmu_alloc_pte_list_desc(kvm);
  } finally {
    kvm.mmu_cache_vcpu = -1;
    kvm.mmu_lock.unlock();
  }
  assert.equal(kvm.ctl[CTL.sp_high], high, "the pool was not touched under the lock");
  assert.equal(kvm.vcpu[VCPU.sp_cache_n(0)], nSp - 1);
  assert.equal(kvm.vcpu[VCPU.desc_cache_n(0)], nDesc - 1);
  assert.equal(kvm.ctl[CTL.sp_used], 1);
  assert.equal(kvm.ctl[CTL.desc_used], 1);
  mmu_free_memory_caches(kvm, VCPU0);
  assert.equal(kvm.ctl[CTL.sp_cached], 0);
  assert.equal(kvm.ctl[CTL.desc_cached], 0);
  assert.equal(kvm.vcpu[VCPU.sp_cache(0)], 0);
  // What went back is handed out again: only the page in use is replaced by a new one.
  mmu_topup_memory_caches(kvm, VCPU0);
  assert.equal(kvm.ctl[CTL.sp_high], high + 1);
});

test("TDP: a top-up the pool cannot satisfy zaps the root and succeeds", () => {
  const kvm = makeKvm({ maxSp: 9 });
  kvm.ctl[CTL.nr_vcpus] = 1;
  mmu_topup_memory_caches(kvm, VCPU0);
  // Build root -> 3 tables from the cache, then top up again: 8 usable pages, 4 used, 0 cached.
  kvm.mmu_lock.lock();
  kvm.mmu_cache_vcpu = VCPU0;
  try {
    let parent = mmu_alloc_roots(kvm);
    for (let level = 3; level >= 1; level--) {
      const sp = kvm_mmu_get_page(kvm, 0, level);
      link_shadow_page(kvm, parent * 512, sp);
      parent = sp;
    }
  } finally {
    kvm.mmu_cache_vcpu = -1;
    kvm.mmu_lock.unlock();
  }
  assert.equal(kvm.ctl[CTL.sp_used], 4);
  // Another vCPU takes the remaining 4; this one then has to reclaim.
  mmu_topup_memory_caches(kvm, VCPU1);
  mmu_topup_memory_caches(kvm, VCPU0);
  assert.equal(kvm.ctl[CTL.root], 0, "the root was zapped");
  assert.equal(kvm.ctl[CTL.sp_used], 0);
  assert.equal(kvm.ctl[CTL.reclaims], 1);
  assert.equal(kvm.vcpu[VCPU.sp_cache_n(0)], MMU_CACHE_MIN_SP);
});

for (const [pool, over] of [
  ["maxSp", { maxSp: MMU_CACHE_MIN_SP }],
  ["maxDesc", { maxDesc: MMU_CACHE_MIN_DESC - 1 }],
] as const) {
  test(`top-up below one fault's worst case: ENOMEM naming ${pool}, within the wait bound, no lock held`, () => {
    const kvm = makeKvm(over);
    // A clock the test controls: each read after the first is STEP ms later.
    const STEP = 40;
    let now = 0;
    let reads = 0;
    const realNow = Date.now;
    Date.now = () => (reads++ === 0 ? now : (now += STEP));
    try {
      assert.throws(
        () => mmu_topup_memory_caches(kvm, VCPU0),
        (e: unknown) =>
          e instanceof KvmError && e.code === "ENOMEM" && new RegExp(`\\b${pool}\\b`).test(e.message),
      );
    } finally {
      Date.now = realNow;
    }
    // It gave up at the first read at or past the bound, not before and not later.
    assert.ok(now >= MMU_TOPUP_WAIT_MS && now < MMU_TOPUP_WAIT_MS + STEP, `gave up at ${now} ms`);
    assert.equal(reads, 1 + Math.ceil(MMU_TOPUP_WAIT_MS / STEP));
    assert.ok(!kvm.mmu_lock.isLocked());
  });
}

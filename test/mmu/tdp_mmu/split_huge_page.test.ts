/**
 * tdp_mmu_split_huge_page on its own: the table it links holds the 512 pieces of the huge spte
 * (each the next 4 KiB frame, same permissions, not large), it writes nothing past its own table,
 * and the guest's translation is unchanged (no fault after the split).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { CTL } from "../../../src/kvm_host.js";
import {
  is_large_pte,
  is_shadow_present_pte,
  PT_DIRECTORY_LEVEL,
  PT_WRITABLE_MASK,
  PT64_ENT_PER_PAGE,
  spte_to_child_sp,
  spte_to_pfn,
} from "../../../src/mmu/spte.js";
import { sp_pool_pop, sp_pool_push } from "../../../src/mmu/mmu_page.js";
import { TdpIter, tdp_iter_next, tdp_iter_start } from "../../../src/mmu/tdp_mmu/tdp_iter.js";
import { tdp_mmu_alloc_sp } from "../../../src/mmu/tdp_mmu/tdp_mmu_free.js";
import { tdp_mmu_split_huge_page } from "../../../src/mmu/tdp_mmu/tdp_mmu_fault.js";
import { tdp_mmu_state } from "../../../src/mmu/tdp_mmu/tdp_mmu_state.js";
import { audit } from "../../../src/verify/audit.js";
import { vmKvm } from "../../../src/vm/internal.js";
import { makeTdpVm, writePages } from "./helpers.js";

/** A value no split writes (not present: bit 0 clear), put where a 513th piece would land. */
const SENTINEL = 0x5a5a5a5a & ~1;

test("tdp_mmu_split_huge_page fills its table with the 512 pieces and writes nothing past it", () => {
  const vm = makeTdpVm();
  const v = writePages(vm, [0], 1);
  const kvm = vmKvm(vm);
  const it = new TdpIter();
  tdp_iter_start(kvm, it, kvm.ctl[CTL.root], PT_DIRECTORY_LEVEL, 0);
  while (it.level > PT_DIRECTORY_LEVEL) tdp_iter_next(kvm, it);
  const huge = it.old_spte;
  assert.ok(is_shadow_present_pte(huge) && is_large_pte(huge), "gfn 0 is mapped by a 2 MiB leaf");
  const st = tdp_mmu_state(kvm);
  const splits0 = st.splits;
  kvm.mmu_lock.write_lock();
  try {
    // Two pages of the pool side by side: the split gets the first, the second is the neighbour.
    const sp = sp_pool_pop(kvm);
    const next = sp_pool_pop(kvm);
    assert.equal(next, sp + 1, "a fresh pool hands out adjacent pages");
    st.stash.push(sp);
    assert.equal(tdp_mmu_alloc_sp(kvm, -1, it.gfn, it.level - 1), sp);
    kvm.spt[next * PT64_ENT_PER_PAGE] = SENTINEL;
    try {
      assert.equal(tdp_mmu_split_huge_page(kvm, it, sp, false), 0);
      assert.equal(kvm.spt[next * PT64_ENT_PER_PAGE], SENTINEL, "the neighbouring table is untouched");
    } finally {
      kvm.spt[next * PT64_ENT_PER_PAGE] = 0;
      sp_pool_push(kvm, next);
    }
    assert.equal(spte_to_child_sp(kvm.spt[it.sptep]), sp, "the table is linked in the huge spte's place");
    for (let i = 0; i < PT64_ENT_PER_PAGE; i++) {
      const s = kvm.spt[sp * PT64_ENT_PER_PAGE + i];
      assert.ok(is_shadow_present_pte(s) && !is_large_pte(s), `piece ${i}: a present 4 KiB leaf`);
      assert.equal(spte_to_pfn(s), spte_to_pfn(huge) + i, `piece ${i}: the huge page's frame ${i}`);
      assert.equal(s & PT_WRITABLE_MASK, huge & PT_WRITABLE_MASK, `piece ${i}: writable as the huge spte`);
    }
  } finally {
    kvm.mmu_lock.write_unlock();
  }
  assert.equal(st.splits - splits0, 1);
  assert.deepEqual(audit(kvm), []);
  // The translation is the same: writes anywhere in the 2 MiB take no fault.
  v.tlb.flush();
  const f0 = v.fault.slow + v.fault.fast;
  writePages(vm, [0, 1, 255, 511], 2, v);
  assert.equal(v.fault.slow + v.fault.fast - f0, 0);
});

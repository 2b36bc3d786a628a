/**
 * The TDP MMU's catalog bugs (docs/bugs.md): runtime switches in KvmConfig.bugs that put back a
 * bug KVM fixed in it. Their bits start at 1 << 16, above the rmap MMU's (kvm_host.ts BUG).
 */
export const BUG_TDP = {
  /** 3a0f64de479c: the iterator advances after restarting from a yield (sptes skipped). */
  "tdp-iter-skip": 1 << 16,
  /** ba3a6120a4e7: a plain store of an spte with volatile bits under the write lock. */
  "tdp-plain-write": 1 << 17,
  /** 7c8a4742c4ab: write protection breaks out early, leaving MMU-writable set. */
  "tdp-wrprot-early-break": 1 << 18,
  /** 3354ef5a592d: clearing the dirty state of a non-present spte. */
  "tdp-clear-dirty-nonpresent": 1 << 19,
  /** fcb93eb6d09d / a835429cda91: yield during a zap without flushing first. */
  "tdp-zap-yield-noflush": 1 << 20,
  /** 47b0c2e4c220: a write-lock-only helper called under the read lock. */
  "tdp-wrong-lock": 1 << 21,
} as const;
export type TdpBugName = keyof typeof BUG_TDP;

/**
 * Kernel function slices for the explorer's traces: the KVM functions (by their kernel names)
 * that a controlled thread is inside at each of its steps. Instrumented code brackets a
 * function with `const kfd = kfunc_enter(KF.fast_page_fault)` ... `kfunc_exit(kfd)`, and
 * `return kfunc_ret(kfd, value)` at an early return. All three are no-ops, which V8 inlines
 * away, unless this thread turned recording on (a controlled thread of a traced run:
 * explore_worker.ts), the same exported-binding swap as src/sync/atomic.ts.
 *
 * Recording pushes the function's id onto a small stack in shared memory (depth, then ids) that
 * the controller reads while the thread waits at a scheduling point: the stack of that step.
 * `kfunc_exit(d)` restores the depth `kfunc_enter` returned (it does not pop one), so a throw
 * that skipped inner exits leaves the stack right at the next exit of an enclosing frame, and
 * kfunc_record starts every run at depth 0. Hence no try/finally on the per-page and per-spte
 * functions (it costs when nothing records): a throw there either ends the controlled run
 * (SchedAbort, a failed thread) or crosses an entry point that keeps its finally (the fault,
 * exit and ioctl entry points, where a guest page fault or a KvmError is caught and the
 * thread goes on), whose exit puts the depth back before the thread's next step.
 */

/**
 * The functions, by id (index + 1; 0 is none), with KVM's names as the code uses them.
 * vcpu_exit_guest, guest_write and guest_read are ours: a VM exit and the guest's own accesses.
 */
export const KFUNC_NAMES = [
  "kvm_mmu_page_fault",
  "kvm_tdp_page_fault",
  "fast_page_fault",
  "kvm_tdp_mmu_map",
  "mmu_set_spte",
  "mmu_spte_update",
  "kvm_mmu_get_page",
  "tdp_mmu_set_spte_atomic",
  "tdp_mmu_split_huge_page",
  "handle_removed_pt",
  "tdp_mmu_zap_leafs",
  "kvm_tdp_mmu_clear_dirty_slot",
  "kvm_tdp_mmu_wrprot_slot",
  "kvm_tdp_mmu_write_protect_gfn_range",
  "mark_page_dirty_in_slot",
  "kvm_dirty_ring_push",
  "kvm_dirty_ring_harvest",
  "kvm_flush_remote_tlbs",
  "kvm_vm_ioctl_get_dirty_log",
  "kvm_get_dirty_log",
  "kvm_vm_ioctl_clear_dirty_log",
  "kvm_clear_dirty_log",
  "kvm_mmu_write_protect_pt_masked",
  "rmap_write_protect",
  "spte_write_protect",
  "kvm_mmu_notifier_invalidate_range_start",
  "kvm_mmu_notifier_invalidate_range_end",
  "vcpu_enter_guest",
  "vcpu_exit_guest",
  "guest_write",
  "guest_read",
] as const;
export type KfuncName = (typeof KFUNC_NAMES)[number];

/** Function ids by name: `KF.fast_page_fault`. */
export const KF = Object.freeze(
  Object.fromEntries(KFUNC_NAMES.map((n, i) => [n, i + 1])) as { readonly [K in KfuncName]: number },
);

/** The name of function id `f`, or of a recorded frame ("?" for an unknown id). */
export function kfuncName(f: number): string {
  return KFUNC_NAMES[kfunc_id(f) - 1] ?? "?";
}

/** The function id of a recorded frame. */
export function kfunc_id(frame: number): number {
  return frame & 0xff;
}

/** Words of a recording stack: the depth, then this many ids (deeper frames count but are not kept). */
export const KSTACK_WORDS = 10;

export let kfunc_enter = (_f: number): number => 0;
export let kfunc_exit = (_depth: number): void => {};
/** `return kfunc_ret(kfd, v)`: kfunc_exit(kfd), then v (evaluated before the exit, inside the frame). */
export let kfunc_ret = <T>(_depth: number, v: T): T => v;

const bare = { kfunc_enter, kfunc_exit, kfunc_ret };

/**
 * Turns recording on for this thread into `w[base..base + KSTACK_WORDS)` (plain stores: the
 * controller reads them after the thread's hand-off publishes them), or off with null.
 */
export function kfunc_record(w: Int32Array | null, base = 0): void {
  if (w === null) {
    ({ kfunc_enter, kfunc_exit, kfunc_ret } = bare);
    return;
  }
  w[base] = 0;
  let calls = 0;
  kfunc_enter = (f) => {
    const d = w[base];
    // The id in the low byte, a call count above: two calls of one function are two slices.
    if (d < KSTACK_WORDS - 1) w[base + 1 + d] = f | ((calls++ & 0x7fffff) << 8);
    w[base] = d + 1;
    return d;
  };
  kfunc_exit = (d) => void (w[base] = d);
  kfunc_ret = (d, v) => ((w[base] = d), v);
}

/** The stack recorded at `w[base..]`, outermost first: frames, id | call count << 8 (kfunc_id). */
export function kfunc_stack(w: Int32Array, base = 0): number[] {
  const d = Math.min(w[base], KSTACK_WORDS - 1);
  return Array.from(w.subarray(base + 1, base + 1 + d));
}

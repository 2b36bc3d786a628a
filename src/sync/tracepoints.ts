/**
 * The tracepoints of the runtime trace (trace_ring.ts records them, src/vm/trace.ts turns them
 * into a Trace Event Format timeline): one declaration each, named as Linux's where Linux has
 * one, with its fields in Linux's order and names (arch/x86/kvm/mmu/mmutrace.h, system kvmmmu;
 * include/trace/events/kvm.h, system kvm). Ours (system kvmmu) cover what KVM has no tracepoint
 * for: mmu_lock waits and holds, the remote TLB flush and each vCPU's ack, the NUMA scan, the
 * dirty-log ioctls, migration rounds and the switch-over.
 *
 * Here because the lowest layers (sync, mem) record some of them; the table is data only.
 */

/**
 * How a record becomes a trace event: "i" an instant; "B"/"E" the two ends of a slice (the E
 * record names the same tracepoint; its fields are endFields); "flow_s"/"flow_f" an instant that
 * also starts/ends a flow arrow whose id is the field "flow".
 */
export type TracepointKind = "i" | "slice" | "flow_s" | "flow_f";

export interface Tracepoint {
  name: string;
  system: "kvmmmu" | "kvm" | "kvmmu";
  kind: TracepointKind;
  /** Field names (at most MAX_FIELDS); for a slice, the fields of its B record. */
  fields: readonly string[];
  /** A slice's fields known only at its end (its E record). */
  endFields?: readonly string[];
  /**
   * Per-access: recorded one in --trace-sample (Tracer.sampled); "workers": sampled on the worker
   * threads (vCPUs, the host thread: a hold or flush per fault or page migration there), every one
   * recorded on the main thread (the ioctls).
   */
  sampled: boolean | "workers";
  doc: string;
}

/** The most fields a record carries. */
export const MAX_FIELDS = 7;

const KVM_MMU_PAGE_FIELDS = ["mmu_valid_gen", "gfn", "role", "root_count", "unsync"] as const;

export const TRACEPOINTS = [
  // ---- kvmmmu (arch/x86/kvm/mmu/mmutrace.h) ----
  {
    name: "kvm_mmu_spte_requested",
    system: "kvmmmu",
    kind: "i",
    fields: ["gfn", "pfn", "level"],
    sampled: true,
    doc: "a slow-path fault is about to map gfn -> pfn at goal level `level`",
  },
  {
    name: "fast_page_fault",
    system: "kvmmmu",
    kind: "i",
    fields: ["vcpu_id", "cr2_or_gpa", "error_code", "sptep", "old_spte", "new_spte", "ret"],
    sampled: true,
    doc: "a write fault fixed (ret 1) or not (0) by one cmpxchg without mmu_lock; cr2_or_gpa is a gfn here, sptep an index into spt",
  },
  {
    name: "kvm_mmu_set_spte",
    system: "kvmmmu",
    kind: "i",
    fields: ["gfn", "spte", "sptep", "level"],
    sampled: true,
    doc: "mmu_set_spte installed a leaf",
  },
  {
    name: "kvm_mmu_get_page",
    system: "kvmmmu",
    kind: "i",
    fields: [...KVM_MMU_PAGE_FIELDS, "created"],
    sampled: false,
    doc: "a shadow page (page-table page) allocated (created 1) or found in the hash (0)",
  },
  {
    name: "kvm_mmu_prepare_zap_page",
    system: "kvmmmu",
    kind: "i",
    fields: [...KVM_MMU_PAGE_FIELDS],
    sampled: false,
    doc: "a shadow page is unlinked and queued for freeing",
  },
  {
    name: "kvm_mmu_split_huge_page",
    system: "kvmmmu",
    kind: "i",
    fields: ["gfn", "spte", "level", "errno"],
    sampled: false,
    doc: "a huge spte at `level` replaced by a table of smaller ones (errno 0: done)",
  },
  {
    name: "kvm_tdp_mmu_spte_changed",
    system: "kvmmmu",
    kind: "i",
    fields: ["as_id", "gfn", "level", "old_spte", "new_spte"],
    sampled: true,
    doc: "the TDP MMU changed an spte (handle_changed_spte)",
  },
  // ---- kvm (include/trace/events/kvm.h) ----
  {
    name: "kvm_dirty_ring_push",
    system: "kvm",
    kind: "i",
    fields: ["index", "dirty_index", "reset_index", "slot", "offset"],
    sampled: true,
    doc: "a dirty gfn (slot, offset) pushed on vCPU `index`'s ring",
  },
  {
    name: "kvm_dirty_ring_reset",
    system: "kvm",
    kind: "i",
    fields: ["index", "dirty_index", "reset_index"],
    sampled: false,
    doc: "KVM_RESET_DIRTY_RINGS freed the harvested entries of vCPU `index`'s ring",
  },
  {
    name: "kvm_dirty_ring_exit",
    system: "kvm",
    kind: "i",
    fields: ["vcpu_id"],
    sampled: false,
    doc: "KVM_EXIT_DIRTY_RING_FULL: the vCPU leaves until its ring is reset",
  },
  // ---- kvmmu: ours ----
  {
    name: "mmu_lock_write_wait",
    system: "kvmmu",
    kind: "slice",
    fields: [],
    sampled: "workers",
    doc: "waiting for mmu_lock for write (only contended acquisitions, recorded with their hold)",
  },
  {
    name: "mmu_lock_write",
    system: "kvmmu",
    kind: "slice",
    fields: [],
    sampled: "workers",
    doc: "mmu_lock held for write",
  },
  {
    name: "mmu_lock_read_wait",
    system: "kvmmu",
    kind: "slice",
    fields: [],
    sampled: "workers",
    doc: "waiting for mmu_lock for read (only contended acquisitions, recorded with their hold)",
  },
  {
    name: "mmu_lock_read",
    system: "kvmmu",
    kind: "slice",
    fields: [],
    sampled: "workers",
    doc: "mmu_lock held for read (the outermost hold of the thread)",
  },
  {
    name: "kvm_flush_remote_tlbs",
    system: "kvmmu",
    kind: "slice",
    fields: [],
    endFields: ["waited"],
    sampled: "workers",
    doc: "a remote TLB flush: the requests, the kicks, the wait for the acks",
  },
  {
    name: "tlb_flush_request",
    system: "kvmmu",
    kind: "flow_s",
    fields: ["vcpu_id", "flow"],
    sampled: "workers",
    doc: "KVM_REQ_TLB_FLUSH set for a vCPU in guest mode; the arrow ends at its ack",
  },
  {
    name: "tlb_flush_ack",
    system: "kvmmu",
    kind: "flow_f",
    fields: ["vcpu_id", "flow"],
    sampled: false,
    doc: "the vCPU served KVM_REQ_TLB_FLUSH (flushed its TLB) at its next entry",
  },
  {
    name: "task_numa_work",
    system: "kvmmu",
    kind: "slice",
    fields: ["start"],
    endFields: ["pages"],
    sampled: false,
    doc: "a NUMA balancing scan: host pages unmapped, the MMU notifier zapping their sptes",
  },
  {
    name: "kvm_vm_ioctl_get_dirty_log",
    system: "kvmmu",
    kind: "slice",
    fields: ["slot"],
    endFields: ["dirty_pages"],
    sampled: false,
    doc: "KVM_GET_DIRTY_LOG",
  },
  {
    name: "kvm_vm_ioctl_clear_dirty_log",
    system: "kvmmu",
    kind: "slice",
    fields: ["slot", "first_page", "num_pages"],
    endFields: ["dirty_pages"],
    sampled: false,
    doc: "KVM_CLEAR_DIRTY_LOG",
  },
  {
    name: "kvm_vm_ioctl_reset_dirty_pages",
    system: "kvmmu",
    kind: "slice",
    fields: [],
    endFields: ["reset"],
    sampled: false,
    doc: "KVM_RESET_DIRTY_RINGS",
  },
  {
    name: "migration_round",
    system: "kvmmu",
    kind: "slice",
    fields: ["round"],
    endFields: ["pages", "bytes"],
    sampled: false,
    doc: "one pre-copy round of the migration source (pages sent)",
  },
  {
    name: "migration_switchover",
    system: "kvmmu",
    kind: "slice",
    fields: ["remaining"],
    endFields: ["bytes"],
    sampled: false,
    doc: "from the source's pause to the destination running the guest (pre-copy), or to the end of post-copy; remaining: bytes dirty at the last round (the destination's slice: from the end of the stream, or post-copy's start)",
  },
  {
    name: "migration_incoming",
    system: "kvmmu",
    kind: "slice",
    fields: ["postcopy"],
    endFields: ["pages", "bytes"],
    sampled: false,
    doc: "the destination receiving RAM: from the config section (its VM built) to the end of the stream or post-copy's start",
  },
  {
    name: "migration_page_request",
    system: "kvmmu",
    kind: "i",
    fields: ["pages", "first_gpa_page"],
    sampled: false,
    doc: "post-copy: the destination asks the source for pages its vCPUs faulted on",
  },
] as const satisfies readonly Tracepoint[];

export type TracepointName = (typeof TRACEPOINTS)[number]["name"];

/** A tracepoint's number (its index in TRACEPOINTS), as records carry it. */
export const TP = Object.fromEntries(TRACEPOINTS.map((t, i) => [t.name, i])) as Record<
  TracepointName,
  number
>;

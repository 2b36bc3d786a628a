/**
 * Automatic NUMA balancing's scanner as Linux 3.8-3.12 ran it (kernel/sched/fair.c
 * task_numa_work, mm/mprotect.c change_prot_numa): every scan period one thread of the process
 * unmaps the next scan-size chunk of its address space, so that the next touch of each page
 * takes a NUMA hinting fault. It runs as task work of the process's own threads on their way
 * back to user mode; in a VM process that is mostly the vCPU threads, so here a vCPU runs it
 * (Vcpu.numaTick), outside guest mode. The defaults of that era: 256 MiB every 100 ms.
 *
 * change_pmd_range calls invalidate_range_start once for the populated part of each PUD (1 GiB)
 * range it changes, and KVM zaps that whole range under one hold of mmu_lock
 * (kvm_unmap_hva_range): the long holds that a harvester under mmu_lock waits behind.
 *
 * State (kvm.ctl): numa_scan_period_ms and numa_scan_pages are the owner's settings (0: off);
 * numa_next_scan is mm->numa_next_scan, claimed by cmpxchg so one thread scans per period;
 * numa_scan_offset is mm->numa_scan_offset, written only by the thread that won the claim.
 */
import { CTL, Kvm, KVM_USER_MEM_SLOTS, PAGE_SIZE, SLOT } from "../kvm_host.js";
import { aadd, acas, aload, astore } from "../sync/atomic.js";
import { host_invalidate_range, MmuNotifier } from "./host_memory.js";
import { einval } from "../errors.js";
import { TracePhase } from "../sync/trace_ring.js";
import { TP } from "../sync/tracepoints.js";

/** Pages of a PUD (1 GiB): change_protection issues one notifier range per PUD. */
const PUD_PAGES = 262144;

/** 3.11's sysctl_numa_balancing_scan_period_min (ms) and scan_size (MiB, here in pages). */
export const NUMA_SCAN_PERIOD_MS = 100;
export const NUMA_SCAN_PAGES = (256 << 20) / PAGE_SIZE;

/**
 * Vm.setNumaBalancing's settings with their defaults, checked: EINVAL naming the argument as
 * `names` calls it (dirty-log-perf checks its options with the same rules before it populates).
 */
export function numa_balancing_settings(
  scanPeriodMs: number | undefined,
  scanBytes: number | undefined,
  names = { period: "scanPeriodMs", bytes: "scanBytes" },
): { periodMs: number; pages: number } {
  const periodMs = scanPeriodMs ?? NUMA_SCAN_PERIOD_MS;
  const bytes = scanBytes ?? NUMA_SCAN_PAGES * PAGE_SIZE;
  if (!Number.isInteger(periodMs) || periodMs < 0 || periodMs > 3_600_000)
    throw einval(names.period, `must be an integer in 0..3600000 ms, got ${String(scanPeriodMs)}`);
  if (
    !Number.isInteger(bytes) ||
    bytes < PAGE_SIZE ||
    bytes % PAGE_SIZE !== 0 ||
    bytes / PAGE_SIZE > 2 ** 31 - 1
  )
    throw einval(
      names.bytes,
      `must be a positive multiple of ${PAGE_SIZE} below 8 TiB, got ${String(scanBytes)}`,
    );
  return { periodMs, pages: bytes / PAGE_SIZE };
}

/** The next "VMA" (a memslot's host range) ending above `offset`: [start, end) in hva pages. */
function nextVma(kvm: Kvm, offset: number): [number, number] | null {
  const s = kvm.slots;
  let best: [number, number] | null = null;
  for (let id = 0; id < KVM_USER_MEM_SLOTS; id++) {
    if (aload(s, SLOT.active(id)) === 0) continue;
    const start = s[SLOT.hva_page(id)];
    const end = start + s[SLOT.npages(id)];
    if (end <= offset) continue;
    if (best === null || start < best[0]) best = [start, end];
  }
  return best;
}

/**
 * task_numa_work: scans if this period's scan is due and nobody claimed it. `nowMs` is the
 * caller's clock in ms since the VM was created (KvmShared.epochMs). Returns the pages unmapped
 * (0 when not due or off).
 */
export function task_numa_work(kvm: Kvm, nowMs: number, notifier: MmuNotifier): number {
  const c = kvm.ctl;
  const period = aload(c, CTL.numa_scan_period_ms);
  let pages = aload(c, CTL.numa_scan_pages);
  if (period <= 0 || pages <= 0) return 0;
  const migrate = aload(c, CTL.numa_next_scan);
  if (nowMs < migrate) return 0;
  // Another thread may be scanning this period already (cmpxchg on mm->numa_next_scan).
  if (acas(c, CTL.numa_next_scan, migrate, nowMs + period) !== migrate) return 0;
  let start = aload(c, CTL.numa_scan_offset);
  if (kvm.trace.on) kvm.trace.emit(TP.task_numa_work, TracePhase.Begin, start);
  let done = 0;
  let vma = nextVma(kvm, start);
  while (vma !== null && pages > 0) {
    start = Math.max(start, vma[0]);
    const pudEnd = (Math.floor(start / PUD_PAGES) + 1) * PUD_PAGES;
    const end = Math.min(start + pages, vma[1], pudEnd);
    host_invalidate_range(kvm, start, end - start, notifier);
    pages -= end - start;
    done += end - start;
    start = end;
    if (start >= vma[1]) vma = nextVma(kvm, start);
  }
  // Past the last VMA the next scan starts over (reset_ptenuma_scan).
  astore(c, CTL.numa_scan_offset, vma === null ? 0 : start);
  aadd(c, CTL.numa_scans, 1);
  // A 64-bit count in two words: the add that carries out of the low word bumps the high one.
  if ((aadd(c, CTL.numa_pages_scanned, done) >>> 0) + done > 0xffffffff)
    aadd(c, CTL.numa_pages_scanned_hi, 1);
  if (kvm.trace.on) kvm.trace.emit(TP.task_numa_work, TracePhase.End, done);
  return done;
}

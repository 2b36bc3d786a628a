/**
 * Automatic NUMA balancing's settings and statistics (the scanning itself runs on the vCPU
 * threads: src/mem/numa_balancing.ts).
 */
import { CTL } from "../kvm_host.js";
import { einval } from "../errors.js";
import { numa_balancing_settings } from "../mem/numa_balancing.js";
import { VmState } from "./state.js";

/** Vm.setNumaBalancing: see there. */
export function vm_set_numa_balancing(st: VmState, o: { scanPeriodMs?: number; scanBytes?: number }): void {
  if (typeof o !== "object" || o === null) throw einval("options", `must be an object, got ${String(o)}`);
  const { periodMs, pages } = numa_balancing_settings(o.scanPeriodMs, o.scanBytes);
  const c = st.kvm.ctl;
  Atomics.store(c, CTL.numa_scan_pages, pages);
  Atomics.store(c, CTL.numa_scan_period_ms, periodMs);
}

/** Vm.numaBalancingStats: see there. */
export function vm_numa_balancing_stats(st: VmState): { scans: number; pagesScanned: number } {
  const c = st.kvm.ctl;
  return {
    scans: Atomics.load(c, CTL.numa_scans) >>> 0,
    pagesScanned: numa_pages_scanned(c),
  };
}

/** The two-word count of pages scanned; re-read when a carry lands between the loads. */
function numa_pages_scanned(c: Int32Array): number {
  for (;;) {
    const hi = Atomics.load(c, CTL.numa_pages_scanned_hi);
    const lo = Atomics.load(c, CTL.numa_pages_scanned) >>> 0;
    if (Atomics.load(c, CTL.numa_pages_scanned_hi) === hi) return hi * 2 ** 32 + lo;
  }
}

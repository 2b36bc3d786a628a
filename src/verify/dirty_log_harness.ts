/**
 * dirty-log-test's VM: the test slot (KVM_MEM_LOG_DIRTY_PAGES from the start, a few pages past
 * the vCPU regions), parked vCPUs running a dirty-log guest, the host thread's churn, and the
 * selftest's collections (GET, GET + CLEAR, the dirty ring).
 */
import { Vm } from "../vm.js";
import { KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE } from "../kvm_host.js";
import { KvmError } from "../errors.js";
import { tablesFor } from "../workload/guest_paging.js";
import { DLG, DLG_VCPU, dlgCtlWords } from "../workload/dirty_log_guest.js";
import { waitAsyncAlive } from "../sync/atomic.js";
import type { DesignName } from "../mmu/design.js";
import type { GuestArgs } from "../workload/guest.js";
import type {
  DirtyLogMode,
  DirtyLogTestOptions,
  HarvestPhase,
  OracleName,
} from "./dirty_log_test_options.js";

export const TEST_SLOT = 1;
/** Shadow mode: the guest's page tables (its "kernel area") and where it maps vCPU 0's region. */
const PT_SLOT = 0;
const PT_GPA = 1 << 20;
const REGION_VPN = 1 << 27;
/** The selftest's floor on guest writes per iteration. */
export const MIN_WRITES = 256;
const PARK_TIMEOUT_MS = 30_000;
export const TWO_MIB = 2 << 20;

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Where the harness's memory lies. */
interface HarnessLayout {
  /** Each vCPU's region; the last one also has the `extra` pages past it. */
  pagesPer: number;
  extra: number;
  /** The test slot. */
  npages: number;
  gpa: number;
  /** Shadow mode: each vCPU's page-table pool, in a slot of ptPages below the test slot (else 0). */
  pool: number;
  ptPages: number;
  /** Host memory: the slot, spare frames (alignment of huge mappings, page migration), the tables. */
  memory: number;
}

function harnessLayout(o: DirtyLogTestOptions): HarnessLayout {
  const pagesPer = o.bytesPerVcpu / PAGE_SIZE;
  const extra = o.extraPages ?? 3;
  const npages = o.vcpus * pagesPer + extra;
  const gpa = o.gpa ?? slotGpa(npages);
  const slotBytes = npages * PAGE_SIZE;
  const shadow = o.mode === "shadow";
  const pool = shadow ? tablesFor(pagesPer + extra) + tablesFor(o.vcpus * 4096) + 8 : 0;
  const ptPages = shadow ? Math.ceil((o.vcpus * pool) / 512) * 512 : 0;
  const memory = Math.ceil(slotBytes / TWO_MIB) * TWO_MIB + 4 * TWO_MIB + ptPages * PAGE_SIZE;
  return { pagesPer, extra, npages, gpa, pool, ptPages, memory };
}

/** The test slot (as KVM's test: dirty logging on from the start, nothing populated); shadow: the tables' slot. */
function setHarnessSlots(vm: Vm, o: DirtyLogTestOptions, l: HarnessLayout): void {
  const slotBytes = l.npages * PAGE_SIZE;
  const hva = vm.mmap(slotBytes, { thp: o.thp });
  vm.setUserMemoryRegion({
    slot: TEST_SLOT,
    flags: KVM_MEM_LOG_DIRTY_PAGES,
    guestPhysAddr: l.gpa,
    memorySize: slotBytes,
    userspaceAddr: hva,
  });
  if (o.mode === "shadow")
    vm.setUserMemoryRegion({
      slot: PT_SLOT,
      flags: 0,
      guestPhysAddr: PT_GPA,
      memorySize: l.ptPages * PAGE_SIZE,
      userspaceAddr: vm.mmap(l.ptPages * PAGE_SIZE, { thp: o.thp }),
    });
}

/** vCPU id's guest: the kvm oracle's dirty-log guest or the qemu oracle's incrementing one. */
function guestSpec(
  o: DirtyLogTestOptions,
  l: HarnessLayout,
  oracle: OracleName,
  ctl: Int32Array<SharedArrayBuffer>,
  seed: number,
  id: number,
): GuestArgs {
  const kernel = { baseGfn: PT_GPA / PAGE_SIZE, pages: l.ptPages };
  const pages = l.pagesPer + (id === o.vcpus - 1 ? l.extra : 0);
  const regionGfn = l.gpa / PAGE_SIZE + id * l.pagesPer;
  const paging =
    o.mode === "shadow"
      ? {
          kernel,
          poolGfn: kernel.baseGfn + id * l.pool,
          poolPages: l.pool,
          vpn: REGION_VPN + id * l.pagesPer,
        }
      : undefined;
  return oracle === "kvm"
    ? { kind: "dirty_log", ctl: ctl.buffer, baseGfn: regionGfn, pages, seed, paging }
    : { kind: "dirty_log_incr", ctl: ctl.buffer, baseGfn: regionGfn, pages, paging };
}

/** One VM with the test slot and parked vCPUs running a dirty-log guest. */
export class Harness {
  readonly vm: Vm;
  readonly ctl: Int32Array;
  readonly npages: number;
  readonly gpa: number;
  readonly bitmapWords: number;
  readonly vcpus: number;
  private readonly churn: boolean;
  private hostRunning = false;
  /** How this harness collects: the kvm oracle's mode (the qemu oracle: dirty-log). */
  mode: DirtyLogMode = "dirty-log";
  /** dirty-ring: ring-full exits already answered by a collection. */
  private fullSeen = 0;
  /** dirty-ring: the last page of each vCPU's latest collection that found entries. */
  lastRingPage: number[] = [];

  private constructor(vm: Vm, ctl: Int32Array, npages: number, gpa: number, vcpus: number, churn: boolean) {
    this.vm = vm;
    this.ctl = ctl;
    this.npages = npages;
    this.gpa = gpa;
    this.vcpus = vcpus;
    this.bitmapWords = Math.ceil(npages / 32);
    this.churn = churn;
  }

  static async create(
    wp: DesignName,
    oracle: OracleName,
    o: DirtyLogTestOptions,
    seed: number,
    mode: DirtyLogMode = "dirty-log",
  ): Promise<Harness> {
    const l = harnessLayout(o);
    const vm = Vm.create({
      memory: l.memory,
      // A design's name, as registered.
      wp: wp,
      mode: o.mode ?? "tdp",
      bugs: o.bugs ?? [],
      maxVcpus: o.vcpus,
      maxSlotPages: l.npages + l.ptPages,
      pml: o.pml,
      eager_page_split: o.eagerPageSplit,
    });
    o.onVm?.(vm, `${wp} ${oracle} ${mode}`);
    const ctl = new Int32Array(new SharedArrayBuffer(dlgCtlWords(o.vcpus) * 4));
    const churn = o.migrateRate > 0 || o.invalidateRate > 0;
    const h = new Harness(vm, ctl, l.npages, l.gpa, o.vcpus, churn);
    h.mode = mode;
    h.lastRingPage = new Array<number>(o.vcpus).fill(-1);
    try {
      // As the selftest: clear-log enables MANUAL_PROTECT_ENABLE | INITIALLY_SET, dirty-ring
      // its ring, both before the slot and the vCPUs exist.
      if (mode === "clear-log") vm.enableManualDirtyLogProtect(3);
      if (mode === "dirty-ring") vm.enableDirtyRing(o.ringEntries ?? ringEntriesFor(l.npages));
      setHarnessSlots(vm, o, l);
      for (let i = 0; i < o.vcpus; i++) vm.createVcpu(i);
      Atomics.store(ctl, DLG.stop, 1); // the vCPUs start parked (sem_vcpu_cont)
      await vm.run((id) => guestSpec(o, l, oracle, ctl, seed, id));
      await h.waitParked();
      if ((o.numaScanPeriodMs ?? 0) > 0)
        vm.setNumaBalancing({ scanPeriodMs: o.numaScanPeriodMs, scanBytes: o.numaScanBytes });
      if (churn) {
        await vm.startHostThread({ migrateRate: o.migrateRate, invalidateRate: o.invalidateRate, seed });
        await vm.pauseHostThread();
      }
    } catch (e) {
      await vm.stop();
      throw e;
    }
    return h;
  }

  /** Σ stores published by the vCPUs (wrapping counters: compare differences). */
  writes(): number {
    let n = 0;
    for (let id = 0; id < this.vcpus; id++) n = (n + Atomics.load(this.ctl, DLG_VCPU.writes(id))) | 0;
    return n;
  }

  /** Publishes the stamp, then lets the vCPUs (and the host thread) run. */
  resume(iteration: number): void {
    Atomics.store(this.ctl, DLG.iteration, iteration);
    if (this.churn && !this.hostRunning) {
      this.vm.resumeHostThread();
      this.hostRunning = true;
    }
    Atomics.store(this.ctl, DLG.stop, 0);
    Atomics.notify(this.ctl, DLG.stop);
  }

  /**
   * vcpu_stop = true; wait until every vCPU is parked at the sync point; pause the host thread.
   * `service` runs while waiting (a vCPU blocked in a ring-full exit parks only after a reset).
   */
  async quiesce(service?: () => void): Promise<void> {
    Atomics.store(this.ctl, DLG.stop, 1);
    await this.waitParked(service);
    if (this.hostRunning) {
      await this.vm.pauseHostThread();
      this.hostRunning = false;
    }
    this.vm.throwIfFailed();
  }

  private async waitParked(service?: () => void): Promise<void> {
    const t0 = Date.now();
    for (let id = 0; id < this.vcpus; id++) {
      const i = DLG_VCPU.parked(id);
      while (Atomics.load(this.ctl, i) !== 1) {
        this.vm.throwIfFailed();
        service?.();
        if (Date.now() - t0 > PARK_TIMEOUT_MS)
          throw new KvmError(
            "ETIMEDOUT",
            `vcpu ${id}: did not reach the sync point in ${PARK_TIMEOUT_MS} ms`,
          );
        await waitAsyncAlive(this.ctl, i, 0, 20);
      }
    }
  }

  harvest(out: Uint32Array, phase: HarvestPhase, o: DirtyLogTestOptions): Uint32Array {
    this.vm.throwIfFailed();
    const bm = this.vm.getDirtyLog(TEST_SLOT, out);
    o.harvestFilter?.(bm, phase);
    // clear-log: GET only copied; clear (and re-protect) what was reported, the whole slot.
    if (this.mode === "clear-log") this.vm.clearDirtyLog(TEST_SLOT, 0, this.npages, bm);
    return bm;
  }

  /** dirty-ring: a vCPU exited on a full ring since the last collection. */
  ringFull(): boolean {
    return this.vm.dirtyRingStats().fullExits > this.fullSeen;
  }

  /**
   * dirty-ring collection (the selftest's dirty_ring_collect_dirty_pages): harvest every vCPU's
   * ring into `into` (or-ed in), then reset. Every entry must name the test slot and a page in
   * it, and the reset must free exactly what was harvested; `bad` gets anything else.
   */
  collectRing(
    into: Uint32Array,
    phase: HarvestPhase,
    o: DirtyLogTestOptions,
    bad: (what: string) => void,
  ): number {
    this.vm.throwIfFailed();
    this.fullSeen = this.vm.dirtyRingStats().fullExits;
    const bm = new Uint32Array(into.length);
    let count = 0;
    for (let id = 0; id < this.vcpus; id++) {
      const got = this.vm.harvestDirtyRing(id);
      for (const e of got) {
        if (e.slot !== TEST_SLOT || e.offset >= this.npages) {
          bad(`ring entry of vcpu ${id}: slot ${e.slot} offset ${e.offset} outside the test slot`);
          continue;
        }
        bm[e.offset >>> 5] |= 1 << (e.offset & 31);
      }
      if (got.length) this.lastRingPage[id] = got[got.length - 1].offset;
      count += got.length;
    }
    const cleared = this.vm.resetDirtyRings();
    if (cleared !== count) bad(`reset freed ${cleared} entries, ${count} were harvested`);
    o.harvestFilter?.(bm, phase);
    for (let i = 0; i < bm.length; i++) into[i] |= bm[i];
    return count;
  }

  async close(): Promise<void> {
    await this.vm.stop();
  }
}

/** The selftest's ring size: 65536 entries, fewer for a small slot, never below 256. */
function ringEntriesFor(npages: number): number {
  let n = 65536;
  while (n > 256 && n > npages) n >>= 1;
  return n;
}

/** KVM puts the test slot at the top of guest-physical space; here: below 2^40, 2 MiB aligned. */
export function slotGpa(npages: number): number {
  const bytes = npages * PAGE_SIZE;
  return Math.floor((2 ** 40 - bytes) / TWO_MIB) * TWO_MIB;
}

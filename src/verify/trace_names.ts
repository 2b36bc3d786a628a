/**
 * Names for the shared-memory locations a controlled run's steps touch: a step is recorded as
 * (op, array id, element index), and this file says what that element is, from the layout
 * declarations (src/kvm_host.ts) and the VM's state at that moment: "spte gfn 0x1234 level 1
 * (sp 7 index 52)", "rmap head gfn 0x1234 level 1 slot 0", "dirty_bitmap slot 0 word 3 (gfns
 * 0x60-0x7f)", "mmu_lock", "vcpu 1 mode", "dirty ring vcpu 0 entry 17 flags".
 *
 * Which sp a spte belongs to, which slot a bitmap word is in, change as the VM runs (a page is
 * freed and reused): decode while the threads are stopped at the step, as the full recording of
 * a run does (explore.ts); a name decoded later describes the location as the VM is then.
 */
import {
  CTL,
  Kvm,
  KVM_USER_MEM_SLOTS,
  ROLE_DIRECT,
  ROLE_LEVEL_MASK,
  RING_GFN,
  RING_HDR,
  SLOT,
  SP,
  VCPU,
} from "../kvm_host.js";
import { fieldAt, type LayoutInfo } from "../layout.js";
import { pte_list_desc_word_name } from "../mmu/rmap.js";
import { hpt_pfn } from "../mem/host_memory.js";

/** The arrays a controlled thread's trace names by position (explore_worker.ts passes them in this order). */
export const TRACED_ARRAYS = [
  "spt",
  "rmap",
  "desc",
  "bitmap",
  "vcpu",
  "ctl",
  "mem",
  "hpt",
  "spHdr",
  "ring",
] as const;
export type TracedArray = (typeof TRACED_ARRAYS)[number];

export const ARR_SPT = 0;
export const ARR_RMAP = 1;
export const ARR_DESC = 2;
export const ARR_BITMAP = 3;
export const ARR_VCPU = 4;
export const ARR_CTL = 5;
export const ARR_MEM = 6;
export const ARR_HPT = 7;
export const ARR_SPHDR = 8;
export const ARR_RING = 9;

const PT_ENTRIES = 512;
const PAGE_WORDS = 1024;

const hex = (n: number): string => `0x${n.toString(16)}`;

/** The field of a layout that holds word `offset` of a row (or block), with the word within it. */

/** Words of the locks inside `struct kvm` (src/sync/rwlock.ts, mutex.ts, rcu.ts). */
const RWLOCK_NAMES = ["", ".sleepers", ".owner", ".since", ".wait_lock.next", ".wait_lock.owner"];
const MUTEX_NAMES = ["", ".owner", ".waiters", ".mode"];

function ctlName(i: number): string {
  const f = fieldAt(CTL.layout, i);
  const m = /^(\w+)\[(\d+)\]$/.exec(f);
  if (m === null) return f;
  const [, name, w] = m;
  const k = Number(w);
  if (name === "mmu_lock") return `mmu_lock${RWLOCK_NAMES[k] ?? `.wait_lock[${k - 4}]`}`;
  if (name === "slots_lock" || name === "mm_lock") return `${name}${MUTEX_NAMES[k] ?? `[${k}]`}`;
  if (name === "rcu") return k === 0 ? "rcu epoch" : `rcu reader ${k - 1}`;
  return f;
}

/** Active memslots as [slot, base_gfn, npages]. */
function slotsOf(kvm: Kvm): [number, number, number][] {
  const out: [number, number, number][] = [];
  for (let s = 0; s < KVM_USER_MEM_SLOTS; s++)
    if (kvm.slots[SLOT.active(s)] !== 0)
      out.push([s, kvm.slots[SLOT.base_gfn(s)], kvm.slots[SLOT.npages(s)]]);
  return out;
}

/** The first gfn and the level of spte `i` (level 0: its sp is not in use). */
function spteGfn(kvm: Kvm, i: number): [number, number] {
  const sp = Math.floor(i / PT_ENTRIES);
  const role = kvm.spHdr[SP.role(sp)];
  const level = role & ROLE_LEVEL_MASK;
  if (level === 0) return [-1, 0];
  const index = i - sp * PT_ENTRIES;
  const gfn =
    (role & ROLE_DIRECT) !== 0 || kvm.spGfns.length === 0
      ? kvm.spHdr[SP.gfn(sp)] + index * 2 ** ((level - 1) * 9)
      : kvm.spGfns[i];
  return [gfn, level];
}

function spteName(kvm: Kvm, i: number): string {
  const sp = Math.floor(i / PT_ENTRIES);
  const index = i - sp * PT_ENTRIES;
  const [gfn, level] = spteGfn(kvm, i);
  if (level === 0) return `spte (sp ${sp} index ${index}, sp not in use)`;
  return `spte gfn ${hex(gfn)} level ${level} (sp ${sp} index ${index})`;
}

function rmapName(kvm: Kvm, i: number): string {
  for (const [s, base, npages] of slotsOf(kvm)) {
    const heads: [number, number][] = [
      [1, kvm.slots[SLOT.rmap_base(s)]],
      [2, kvm.slots[SLOT.rmap_l2(s)]],
      [3, kvm.slots[SLOT.rmap_l3(s)]],
    ];
    for (const [level, start] of heads) {
      const sh = 2 ** ((level - 1) * 9);
      const n = Math.floor((base + npages - 1) / sh) - Math.floor(base / sh) + 1;
      if (i >= start && i < start + n) {
        const gfn = (Math.floor(base / sh) + i - start) * sh;
        return `rmap head gfn ${hex(gfn)} level ${level} slot ${s}`;
      }
    }
  }
  return `rmap head ${i} (no slot)`;
}

function bitmapName(kvm: Kvm, i: number): string {
  for (const [s, base] of slotsOf(kvm)) {
    const start = kvm.slots[SLOT.bitmap_base(s)];
    const words = kvm.slots[SLOT.bitmap_words(s)];
    if (words === 0 || i < start || i >= start + 2 * words) continue;
    const snap = i >= start + words;
    const w = i - start - (snap ? words : 0);
    const what = snap ? "dirty_bitmap snapshot" : "dirty_bitmap";
    return `${what} slot ${s} word ${w} (gfns ${hex(base + 32 * w)}-${hex(base + 32 * w + 31)})`;
  }
  return `dirty_bitmap word ${i} (no slot)`;
}

function rowName(l: LayoutInfo, what: string, i: number): string {
  const r = Math.floor((i - l.base) / l.stride);
  return `${what} ${r} ${fieldAt(l, i - l.base - r * l.stride)}`;
}

/** The memslot and gfn of host virtual page `hva`, or null. */
function hvaToGfn(kvm: Kvm, hva: number): string | null {
  for (const [s, base, npages] of slotsOf(kvm)) {
    const h = kvm.slots[SLOT.hva_page(s)];
    if (hva >= h && hva < h + npages) return `gfn ${hex(base + hva - h)} slot ${s}`;
  }
  return null;
}

/**
 * The gfn and slot of the guest page that host frame `frame` backs: of the hva pages that map it
 * (hpt_pfn), the lowest a memslot covers. Only the slots' hva pages are looked at, not the
 * whole host page table.
 */
function frameGfn(kvm: Kvm, frame: number): [number, number] | null {
  let best = -1;
  let found: [number, number] | null = null;
  for (const [s, base, npages] of slotsOf(kvm)) {
    const h = kvm.slots[SLOT.hva_page(s)];
    for (let k = 0; k < npages && (best < 0 || h + k < best); k++)
      if (hpt_pfn(kvm.hpt[h + k]) === frame) {
        best = h + k;
        found = [base + k, s];
        break;
      }
  }
  return found;
}

function memName(kvm: Kvm, i: number): string {
  const frame = Math.floor(i / PAGE_WORDS);
  const off = (i - frame * PAGE_WORDS) * 4;
  const g = frameGfn(kvm, frame);
  if (g !== null) return `guest memory gfn ${hex(g[0])} slot ${g[1]} offset ${hex(off)} (pfn ${hex(frame)})`;
  return `host memory pfn ${hex(frame)} offset ${hex(off)}`;
}

function ringName(kvm: Kvm, i: number): string {
  const size = kvm.ctl[CTL.dirty_ring_size];
  if (size === 0) return `dirty ring word ${i}`;
  const per = RING_GFN.row(size);
  const v = Math.floor(i / per);
  const o = i - v * per;
  if (o < RING_HDR.WORDS) return `dirty ring vcpu ${v} ${fieldAt(RING_HDR.layout, o)}`;
  const e = Math.floor((o - RING_HDR.WORDS) / RING_GFN.STRIDE);
  return `dirty ring vcpu ${v} entry ${e} ${fieldAt(RING_GFN.layout, o - RING_GFN.row(e))}`;
}

/** What element `index` of traced array `arr` (an index in TRACED_ARRAYS) is, in `kvm` as it is now. */
export function locationName(kvm: Kvm, arr: number, index: number): string {
  switch (arr) {
    case ARR_SPT:
      return spteName(kvm, index);
    case ARR_RMAP:
      return rmapName(kvm, index);
    case ARR_DESC:
      return pte_list_desc_word_name(index);
    case ARR_BITMAP:
      return bitmapName(kvm, index);
    case ARR_VCPU:
      return rowName(VCPU.layout, "vcpu", index);
    case ARR_CTL:
      return ctlName(index);
    case ARR_MEM:
      return memName(kvm, index);
    case ARR_HPT: {
      const g = hvaToGfn(kvm, index);
      return `host pte hva page ${hex(index)}${g !== null ? ` (${g})` : ""}`;
    }
    case ARR_SPHDR:
      return rowName(SP.layout, "sp", index);
    case ARR_RING:
      return ringName(kvm, index);
    default:
      return `scratch[${index}]`;
  }
}

/**
 * The guest pages element `index` of traced array `arr` covers, as [first gfn, count], or null:
 * a spte's (count 512^(level - 1)) and a guest-memory word's (count 1).
 */
export function locationGfns(kvm: Kvm, arr: number, index: number): [number, number] | null {
  if (arr === ARR_SPT) {
    const [gfn, level] = spteGfn(kvm, index);
    return level === 0 ? null : [gfn, 2 ** ((level - 1) * 9)];
  }
  if (arr === ARR_MEM) {
    const g = frameGfn(kvm, Math.floor(index / PAGE_WORDS));
    return g === null ? null : [g[0], 1];
  }
  return null;
}

/** The array the Int32Array `a` of `kvm` is, as an index in TRACED_ARRAYS (-1: none). */
export function tracedArrayOf(kvm: Kvm, a: Int32Array): number {
  const arrays = [kvm.spt, kvm.rmapPool, kvm.desc, kvm.bitmapPool, kvm.vcpu, kvm.ctl, kvm.mem, kvm.hpt];
  const i = arrays.findIndex((x) => x.buffer === a.buffer);
  if (i >= 0) return i;
  if (kvm.spHdr.buffer === a.buffer) return ARR_SPHDR;
  if (kvm.dirtyRing.buffer === a.buffer) return ARR_RING;
  return -1;
}

/**
 * Shadow mode: how shadow pages are found and aged. mmu_page_hash (1024 buckets, `gfn & 1023`)
 * finds an sp by (gfn, role); active_mmu_pages orders them newest first for
 * make_mmu_pages_available. Both change only under mmu_lock; an sp is in both exactly while
 * SPX.on_list is 1 (until it goes on an invalid list).
 */
import {
  Kvm,
  KVM_NUM_MMU_PAGES,
  ROLE_ACCESS_MASK,
  ROLE_ACCESS_SHIFT,
  ROLE_DIRECT,
  SCTL,
  SP,
  SPX,
} from "../kvm_host.js";
import { KvmError } from "../errors.js";

export function make_role(level: number, direct: boolean, access: number): number {
  return level | (direct ? ROLE_DIRECT : 0) | ((access << ROLE_ACCESS_SHIFT) & ROLE_ACCESS_MASK);
}

export function sp_role(kvm: Kvm, sp: number): number {
  return kvm.spHdr[SP.role(sp)];
}

export function sp_gfn(kvm: Kvm, sp: number): number {
  return kvm.spHdr[SP.gfn(sp)];
}

export function role_access(role: number): number {
  return (role & ROLE_ACCESS_MASK) >>> ROLE_ACCESS_SHIFT;
}

function kvm_page_table_hashfn(gfn: number): number {
  return gfn & (KVM_NUM_MMU_PAGES - 1);
}

/** The first sp (or -1) of gfn's bucket; hash_next walks on. */
export function hash_first(kvm: Kvm, gfn: number): number {
  return kvm.spHash[kvm_page_table_hashfn(gfn)] - 1;
}

export function hash_next(kvm: Kvm, sp: number): number {
  return kvm.spExt[SPX.hash_next(sp)] - 1;
}

export function hash_add(kvm: Kvm, sp: number, gfn: number): void {
  const b = kvm_page_table_hashfn(gfn);
  kvm.spExt[SPX.hash_next(sp)] = kvm.spHash[b]!;
  kvm.spHash[b] = sp + 1;
}

export function hash_del(kvm: Kvm, sp: number): void {
  const b = kvm_page_table_hashfn(sp_gfn(kvm, sp));
  const x = kvm.spExt;
  let cur = kvm.spHash[b] - 1;
  let prev = -1;
  while (cur >= 0) {
    const next = hash_next(kvm, cur);
    if (cur === sp) {
      if (prev < 0) kvm.spHash[b] = next + 1;
      else x[SPX.hash_next(prev)] = next + 1;
      x[SPX.hash_next(sp)] = 0;
      return;
    }
    prev = cur;
    cur = next;
  }
  throw new KvmError("EIO", `mmu_page_hash: sp ${sp} is not in its bucket`);
}

/** Calls fn(sp) for every sp of gfn's bucket with sp.gfn == gfn (valid or not). */
export function for_each_gfn_sp(kvm: Kvm, gfn: number, fn: (sp: number) => void): void {
  for (let sp = hash_first(kvm, gfn); sp >= 0;) {
    const next = hash_next(kvm, sp);
    if (sp_gfn(kvm, sp) === gfn) fn(sp);
    sp = next;
  }
}

/** The sp of (gfn, role) in the hash, or -1. */
export function hash_find(kvm: Kvm, gfn: number, role: number): number {
  for (let sp = hash_first(kvm, gfn); sp >= 0; sp = hash_next(kvm, sp))
    if (sp_gfn(kvm, sp) === gfn && sp_role(kvm, sp) === role) return sp;
  return -1;
}

export function active_add_head(kvm: Kvm, sp: number): void {
  const x = kvm.spExt;
  const s = kvm.sctl;
  const head = s[SCTL.active_head];
  x[SPX.lru_prev(sp)] = 0;
  x[SPX.lru_next(sp)] = head;
  if (head !== 0) x[SPX.lru_prev(head - 1)] = sp + 1;
  else s[SCTL.active_tail] = sp + 1;
  s[SCTL.active_head] = sp + 1;
}

export function active_del(kvm: Kvm, sp: number): void {
  const x = kvm.spExt;
  const s = kvm.sctl;
  const prev = x[SPX.lru_prev(sp)];
  const next = x[SPX.lru_next(sp)];
  if (prev !== 0) x[SPX.lru_next(prev - 1)] = next;
  else s[SCTL.active_head] = next;
  if (next !== 0) x[SPX.lru_prev(next - 1)] = prev;
  else s[SCTL.active_tail] = prev;
  x[SPX.lru_prev(sp)] = 0;
  x[SPX.lru_next(sp)] = 0;
}

/** Every sp on active_mmu_pages, newest first (mmu_lock held or quiesced). */
export function active_mmu_pages(kvm: Kvm): number[] {
  const out: number[] = [];
  let sp = kvm.sctl[SCTL.active_head] - 1;
  while (sp >= 0 && out.length <= kvm.shared.config.maxSp) {
    out.push(sp);
    sp = kvm.spExt[SPX.lru_next(sp)] - 1;
  }
  return out;
}

/**
 * The guest context: what a guest program (built-in or a user's ES module) sees of its vCPU.
 * Every access goes through the vCPU's software TLB and, on a miss, the MMU (TDP or shadow),
 * exactly as the built-in guests' accesses do; the program never touches host memory directly.
 *
 * Addresses are guest addresses in bytes: guest-physical while paging is off (CR3 = 0), guest
 * virtual once a CR3 is loaded. The page/word methods (read32w, write32w, write64w) are the
 * hot-loop form used by memstress: no address arithmetic, one monomorphic call into the vCPU.
 *
 * Sub-word stores (store8, store16, writeBytes at unaligned edges) are a load and a store of the
 * 32-bit word that holds them, not a locked read-modify-write: two vCPUs storing different bytes
 * of the same word at the same time can lose one of the stores, as with a plain C bitfield.
 */
import { RunCtl, Vcpu } from "../vcpu/vcpu.js";
import { VCPU } from "../kvm_host.js";

export const GUEST_PAGE_SIZE = 4096;

export interface GuestContext {
  /** The vCPU id. */
  readonly vcpuId: number;
  /** Shadow paging (the VM was created with mode "shadow"). */
  readonly shadow: boolean;
  /** True once the owner has asked this vCPU to stop (vm.stop); checkpoint() then throws. */
  readonly stopped: boolean;
  /** Guest stores and loads counted by the program (published with the vCPU statistics). */
  writes: number;
  reads: number;

  load8(addr: number): number;
  load16(addr: number): number;
  load32(addr: number): number;
  /** 64-bit load as a bigint. */
  load64(addr: number): bigint;
  store8(addr: number, x: number): void;
  store16(addr: number, x: number): void;
  store32(addr: number, x: number): void;
  /** 64-bit store of a bigint (taken modulo 2^64). */
  store64(addr: number, x: bigint): void;
  /** Byte-range copy out of / into guest memory (any alignment, across pages). */
  readBytes(addr: number, length: number): Uint8Array;
  writeBytes(addr: number, bytes: Uint8Array): void;

  /** Page/word forms: word w (0..1023) of guest page `page`; write64w needs an even w. */
  read32w(page: number, w: number): number;
  write32w(page: number, w: number, x: number): void;
  write64w(page: number, w: number, lo: number, hi: number): void;

  /** MOV to CR3 (gfn of a PML4; 0 turns paging off). */
  loadCr3(cr3Gfn: number): void;
  /** INVLPG of one guest virtual page. */
  invlpg(page: number): void;
  /** A safe point: take pending requests, honour pause; throws (ends the program) on stop. */
  checkpoint(): void;
  /**
   * HLT: leave guest mode, sleep on i32[index] while it equals `value` (at most timeoutMs), then
   * re-enter at a safe point. The way to wait for the host without holding up its TLB flushes.
   */
  halt(i32: Int32Array, index: number, value: number, timeoutMs: number): void;
  /** Counts one completed pass (vm.waitPasses waits on it) and publishes the statistics. */
  passDone(): void;
  /** Publishes this vCPU's statistics (vm.vcpuStats). */
  publishStats(): void;
}

/** A guest program's entry: `export default function (ctx, args)` or `export function main`. */
export type GuestEntry<A = unknown> = (ctx: GuestContext, args: A) => void | Promise<void>;

const PAGE = GUEST_PAGE_SIZE;

/** The one implementation, over a Vcpu (kept monomorphic: every guest calls through it). */
export class VcpuGuestContext implements GuestContext {
  // declare: no ES2022 field definition (undefined first), so V8 keeps them constant-typed.
  declare private readonly v: Vcpu;
  declare readonly vcpuId: number;
  declare readonly shadow: boolean;

  constructor(vcpu: Vcpu) {
    this.v = vcpu;
    this.vcpuId = vcpu.id;
    this.shadow = vcpu.shadow;
  }

  /** The vCPU itself, for the engine's own guest kernel code (guest_paging.ts). */
  get vcpu(): Vcpu {
    return this.v;
  }

  get stopped(): boolean {
    return Atomics.load(this.v.kvm.vcpu, VCPU.run(this.v.id)) === (RunCtl.Stop as number);
  }

  get writes(): number {
    return this.v.writes;
  }
  set writes(n: number) {
    this.v.writes = n;
  }
  get reads(): number {
    return this.v.reads;
  }
  set reads(n: number) {
    this.v.reads = n;
  }

  read32w(page: number, w: number): number {
    return this.v.read32(page, w);
  }

  write32w(page: number, w: number, x: number): void {
    this.v.write32(page, w, x);
  }

  write64w(page: number, w: number, lo: number, hi: number): void {
    this.v.write64(page, w, lo, hi);
  }

  load32(addr: number): number {
    if ((addr & 3) === 0) return this.v.read32(Math.floor(addr / PAGE), (addr % PAGE) >>> 2);
    return (this.load16(addr) | (this.load16(addr + 2) << 16)) >>> 0;
  }

  load8(addr: number): number {
    const word = this.v.read32(Math.floor(addr / PAGE), (addr % PAGE) >>> 2);
    return (word >>> ((addr & 3) * 8)) & 0xff;
  }

  load16(addr: number): number {
    if ((addr & 1) === 0) {
      const word = this.v.read32(Math.floor(addr / PAGE), (addr % PAGE) >>> 2);
      return (word >>> ((addr & 3) * 8)) & 0xffff;
    }
    return this.load8(addr) | (this.load8(addr + 1) << 8);
  }

  load64(addr: number): bigint {
    const lo = BigInt(this.load32(addr) >>> 0);
    const hi = BigInt(this.load32(addr + 4) >>> 0);
    return (hi << 32n) | lo;
  }

  store32(addr: number, x: number): void {
    if ((addr & 3) === 0) {
      this.v.write32(Math.floor(addr / PAGE), (addr % PAGE) >>> 2, x | 0);
      return;
    }
    for (let i = 0; i < 4; i++) this.store8(addr + i, x >>> (i * 8));
  }

  store8(addr: number, x: number): void {
    const page = Math.floor(addr / PAGE);
    const w = (addr % PAGE) >>> 2;
    const sh = (addr & 3) * 8;
    const old = this.v.read32(page, w);
    this.v.write32(page, w, (old & ~(0xff << sh)) | ((x & 0xff) << sh));
  }

  store16(addr: number, x: number): void {
    if ((addr & 3) === 3) {
      this.store8(addr, x);
      this.store8(addr + 1, x >>> 8);
      return;
    }
    const page = Math.floor(addr / PAGE);
    const w = (addr % PAGE) >>> 2;
    const sh = (addr & 3) * 8;
    const old = this.v.read32(page, w);
    this.v.write32(page, w, (old & ~(0xffff << sh)) | ((x & 0xffff) << sh));
  }

  store64(addr: number, x: bigint): void {
    const lo = Number(BigInt.asUintN(32, x)) | 0;
    const hi = Number(BigInt.asUintN(32, x >> 32n)) | 0;
    if ((addr & 7) === 0) {
      this.v.write64(Math.floor(addr / PAGE), (addr % PAGE) >>> 2, lo, hi);
      return;
    }
    this.store32(addr, lo);
    this.store32(addr + 4, hi);
  }

  readBytes(addr: number, length: number): Uint8Array {
    const out = new Uint8Array(length);
    let i = 0;
    while (i < length && ((addr + i) & 3) !== 0) out[i] = this.load8(addr + i++);
    for (; i + 4 <= length; i += 4) {
      const x = this.load32(addr + i);
      out[i] = x;
      out[i + 1] = x >>> 8;
      out[i + 2] = x >>> 16;
      out[i + 3] = x >>> 24;
    }
    while (i < length) out[i] = this.load8(addr + i++);
    return out;
  }

  writeBytes(addr: number, bytes: Uint8Array): void {
    const n = bytes.length;
    let i = 0;
    while (i < n && ((addr + i) & 3) !== 0) this.store8(addr + i, bytes[i++]);
    for (; i + 4 <= n; i += 4)
      this.store32(addr + i, bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24));
    while (i < n) this.store8(addr + i, bytes[i++]);
  }

  loadCr3(cr3Gfn: number): void {
    this.v.loadCr3(cr3Gfn);
  }

  invlpg(page: number): void {
    this.v.invlpg(page);
  }

  checkpoint(): void {
    this.v.safePoint();
  }

  halt(i32: Int32Array, index: number, value: number, timeoutMs: number): void {
    const v = this.v;
    v.exitGuest();
    try {
      Atomics.wait(i32, index, value, timeoutMs);
    } finally {
      v.enterGuest();
    }
    v.safePoint();
  }

  passDone(): void {
    this.v.passDone();
    this.v.publishStats();
  }

  publishStats(): void {
    this.v.publishStats();
  }
}

/**
 * A VM of the real kernel, through /dev/kvm: the VM and vCPU ioctls the dirty-logging path
 * needs, named as the library's Vm names them (setUserMemoryRegion, getDirtyLog, clearDirtyLog,
 * enableManualDirtyLogProtect, enableDirtyRing, harvestDirtyRing, resetDirtyRings), plus guest
 * memory (mmap'd, seen by the host as a Uint8Array), KVM_GET_STATS_FD and KVM_RUN.
 *
 * Errors are the kernel's: KvmSyscallError with `errno` as the ioctl returned it. Buffers the
 * kernel reads or writes through a pointer (the dirty bitmaps) live in mmap'd memory; a bitmap
 * shorter than the slot needs is placed so that it ends at an unmapped page, which is what a
 * short user buffer means to KVM (copy_to_user / copy_from_user fail: EFAULT).
 *
 * UNTESTED against a kernel: the machine this was written on has no /dev/kvm (docs/kernel.md).
 */
import { closeSync, readSync } from "node:fs";
import { einval, KvmError } from "../errors.js";
import {
  KVM_CAP_DIRTY_LOG_RING,
  KVM_CAP_DIRTY_LOG_RING_ACQ_REL,
  KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP,
  KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
  KVM_CLEAR_DIRTY_LOG,
  KVM_CREATE_VCPU,
  KVM_DIRTY_GFN_F_DIRTY,
  KVM_DIRTY_GFN_F_RESET,
  KVM_DIRTY_LOG_PAGE_OFFSET,
  KVM_ENABLE_CAP,
  KVM_GET_DIRTY_LOG,
  KVM_GET_STATS_FD,
  KVM_RESET_DIRTY_RINGS,
  KVM_RUN,
  KVM_RUN_OFF,
  KVM_SET_USER_MEMORY_REGION,
  KVM_STATS_DESC_SIZE,
  KVM_STATS_HEADER,
  SIZEOF,
} from "./ioctl.js";
import {
  check,
  Libc,
  MAP_ANONYMOUS,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  NativePtr,
  PROT_READ,
  PROT_WRITE,
} from "./libc.js";
import { KvmDevice } from "./kvm_dev.js";

const PAGE = 4096;

interface Mapping {
  ptr: NativePtr;
  addr: number;
  len: number;
  bytes: Uint8Array;
}

export interface KernelVcpu {
  readonly id: number;
  readonly fd: number;
  /** struct kvm_run, mmap'd from the vCPU fd. */
  readonly run: DataView;
  /** The dirty ring's entries (null without a ring), and where the next harvest starts. */
  readonly ring: DataView | null;
  fetch: number;
}

export interface KernelRegion {
  slot: number;
  flags: number;
  guestPhysAddr: number;
  memorySize: number;
  userspaceAddr: number;
}

/** A native bitmap buffer kept between calls of one kind (GET, CLEAR) while its sizes hold. */
interface BitmapBuffer {
  bytes: number;
  needBytes: number;
  map: Mapping;
  addr: bigint;
  view: Uint8Array;
}

export class KernelVm {
  private readonly maps: Mapping[] = [];
  private readonly slots = new Map<number, KernelRegion>();
  readonly vcpus = new Map<number, KernelVcpu>();
  private ringEntries = 0;
  /** GET's and CLEAR's native bitmaps: one each, remapped only when the sizes change. */
  private readonly bitmaps = new Map<"get" | "clear", BitmapBuffer>();
  /** ns the last GET or CLEAR spent in its ioctl alone (no buffer set-up, no copy). */
  lastIoctlNs = 0;

  private constructor(
    readonly dev: KvmDevice,
    readonly fd: number,
  ) {}

  /** KVM_CREATE_VM on an open device. */
  static create(dev: KvmDevice): KernelVm {
    return new KernelVm(dev, dev.createVmFd());
  }

  private get libc(): Libc {
    return this.dev.libc;
  }

  /** mmap(MAP_ANONYMOUS | MAP_PRIVATE): the host address of `bytes` of zeroed memory. */
  mmap(bytes: number): number {
    if (!Number.isInteger(bytes) || bytes <= 0 || bytes % PAGE !== 0)
      throw einval("bytes", `must be a positive multiple of ${PAGE}, got ${String(bytes)}`);
    return this.map(bytes, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0).addr;
  }

  private map(len: number, flags: number, fd: number, offset: number): Mapping {
    const ptr = this.libc.mmap(len, PROT_READ | PROT_WRITE, flags, fd, offset);
    if (ptr === null) throw new KvmError("ENOMEM", `mmap: ${len} bytes (errno ${this.libc.errno()})`);
    const m = {
      ptr,
      addr: Number(this.libc.address(ptr)),
      len,
      bytes: new Uint8Array(this.libc.view(ptr, len)),
    };
    this.maps.push(m);
    return m;
  }

  /** The host's view of [hva, hva + len) of a mapping made by mmap(). */
  hostBytes(hva: number, len: number): Uint8Array {
    const m = this.maps.find((x) => hva >= x.addr && hva + len <= x.addr + x.len);
    if (m === undefined)
      throw new KvmError("EFAULT", `hva: [0x${hva.toString(16)}, +${len}) is not a mapping of this VM`);
    return m.bytes.subarray(hva - m.addr, hva - m.addr + len);
  }

  /** KVM_SET_USER_MEMORY_REGION. */
  setUserMemoryRegion(m: KernelRegion): void {
    const buf = new Uint8Array(SIZEOF.kvm_userspace_memory_region);
    const dv = new DataView(buf.buffer);
    dv.setUint32(0, m.slot >>> 0, true);
    dv.setUint32(4, m.flags >>> 0, true);
    dv.setBigUint64(8, BigInt(m.guestPhysAddr), true);
    dv.setBigUint64(16, BigInt(m.memorySize), true);
    dv.setBigUint64(24, BigInt(m.userspaceAddr), true);
    check(
      this.libc,
      this.libc.ioctlBuf(this.fd, KVM_SET_USER_MEMORY_REGION, buf),
      `KVM_SET_USER_MEMORY_REGION(slot ${m.slot})`,
    );
    if (m.memorySize === 0) this.slots.delete(m.slot);
    else this.slots.set(m.slot, { ...m });
  }

  /** KVM_ENABLE_CAP on the VM fd. */
  enableCap(cap: number, args0: number, flags = 0): number {
    const buf = new Uint8Array(SIZEOF.kvm_enable_cap);
    const dv = new DataView(buf.buffer);
    dv.setUint32(0, cap, true);
    dv.setUint32(4, flags, true);
    dv.setBigUint64(8, BigInt(args0), true);
    return check(this.libc, this.libc.ioctlBuf(this.fd, KVM_ENABLE_CAP, buf), `KVM_ENABLE_CAP(${cap})`);
  }

  /** KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 with args[0] = flags (1 MANUAL_PROTECT_ENABLE, 2 INITIALLY_SET). */
  enableManualDirtyLogProtect(flags: number): void {
    this.enableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, flags);
  }

  /**
   * KVM_CAP_DIRTY_LOG_RING(_ACQ_REL, preferred where offered) with the ring's size in bytes
   * (entries x 16); withBitmap: KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP after it.
   */
  enableDirtyRing(entries: number, opts: { withBitmap?: boolean } = {}): void {
    const cap =
      this.dev.checkExtension(KVM_CAP_DIRTY_LOG_RING_ACQ_REL) > 0
        ? KVM_CAP_DIRTY_LOG_RING_ACQ_REL
        : KVM_CAP_DIRTY_LOG_RING;
    this.enableCap(cap, entries * SIZEOF.kvm_dirty_gfn);
    this.ringEntries = entries;
    if (opts.withBitmap === true) this.enableCap(KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP, 0);
  }

  /** KVM_CREATE_VCPU, then its kvm_run and (with a ring) its ring mmap'd. */
  createVcpu(id: number): KernelVcpu {
    const fd = check(this.libc, this.libc.ioctlInt(this.fd, KVM_CREATE_VCPU, id), `KVM_CREATE_VCPU(${id})`);
    const run = this.map(this.dev.vcpuMmapSize(), MAP_SHARED, fd, 0);
    let ring: DataView | null = null;
    if (this.ringEntries > 0) {
      const r = this.map(
        this.ringEntries * SIZEOF.kvm_dirty_gfn,
        MAP_SHARED,
        fd,
        KVM_DIRTY_LOG_PAGE_OFFSET * PAGE,
      );
      ring = new DataView(r.bytes.buffer, r.bytes.byteOffset, r.len);
    }
    const v: KernelVcpu = {
      id,
      fd,
      run: new DataView(run.bytes.buffer, run.bytes.byteOffset, run.len),
      ring,
      fetch: 0,
    };
    this.vcpus.set(id, v);
    return v;
  }

  /**
   * A native buffer of `bytes` for a bitmap of `needBytes`: when bytes < needBytes it ends at
   * an unmapped page (KVM's copy then faults), else it is an ordinary mapping. One per call
   * kind, reused while the sizes hold (the one before is unmapped): a long run maps no more.
   */
  private bitmapBuffer(kind: "get" | "clear", bytes: number, needBytes: number): BitmapBuffer {
    const old = this.bitmaps.get(kind);
    if (old !== undefined && old.bytes === bytes && old.needBytes === needBytes) return old;
    if (old !== undefined) this.unmap(old.map);
    const pages = Math.ceil(Math.max(bytes, needBytes, 1) / PAGE) + 1;
    const m = this.map(pages * PAGE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    const end = (pages - 1) * PAGE;
    // The last page is unmapped: a buffer short of needBytes runs into it.
    check(this.libc, this.libc.munmapAt(BigInt(m.addr + end), PAGE), "munmap");
    m.len = end;
    const start = end - bytes;
    const b = { bytes, needBytes, map: m, addr: BigInt(m.addr + start), view: m.bytes.subarray(start, end) };
    this.bitmaps.set(kind, b);
    return b;
  }

  /** munmap of one mapping made by map(). */
  private unmap(m: Mapping): void {
    const i = this.maps.indexOf(m);
    if (i >= 0) this.maps.splice(i, 1);
    this.libc.munmap(m.ptr, m.len);
  }

  /** An ioctl on the VM fd with `arg`, timed alone into lastIoctlNs. */
  private timedIoctl(req: number, arg: Uint8Array, what: string): number {
    const t0 = process.hrtime.bigint();
    const r = this.libc.ioctlBuf(this.fd, req, arg);
    this.lastIoctlNs = Number(process.hrtime.bigint() - t0);
    return check(this.libc, r, what);
  }

  private slotWords(slot: number): number {
    const s = this.slots.get(slot & 0xffff);
    return s === undefined ? 0 : Math.ceil(s.memorySize / PAGE / 64) * 2;
  }

  /** KVM_GET_DIRTY_LOG into `out` (default: a buffer the slot's size); `out` shorter: EFAULT from KVM. */
  getDirtyLog(slot: number, out?: Uint32Array): Uint32Array {
    const need = this.slotWords(slot) * 4;
    const bytes = out === undefined ? need : out.length * 4;
    const b = this.bitmapBuffer("get", bytes, need);
    const arg = new Uint8Array(SIZEOF.kvm_dirty_log);
    const dv = new DataView(arg.buffer);
    dv.setUint32(0, slot >>> 0, true);
    dv.setBigUint64(8, b.addr, true);
    this.timedIoctl(KVM_GET_DIRTY_LOG, arg, `KVM_GET_DIRTY_LOG(slot ${slot})`);
    const res = out ?? new Uint32Array(need / 4);
    new Uint8Array(res.buffer, res.byteOffset, res.byteLength).set(b.view.subarray(0, res.byteLength));
    return res;
  }

  /** KVM_CLEAR_DIRTY_LOG with `bitmap` (bit n = page firstPage + n). Returns 0, as the ioctl. */
  clearDirtyLog(slot: number, firstPage: number, numPages: number, bitmap: Uint32Array): number {
    const need = Math.ceil(numPages / 64) * 8;
    const b = this.bitmapBuffer("clear", bitmap.length * 4, need);
    b.view.set(new Uint8Array(bitmap.buffer, bitmap.byteOffset, bitmap.byteLength));
    const arg = new Uint8Array(SIZEOF.kvm_clear_dirty_log);
    const dv = new DataView(arg.buffer);
    dv.setUint32(0, slot >>> 0, true);
    dv.setUint32(4, numPages >>> 0, true);
    dv.setBigUint64(8, BigInt(firstPage), true);
    dv.setBigUint64(16, b.addr, true);
    return this.timedIoctl(KVM_CLEAR_DIRTY_LOG, arg, `KVM_CLEAR_DIRTY_LOG(slot ${slot})`);
  }

  /** Userspace's harvest of a vCPU's ring: the DIRTY entries from its fetch index, each marked RESET. */
  harvestDirtyRing(vcpuId: number, max = Infinity): { slot: number; offset: number }[] {
    const v = this.vcpus.get(vcpuId);
    if (v === undefined || v.ring === null) throw einval("vcpuId", `no vCPU ${vcpuId} with a dirty ring`);
    const out: { slot: number; offset: number }[] = [];
    while (out.length < max) {
      const e = (v.fetch & (this.ringEntries - 1)) * SIZEOF.kvm_dirty_gfn;
      if ((v.ring.getUint32(e, true) & KVM_DIRTY_GFN_F_DIRTY) === 0) break;
      out.push({ slot: v.ring.getUint32(e + 4, true), offset: Number(v.ring.getBigUint64(e + 8, true)) });
      v.ring.setUint32(e, KVM_DIRTY_GFN_F_RESET, true);
      v.fetch++;
    }
    return out;
  }

  /** KVM_RESET_DIRTY_RINGS: the entries reset. */
  resetDirtyRings(): number {
    return check(this.libc, this.libc.ioctlInt(this.fd, KVM_RESET_DIRTY_RINGS, 0), "KVM_RESET_DIRTY_RINGS");
  }

  /** KVM_RUN on the calling thread: the exit reason, and the port of an I/O exit. */
  runVcpu(vcpuId: number): { reason: number; port: number } {
    const v = this.vcpus.get(vcpuId);
    if (v === undefined) throw einval("vcpuId", `no vCPU ${vcpuId}`);
    check(this.libc, this.libc.ioctlInt(v.fd, KVM_RUN, 0), `KVM_RUN(vcpu ${vcpuId})`);
    return {
      reason: v.run.getUint32(KVM_RUN_OFF.exit_reason, true),
      port: v.run.getUint16(KVM_RUN_OFF.io_port, true),
    };
  }

  /** KVM_GET_STATS_FD of the VM (vcpuId undefined) or a vCPU: every u64 statistic by name. */
  stats(vcpuId?: number): Record<string, number> {
    const fd = vcpuId === undefined ? this.fd : this.vcpus.get(vcpuId)?.fd;
    if (fd === undefined) throw einval("vcpuId", `no vCPU ${String(vcpuId)}`);
    const sfd = check(this.libc, this.libc.ioctlInt(fd, KVM_GET_STATS_FD, 0), "KVM_GET_STATS_FD");
    try {
      return readStats(sfd);
    } finally {
      closeSync(sfd);
    }
  }

  /** Closes every fd and unmaps every mapping. */
  close(): void {
    for (const v of this.vcpus.values()) closeSync(v.fd);
    this.vcpus.clear();
    closeSync(this.fd);
    for (const m of this.maps.splice(0)) this.libc.munmap(m.ptr, m.len);
    this.bitmaps.clear();
  }
}

/** Reads a binary stats fd (struct kvm_stats_header, descriptors, data) into name -> value. */
export function readStats(fd: number): Record<string, number> {
  const hdr = Buffer.alloc(24);
  readSync(fd, hdr, 0, 24, 0);
  const nameSize = hdr.readUInt32LE(KVM_STATS_HEADER.name_size);
  const numDesc = hdr.readUInt32LE(KVM_STATS_HEADER.num_desc);
  const descOff = hdr.readUInt32LE(KVM_STATS_HEADER.desc_offset);
  const dataOff = hdr.readUInt32LE(KVM_STATS_HEADER.data_offset);
  const descLen = KVM_STATS_DESC_SIZE + nameSize;
  const desc = Buffer.alloc(numDesc * descLen);
  readSync(fd, desc, 0, desc.length, descOff);
  const out: Record<string, number> = {};
  let dataLen = 0;
  const items: { name: string; off: number; size: number }[] = [];
  for (let i = 0; i < numDesc; i++) {
    const d = i * descLen;
    const size = desc.readUInt16LE(d + 6);
    const off = desc.readUInt32LE(d + 8);
    const raw = desc.subarray(d + KVM_STATS_DESC_SIZE, d + descLen);
    const name = raw.subarray(0, raw.indexOf(0) < 0 ? raw.length : raw.indexOf(0)).toString("latin1");
    items.push({ name, off, size });
    dataLen = Math.max(dataLen, off + size * 8);
  }
  const data = Buffer.alloc(dataLen);
  readSync(fd, data, 0, dataLen, dataOff);
  for (const it of items) if (it.size >= 1) out[it.name] = Number(data.readBigUInt64LE(it.off));
  return out;
}

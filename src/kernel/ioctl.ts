/**
 * The /dev/kvm ABI the kernel backend uses: ioctl numbers built with the _IO/_IOR/_IOW/_IOWR
 * macros of asm-generic/ioctl.h from the sizes of the x86-64 structs they carry, capability
 * numbers, exit reasons and struct offsets (include/uapi/linux/kvm.h, arch/x86's asm/kvm.h).
 * The numbers are computed, not copied, so that a wrong struct size shows as a wrong number in
 * the unit test that checks them against the header's values.
 */

const _IOC_NRBITS = 8;
const _IOC_TYPEBITS = 8;
const _IOC_SIZEBITS = 14;
const _IOC_NRSHIFT = 0;
const _IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS;
const _IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS;
const _IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS;
export const _IOC_NONE = 0;
export const _IOC_WRITE = 1;
export const _IOC_READ = 2;

/** _IOC(dir, type, nr, size), as an unsigned 32-bit number. */
export function _IOC(dir: number, type: number, nr: number, size: number): number {
  if (size < 0 || size >= 1 << _IOC_SIZEBITS) throw new RangeError(`ioctl size ${size} does not fit 14 bits`);
  return (
    ((dir << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (type << _IOC_TYPESHIFT) | (nr << _IOC_NRSHIFT)) >>>
    0
  );
}
export const _IO = (type: number, nr: number): number => _IOC(_IOC_NONE, type, nr, 0);
export const _IOR = (type: number, nr: number, size: number): number => _IOC(_IOC_READ, type, nr, size);
export const _IOW = (type: number, nr: number, size: number): number => _IOC(_IOC_WRITE, type, nr, size);
export const _IOWR = (type: number, nr: number, size: number): number =>
  _IOC(_IOC_READ | _IOC_WRITE, type, nr, size);

export const KVMIO = 0xae;
export const KVM_API_VERSION = 12;

/** sizeof() of the structs the ioctls carry (x86-64). */
export const SIZEOF = {
  /** u32 slot, u32 flags, u64 guest_phys_addr, u64 memory_size, u64 userspace_addr. */
  kvm_userspace_memory_region: 32,
  /** u32 slot, u32 padding1, union { void *dirty_bitmap; u64 padding2 }. */
  kvm_dirty_log: 16,
  /** u32 slot, u32 num_pages, u64 first_page, union { void *dirty_bitmap; u64 padding2 }. */
  kvm_clear_dirty_log: 24,
  /** u32 cap, u32 flags, u64 args[4], u8 pad[64]. */
  kvm_enable_cap: 104,
  /** 8 kvm_segment (24 bytes), 2 kvm_dtable (16), cr0 cr2 cr3 cr4 cr8 efer apic_base, u64 interrupt_bitmap[4]. */
  kvm_sregs: 312,
  /** 16 general registers, rip, rflags. */
  kvm_regs: 144,
  /** u32 nent, u32 padding, then the entries. */
  kvm_cpuid2: 8,
  /** u32 function, index, flags, eax, ebx, ecx, edx, padding[3]. */
  kvm_cpuid_entry2: 40,
  /** u32 flags, u32 slot, u64 offset. */
  kvm_dirty_gfn: 16,
} as const;

// System ioctls (on the /dev/kvm fd).
export const KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
export const KVM_CREATE_VM = _IO(KVMIO, 0x01);
export const KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
export const KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);
export const KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, SIZEOF.kvm_cpuid2);
// VM ioctls.
export const KVM_CREATE_VCPU = _IO(KVMIO, 0x41);
export const KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, SIZEOF.kvm_dirty_log);
export const KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, SIZEOF.kvm_userspace_memory_region);
export const KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, SIZEOF.kvm_enable_cap);
export const KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xc0, SIZEOF.kvm_clear_dirty_log);
export const KVM_RESET_DIRTY_RINGS = _IO(KVMIO, 0xc7);
/** On a VM fd: the VM's stats; on a vCPU fd: the vCPU's. */
export const KVM_GET_STATS_FD = _IO(KVMIO, 0xce);
// vCPU ioctls.
export const KVM_RUN = _IO(KVMIO, 0x80);
export const KVM_GET_REGS = _IOR(KVMIO, 0x81, SIZEOF.kvm_regs);
export const KVM_SET_REGS = _IOW(KVMIO, 0x82, SIZEOF.kvm_regs);
export const KVM_GET_SREGS = _IOR(KVMIO, 0x83, SIZEOF.kvm_sregs);
export const KVM_SET_SREGS = _IOW(KVMIO, 0x84, SIZEOF.kvm_sregs);
export const KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, SIZEOF.kvm_cpuid2);

// Capabilities (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP).
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
export const KVM_CAP_DIRTY_LOG_RING = 192;
export const KVM_CAP_BINARY_STATS_FD = 203;
export const KVM_CAP_DIRTY_LOG_RING_ACQ_REL = 223;
export const KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP = 225;

/** The dirty ring's pages in the vCPU fd's mmap space, in pages (x86). */
export const KVM_DIRTY_LOG_PAGE_OFFSET = 64;
export const KVM_DIRTY_GFN_F_DIRTY = 1 << 0;
export const KVM_DIRTY_GFN_F_RESET = 1 << 1;

// Exit reasons (kvm_run.exit_reason).
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_DIRTY_RING_FULL = 31;
export const KVM_EXIT_IO_OUT = 1;

/** struct kvm_run offsets (x86-64). */
export const KVM_RUN_OFF = {
  exit_reason: 8,
  io_direction: 32,
  io_size: 33,
  io_port: 34,
  io_count: 36,
  io_data_offset: 40,
} as const;

/** struct kvm_stats_header offsets; each descriptor is 16 bytes then its name (name_size). */
export const KVM_STATS_HEADER = {
  flags: 0,
  name_size: 4,
  num_desc: 8,
  id_offset: 12,
  desc_offset: 16,
  data_offset: 20,
} as const;
export const KVM_STATS_DESC_SIZE = 16;

/** The Linux errno numbers the backend names (asm-generic/errno-base.h). */
export const ERRNO_NAMES: Readonly<Record<number, string>> = {
  1: "EPERM",
  2: "ENOENT",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  22: "EINVAL",
  24: "EMFILE",
  25: "ENOTTY",
  28: "ENOSPC",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
};

/**
 * /dev/kvm: opening it, the system ioctls (KVM_GET_API_VERSION, KVM_CHECK_EXTENSION,
 * KVM_GET_VCPU_MMAP_SIZE, KVM_GET_SUPPORTED_CPUID) and KVM_CREATE_VM.
 *
 * A device that is missing answers KvmError(ENODEV) naming its path; one that exists but may not
 * be opened read-write answers KvmError(EACCES). Both are found with node:fs before koffi is
 * loaded; a missing koffi then answers KvmError(ENOSYS) (src/kernel/libc.ts).
 */
import { accessSync, closeSync, constants, openSync } from "node:fs";
import { KvmError } from "../errors.js";
import {
  KVM_API_VERSION,
  KVM_CHECK_EXTENSION,
  KVM_CREATE_VM,
  KVM_GET_API_VERSION,
  KVM_GET_SUPPORTED_CPUID,
  KVM_GET_VCPU_MMAP_SIZE,
  SIZEOF,
} from "./ioctl.js";
import { check, defaultKoffiLoader, KoffiLoader, Libc, loadLibc } from "./libc.js";

export const KVM_DEVICE = "/dev/kvm";

export interface KvmDeviceOptions {
  /** The device to open (default /dev/kvm); tests point it elsewhere to reach the error paths. */
  devicePath?: string;
  /** How koffi is imported (tests replace it to reach the "koffi missing" path). */
  loadKoffi?: KoffiLoader;
}

/** Maps a node:fs error on the device to the backend's typed error. */
function deviceError(path: string, e: NodeJS.ErrnoException): KvmError {
  if (e.code === "ENOENT" || e.code === "ENODEV" || e.code === "ENXIO" || e.code === "ENOTDIR")
    return new KvmError("ENODEV", `${path}: no KVM device here (${e.code}); the kernel backend cannot run`);
  if (e.code === "EACCES" || e.code === "EPERM" || e.code === "EROFS")
    return new KvmError(
      "EACCES",
      `${path}: not accessible read-write (${e.code}); add the user to the kvm group or change the device's mode`,
    );
  return new KvmError("ENODEV", `${path}: cannot open (${e.code ?? e.message})`);
}

/**
 * Whether the device can be opened read-write, without opening it or loading koffi: the
 * registry asks this before it lists the `kernel` design. Null when usable, else the reason.
 */
export function kvmDeviceProblem(path: string = KVM_DEVICE): KvmError | null {
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
    return null;
  } catch (e) {
    return deviceError(path, e as NodeJS.ErrnoException);
  }
}

/** An open /dev/kvm. */
export class KvmDevice {
  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly libc: Libc,
  ) {}

  /**
   * Opens the device (ENODEV, EACCES), loads koffi (ENOSYS) and checks KVM_GET_API_VERSION
   * (ENOSYS unless 12). The fd is closed again on any failure.
   */
  static async open(o: KvmDeviceOptions = {}): Promise<KvmDevice> {
    const path = o.devicePath ?? KVM_DEVICE;
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR);
    } catch (e) {
      throw deviceError(path, e as NodeJS.ErrnoException);
    }
    try {
      const libc = await loadLibc(o.loadKoffi ?? defaultKoffiLoader);
      const dev = new KvmDevice(path, fd, libc);
      const v = check(libc, libc.ioctlInt(fd, KVM_GET_API_VERSION, 0), `${path}: KVM_GET_API_VERSION`);
      if (v !== KVM_API_VERSION)
        throw new KvmError("ENOSYS", `${path}: KVM API version ${v}, this backend speaks ${KVM_API_VERSION}`);
      return dev;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** KVM_CHECK_EXTENSION on the system fd: 0 when absent, else the capability's value. */
  checkExtension(cap: number): number {
    return check(
      this.libc,
      this.libc.ioctlInt(this.fd, KVM_CHECK_EXTENSION, cap),
      `KVM_CHECK_EXTENSION(${cap})`,
    );
  }

  /** KVM_GET_VCPU_MMAP_SIZE: bytes of the kvm_run mapping. */
  vcpuMmapSize(): number {
    return check(this.libc, this.libc.ioctlInt(this.fd, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
  }

  /** KVM_CREATE_VM (type 0): the VM's fd. */
  createVmFd(): number {
    return check(this.libc, this.libc.ioctlInt(this.fd, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
  }

  /** KVM_GET_SUPPORTED_CPUID: a kvm_cpuid2 (header + entries) ready for KVM_SET_CPUID2. */
  supportedCpuid(maxEntries = 256): Uint8Array {
    const buf = new Uint8Array(SIZEOF.kvm_cpuid2 + maxEntries * SIZEOF.kvm_cpuid_entry2);
    new DataView(buf.buffer).setUint32(0, maxEntries, true);
    check(this.libc, this.libc.ioctlBuf(this.fd, KVM_GET_SUPPORTED_CPUID, buf), "KVM_GET_SUPPORTED_CPUID");
    return buf;
  }

  close(): void {
    closeSync(this.fd);
  }
}

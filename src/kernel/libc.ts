/**
 * The libc calls the kernel backend makes, through koffi (an optional dependency that ships
 * prebuilt binaries, so no native build step): ioctl, mmap, munmap, and errno through
 * __errno_location. koffi is imported lazily, on first use, so that kvmmu loads and runs its
 * models where koffi is not installed; the backend then says so with a typed error.
 *
 * The device itself is opened with node:fs (openSync gives a plain fd), so a missing or
 * forbidden /dev/kvm is reported before koffi is needed.
 */
import { Errno, KvmError } from "../errors.js";
import { ERRNO_NAMES } from "./ioctl.js";

/** A failed system call: `code` as KvmError knows it (else EIO), `errno` the kernel's name. */
export class KvmSyscallError extends KvmError {
  readonly errno: string;
  constructor(errno: string, message: string) {
    super(KNOWN.has(errno) ? (errno as Errno) : "EIO", message);
    this.errno = errno;
  }
}

const KNOWN: ReadonlySet<string> = new Set<Errno>([
  "EINVAL",
  "EEXIST",
  "ENOENT",
  "ENOMEM",
  "EBUSY",
  "EFAULT",
  "ETIMEDOUT",
  "EIO",
  "ENXIO",
  "E2BIG",
  "ENOSYS",
  "ENODEV",
  "EACCES",
]);

/** The errno name of a number (E123 when the table has none). */
export function errnoName(n: number): string {
  return ERRNO_NAMES[n] ?? `E${n}`;
}

/** An opaque native pointer (koffi's external object). */
export type NativePtr = object;

/** The calls the backend needs; a test may hand its own (e.g. one that throws as koffi missing). */
export interface Libc {
  /** ioctl(fd, req, arg) with an integer argument. Returns the result or -1 (see errno()). */
  ioctlInt(fd: number, req: number, arg: number): number;
  /** ioctl(fd, req, buf) with a pointer to the bytes of `buf`. */
  ioctlBuf(fd: number, req: number, buf: Uint8Array): number;
  /** mmap; null on MAP_FAILED. */
  mmap(len: number, prot: number, flags: number, fd: number, offset: number): NativePtr | null;
  munmap(p: NativePtr, len: number): number;
  /** munmap by address (the tail of a mapping). */
  munmapAt(addr: bigint, len: number): number;
  /** The address of a native pointer. */
  address(p: NativePtr): bigint;
  /** The native memory [p, p + len) as an ArrayBuffer (no copy). */
  view(p: NativePtr, len: number): ArrayBuffer;
  /** *__errno_location() */
  errno(): number;
}

export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;

/** How the backend gets koffi: `import("koffi")` unless a test replaces it. */
export type KoffiLoader = () => Promise<unknown>;

/** The specifier is a variable so that tsc does not need koffi's types to build kvmmu without it. */
const KOFFI = "koffi";
export const defaultKoffiLoader: KoffiLoader = () => import(KOFFI);

interface KoffiLike {
  load(name: string): { func(name: string, ret: string, args: string[]): (...a: unknown[]) => unknown };
  address(p: unknown): bigint;
  view(p: unknown, len: number): ArrayBuffer;
  decode(p: unknown, type: string): unknown;
}

const cache = new Map<KoffiLoader, Promise<Libc>>();

/**
 * libc through koffi. Throws KvmError(ENOSYS) saying that koffi is not installed (or does not
 * load on this platform) when the import fails; every call after a failure retries.
 */
export function loadLibc(loader: KoffiLoader = defaultKoffiLoader): Promise<Libc> {
  let p = cache.get(loader);
  if (p === undefined) {
    p = bindLibc(loader);
    cache.set(loader, p);
    p.catch(() => cache.delete(loader));
  }
  return p;
}

async function bindLibc(loader: KoffiLoader): Promise<Libc> {
  let k: KoffiLike;
  try {
    const m = (await loader()) as { default?: KoffiLike } & KoffiLike;
    k = m.default ?? m;
  } catch (e) {
    throw new KvmError(
      "ENOSYS",
      `koffi: the kernel backend needs the optional dependency koffi, which is not installed or does not load here ` +
        `(npm install koffi): ${(e as Error).message}`,
    );
  }
  let lib: ReturnType<KoffiLike["load"]>;
  try {
    lib = k.load("libc.so.6");
  } catch (e) {
    throw new KvmError("ENOSYS", `libc.so.6: cannot load the C library (${(e as Error).message})`);
  }
  const ioctlInt = lib.func("ioctl", "int", ["int", "unsigned long", "unsigned long"]);
  const ioctlBuf = lib.func("ioctl", "int", ["int", "unsigned long", "void *"]);
  const mmap = lib.func("mmap", "void *", ["void *", "size_t", "int", "int", "int", "long"]);
  const munmap = lib.func("munmap", "int", ["void *", "size_t"]);
  const munmapAt = lib.func("munmap", "int", ["unsigned long", "size_t"]);
  const errnoLocation = lib.func("__errno_location", "int *", []);
  const MAP_FAILED = 0xffffffffffffffffn;
  return {
    ioctlInt: (fd, req, arg) => ioctlInt(fd, req, arg) as number,
    ioctlBuf: (fd, req, buf) => ioctlBuf(fd, req, buf) as number,
    mmap: (len, prot, flags, fd, offset) => {
      const p = mmap(null, len, prot, flags, fd, offset) as NativePtr | null;
      return p === null || k.address(p) === MAP_FAILED ? null : p;
    },
    munmap: (p, len) => munmap(p, len) as number,
    munmapAt: (addr, len) => munmapAt(addr, len) as number,
    address: (p) => k.address(p),
    view: (p, len) => k.view(p, len),
    errno: () => k.decode(errnoLocation(), "int") as number,
  };
}

/** Throws KvmSyscallError for a -1 result, naming the call and errno. */
export function check(libc: Libc, r: number, what: string): number {
  if (r >= 0) return r;
  const e = errnoName(libc.errno());
  throw new KvmSyscallError(e, `${what}: ${e}`);
}

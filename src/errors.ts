/** Errors the API returns for bad input: an errno-like code and a message that names the argument. */
export type Errno =
  | "EINVAL"
  | "EEXIST"
  | "ENOENT"
  | "ENOMEM"
  | "EBUSY"
  | "EFAULT"
  | "ETIMEDOUT"
  | "EIO"
  | "ENXIO"
  | "E2BIG"
  | "ENOSYS"
  | "ENOPKG"
  | "ENODEV"
  | "EACCES";

export class KvmError extends Error {
  readonly code: Errno;
  constructor(code: Errno, message: string, options?: { cause?: unknown }) {
    super(`${code}: ${message}`, options);
    this.name = "KvmError";
    this.code = code;
  }
}

export function einval(arg: string, why: string): KvmError {
  return new KvmError("EINVAL", `${arg}: ${why}`);
}

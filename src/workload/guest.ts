/** The built-in guest programs a vCPU worker can run, all on the public guest context. */
import type { GuestContext } from "../guest/context.js";
import { memstress_guest, MemstressArgs } from "./memstress.js";
import {
  dirty_log_guest,
  dirty_log_incr_guest,
  DirtyLogGuestArgs,
  DirtyLogIncrGuestArgs,
} from "./dirty_log_guest.js";
import { kernbench_guest, KernbenchGuestArgs } from "./kernbench_guest.js";

export type BuiltinGuestArgs = MemstressArgs | DirtyLogGuestArgs | DirtyLogIncrGuestArgs | KernbenchGuestArgs;

/** A user's guest program: an ES module (file URL) whose entry is called with (ctx, args). */
export interface ModuleGuestArgs {
  /** `file:` URL (string or URL) of the module; its `default` export, or else `main`, is called. */
  module: string | URL;
  /** Passed to the entry; must survive structuredClone (SharedArrayBuffers are shared). */
  args?: unknown;
  kind?: undefined;
}

export type GuestArgs = BuiltinGuestArgs | ModuleGuestArgs;

export function runGuest(ctx: GuestContext, a: BuiltinGuestArgs): never {
  switch (a.kind) {
    case "memstress":
      return memstress_guest(ctx, a);
    case "dirty_log":
      return dirty_log_guest(ctx, a);
    case "dirty_log_incr":
      return dirty_log_incr_guest(ctx, a);
    case "kernbench":
      return kernbench_guest(ctx, a);
  }
}

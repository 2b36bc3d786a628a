/** The guest programs a vCPU worker can run. */
import { Vcpu } from "../vcpu/vcpu.js";
import { memstress_guest, MemstressArgs } from "./memstress.js";
import {
  dirty_log_guest,
  dirty_log_incr_guest,
  DirtyLogGuestArgs,
  DirtyLogIncrGuestArgs,
} from "./dirty_log_guest.js";
import { kernbench_guest, KernbenchGuestArgs } from "./kernbench_guest.js";

export type GuestArgs = MemstressArgs | DirtyLogGuestArgs | DirtyLogIncrGuestArgs | KernbenchGuestArgs;

export function runGuest(vcpu: Vcpu, a: GuestArgs): never {
  switch (a.kind) {
    case "memstress":
      return memstress_guest(vcpu, a);
    case "dirty_log":
      return dirty_log_guest(vcpu, a);
    case "dirty_log_incr":
      return dirty_log_incr_guest(vcpu, a);
    case "kernbench":
      return kernbench_guest(vcpu, a);
  }
}

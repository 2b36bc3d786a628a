/** The guest programs a vCPU worker can run. */
import { Vcpu } from "../vcpu/vcpu.js";
import { memstress_guest, MemstressArgs } from "./memstress.js";

export type GuestArgs = MemstressArgs;

export function runGuest(vcpu: Vcpu, a: GuestArgs): never {
  switch (a.kind) {
    case "memstress":
      return memstress_guest(vcpu, a);
  }
}

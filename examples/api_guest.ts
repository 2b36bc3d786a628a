import type { GuestContext } from "kvmmu";

/** A guest program: one 32-bit store into each of its pages, then one pass is done. */
export default function fill(ctx: GuestContext, args: { gpa: number; pages: number }): void {
  for (let p = 0; p < args.pages; p++) ctx.store32(args.gpa + p * 4096, (ctx.vcpuId << 16) | p);
  ctx.passDone(); // vm.waitPasses counts these; returning halts the vCPU until vm.stop()
}

/**
 * `kvmmu conformance`: the ioctl-level conformance table (src/verify/conformance_cases.ts) on
 * every model design and, where /dev/kvm opens, on the kernel: case | expected (KVM) | kernel |
 * <each model> | match. Exit 1 when a row does not match (an intended difference matches).
 */
import { Command } from "commander";
import { designBackend, parseDesignList } from "../mmu/design.js";
import { conformanceJson, formatConformance, runConformance } from "../verify/conformance.js";
import { kernelTarget, modelTarget } from "../verify/conformance_targets.js";
import type { ConfTarget } from "../verify/conformance_targets.js";
import { KVM_DEVICE } from "../kernel/kvm_dev.js";
import { progress } from "./parse.js";
import { CASES } from "../verify/conformance_cases.js";
import { einval } from "../errors.js";

export function registerConformance(program: Command): void {
  program
    .command("conformance")
    .description(
      "ioctl-level cases against each model design and the kernel (/dev/kvm), with KVM's expected answers",
    )
    .option("--wp <designs>", "model designs (comma list or all)", "all")
    .option("--device <path>", "the KVM device", KVM_DEVICE)
    .option("--cases <text>", "only the cases whose name contains this text")
    .option("--json", "print {cases: [{name, expected, kernel, <each design>, match}]}")
    .action(async (o: { wp: string; device: string; cases?: string; json?: boolean }) => {
      const cases = CASES.filter((c) => o.cases === undefined || c.name.includes(o.cases));
      if (cases.length === 0) throw einval("--cases", `no case name contains "${o.cases}"`);
      const models = parseDesignList("--wp", o.wp).filter((d) => designBackend(d) !== "kernel");
      let kernel: (ConfTarget & { close(): void }) | string;
      try {
        kernel = await kernelTarget({ devicePath: o.device });
      } catch (e) {
        kernel = (e as Error).message;
      }
      try {
        const r = await runConformance(models.map(modelTarget), kernel, {
          cases,
          onRow: (row) => progress(`${row.match.padEnd(8)} ${row.name}`),
        });
        process.stdout.write(
          o.json === true ? JSON.stringify(conformanceJson(r)) + "\n" : formatConformance(r) + "\n",
        );
        if (r.rows.some((x) => x.match === "NO")) process.exitCode = 1;
      } finally {
        if (typeof kernel !== "string") kernel.close();
      }
    });
}

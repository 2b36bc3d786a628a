/**
 * `kvmmu`: the command line. Each command lives in its own module and registers itself here.
 * Results go to stdout (`--json`: one JSON object); progress goes to stderr, only on a terminal.
 */
import { Command, CommanderError } from "commander";
import { KvmError } from "../errors.js";
import { registerDirtyLogPerf } from "./dirty_log_perf_cmd.js";
import { registerExplore } from "./explore_cmd.js";
import { registerDirtyLogTest } from "./dirty_log_test_cmd.js";
import { registerStress } from "./stress_cmd.js";
import { registerKernbench } from "./kernbench_cmd.js";

export const program = new Command();
program
  .name("kvmmu")
  .description(
    "The KVM x86 MMU dirty-logging path (Linux 3.11 and the 2013 lockless write-protect) on worker_threads",
  )
  .showHelpAfterError()
  .exitOverride();

registerDirtyLogPerf(program);
registerDirtyLogTest(program);
registerExplore(program);
registerStress(program);
registerKernbench(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  if (e instanceof CommanderError) {
    process.exitCode = e.exitCode;
  } else if (e instanceof KvmError) {
    process.stderr.write(`kvmmu: ${e.message}\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`kvmmu: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = 1;
  }
}

/**
 * `kvmmu`: the command line. Each command lives in its own module and registers itself here.
 * Results go to stdout (`--json`: one JSON object); progress goes to stderr, only on a terminal.
 *
 * Exit status: 0 success; 1 a check failed (violation, forbidden outcome, replay differs);
 * 2 usage or input error, printed as one line `kvmmu: EINVAL: ...`; 3 internal error;
 * a migration that cannot start (nothing listening, address in use, wrong key, busy) is a
 * runtime failure: 1, one line `kvmmu: ECONNREFUSED: ...`;
 * 130 interrupted (SIGINT), after the summary of what was measured so far.
 */
import { createRequire } from "node:module";
import { Command, CommanderError, Help, Option } from "commander";
import { KvmError } from "../errors.js";
import { MigrationError } from "../migration/stream.js";
import { registerDirtyLogPerf } from "./dirty_log_perf_cmd.js";
import { registerExplore } from "./explore_cmd.js";
import { registerDirtyLogTest } from "./dirty_log_test_cmd.js";
import { registerStress } from "./stress_cmd.js";
import { registerKernbench } from "./kernbench_cmd.js";
import { registerMigrate } from "./migrate_cmd.js";
import { registerMigratePerf } from "./migrate_perf_cmd.js";
import { registerDirtyRate } from "./dirty_rate_cmd.js";
import { registerResults } from "./results_cmd.js";
import { registerConformance } from "./conformance_cmd.js";
import { registerKernelDesign } from "../kernel/register.js";
import { EXIT_INTERRUPTED, installSigint, interrupt } from "./interrupt.js";
import { cliProgress } from "./progress.js";

export const EXIT_OK = 0;
export const EXIT_CHECK_FAILED = 1;
export const EXIT_USAGE = 2;
export const EXIT_INTERNAL = 3;

const { version } = createRequire(import.meta.url)("../../../package.json") as { version: string };

export const program = new Command();
program
  .name("kvmmu")
  .description(
    "The KVM x86 MMU dirty-logging path (Linux 3.11 and the 2013 lockless write-protect) on worker_threads",
  )
  .version(version, "-V, --version", "print the version")
  .exitOverride()
  // Commander's own error text is replaced by one `kvmmu: EINVAL: ...` line below.
  .configureOutput({ outputError: () => {} })
  // Set before the commands are added: subcommands copy it.
  .configureHelp({ optionDescription })
  .addHelpText(
    "after",
    `
Exit status:
  0    success
  1    a check failed (violation, forbidden outcome, replay not reproducible), or a
       runtime failure (migration: nothing listening, address in use, wrong key, busy)
  2    usage or input error (one line on stderr: kvmmu: EINVAL: ...)
  3    internal error
  130  interrupted (SIGINT), after printing what was measured so far`,
  );

/**
 * Commander's option text without "(default: false)" on flags, and without its default where the
 * description already states one (each default once).
 */
function optionDescription(this: void, option: Option): string {
  const text = Help.prototype.optionDescription.call(new Help(), option);
  const stated = /\(default[ :]|\bdefault:/i.test(option.description);
  if (option.defaultValue === false || (stated && option.defaultValue !== undefined))
    return text.replace(/ ?\(default: [^()]*(?:\([^()]*\)[^()]*)*\)$/, "");
  return text;
}

registerDirtyLogPerf(program);
registerDirtyLogTest(program);
registerExplore(program);
registerStress(program);
registerKernbench(program);
registerMigrate(program);
registerMigratePerf(program);
registerDirtyRate(program);
registerResults(program);
registerConformance(program);
// The real kernel joins the designs only where /dev/kvm opens (elsewhere: the models alone).
registerKernelDesign();

/** The commands that run long enough to show progress, and take --quiet to silence it. */
const LONG_RUNNING = new Set([
  "dirty-log-perf",
  "dirty-log-test",
  "explore",
  "stress",
  "kernbench",
  "migrate",
  "migrate-incoming",
  "migrate-perf",
]);
for (const c of program.commands)
  if (LONG_RUNNING.has(c.name()))
    c.option("-q, --quiet", "no progress on stderr (no status line on a terminal, no heartbeat when piped)");
program.hook("preAction", (_program, action) => {
  cliProgress.quiet = action.opts()["quiet"] === true;
  cliProgress.start();
});

function usage(msg: string): void {
  process.stderr.write(`kvmmu: EINVAL: ${msg}\n`);
  process.exitCode = EXIT_USAGE;
}

installSigint();
try {
  if (process.argv.length <= 2) usage("COMMAND: missing command; see kvmmu --help");
  else await program.parseAsync(process.argv);
  if (interrupt.signal.aborted) process.exitCode = EXIT_INTERRUPTED;
} catch (e) {
  cliProgress.done();
  if (e instanceof CommanderError) {
    // Help and --version end with exit code 0; every other commander error is a usage error.
    if (e.exitCode === 0) process.exitCode = EXIT_OK;
    // One line, with commander's "(Did you mean ...?)" kept.
    else
      usage(
        e.message
          .replace(/^error: /, "")
          .replace(/\s*\n\s*/g, " ")
          .trim(),
      );
  } else if (e instanceof MigrationError) {
    process.stderr.write(`kvmmu: ${e.message}\n`);
    process.exitCode = e.code === "EINVAL" ? EXIT_USAGE : EXIT_CHECK_FAILED;
  } else if (e instanceof KvmError) {
    process.stderr.write(`kvmmu: ${e.message}\n`);
    process.exitCode = EXIT_USAGE;
  } else {
    process.stderr.write(`kvmmu: internal error: ${(e as Error).stack ?? String(e)}\n`);
    process.exitCode = EXIT_INTERNAL;
  }
} finally {
  cliProgress.done();
}

/** The CLI's value parsers and the renaming of the library's option names to a command's flags. */
import { test } from "node:test";
import assert from "node:assert/strict";
import { KvmError } from "../../src/errors.js";
import { flagNames, withFlagNames } from "../../src/cli/parse.js";
import { MigrationError } from "../../src/migration/stream.js";

const FLAGS = {
  throttle: "--throttle",
  logMode: "--log-mode",
  dirtyLimit: "--dirty-limit",
  autoConverge: "--auto-converge",
};

test("flagNames: the argument and camelCase names become flags, a quoted value follows its flag", () => {
  assert.equal(
    flagNames('EINVAL: dirtyLimit: needs logMode "dirty-ring" (got dirty-log)', FLAGS),
    "EINVAL: --dirty-limit: needs --log-mode dirty-ring (got dirty-log)",
  );
  assert.equal(
    flagNames('EINVAL: throttle: dirty-limit needs logMode "dirty-ring" (got clear-log)', FLAGS),
    "EINVAL: --throttle: dirty-limit needs --log-mode dirty-ring (got clear-log)",
  );
  // A plain word in the text stays prose; an unknown argument stays as it is.
  assert.equal(
    flagNames("EINVAL: dirtyLimit: not with autoConverge (one throttle at a time)", FLAGS),
    "EINVAL: --dirty-limit: not with --auto-converge (one throttle at a time)",
  );
  assert.equal(flagNames("EINVAL: memoryBytes: too small", FLAGS), "EINVAL: memoryBytes: too small");
});

test("withFlagNames: EINVAL of either error class renamed, class and code kept; other errors untouched", async () => {
  for (const mk of [
    () => new KvmError("EINVAL", 'dirtyLimit: needs logMode "dirty-ring" (got dirty-log)'),
    () => new MigrationError("EINVAL", 'dirtyLimit: needs logMode "dirty-ring" (got dirty-log)'),
  ]) {
    const e0 = mk();
    await assert.rejects(
      withFlagNames(FLAGS, () => Promise.reject(e0)),
      (e: unknown) =>
        e === e0 &&
        e0.code === "EINVAL" &&
        e0.message === "EINVAL: --dirty-limit: needs --log-mode dirty-ring (got dirty-log)",
    );
  }
  const eio = new KvmError("EIO", "dirtyLimit: failed");
  await assert.rejects(
    withFlagNames(FLAGS, () => Promise.reject(eio)),
    (e: unknown) => e === eio && eio.message === "EIO: dirtyLimit: failed",
  );
  assert.equal(await withFlagNames(FLAGS, () => Promise.resolve(7)), 7);
});

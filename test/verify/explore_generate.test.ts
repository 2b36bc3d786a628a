/**
 * Generated programs (kvmmu explore --generate): none breaks an invariant on the code as it
 * should be; with a catalog bug switched on they find the bugs listed in FOUND (docs/verification.md
 * says why not the others), shrink the program, and the replay string re-runs the violation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeReplay, encodeReplay, generate, replayGenerated } from "../../src/verify/generate.js";
import { checkProgram, Program, PROGRAM_VERSION } from "../../src/verify/program.js";
import { designNames, designSupportsMode } from "../../src/mmu/design.js";
import { BugName, MmuMode } from "../../src/kvm_host.js";
import { runKvmmu } from "../helpers/cli.js";

const base = { seed: 1, strategy: "pct" as const, designs: designNames(), bug: null };

/** (design, MMU) pairs a program runs on: every design in TDP mode, those with shadow paging in shadow. */
function designModePairs(): number {
  return [MmuMode.Tdp, MmuMode.Shadow]
    .map((m) => designNames().filter((d) => designSupportsMode(d, m)).length)
    .reduce((a, b) => a + b);
}

test("generated programs on the code as it should be: every design, both MMUs, no violation", async () => {
  const r = await generate({ ...base, programs: 6, schedules: 100, modes: ["tdp", "shadow"] });
  assert.equal(
    r.violations,
    0,
    r.firstViolation ? `${r.firstViolation.text}: ${r.firstViolation.invariant}` : "",
  );
  assert.equal(r.programs, 6);
  assert.equal(r.schedules, 6 * 100 * designModePairs());
});

/** The catalog bugs generated programs find (seed 1, at most 10 programs of 300 schedules). */
const FOUND: BugName[] = [
  "dirty-before-rmap",
  "skip-flush",
  "fast-pf-large",
  "initially-set-zero",
  "ring-flags-before-entry",
];

for (const bug of FOUND)
  test(`generated programs find catalog bug ${bug}, shrink it, and the replay re-runs it`, async () => {
    const r = await generate({ ...base, bug, programs: 10, schedules: 300, modes: ["tdp"], shrinkLimit: 20 });
    assert.equal(r.violations, 1, `${bug} not found in ${r.programs} programs`);
    const v = r.firstViolation!;
    const size = (p: Program): number =>
      p.vcpus.flat().length + p.migration.length + p.hosts.flat().length + p.prefault.length;
    assert.ok(size(v.program) <= size(r.unshrunk!), "shrinking never grows the program");
    const again = await replayGenerated(v.replay);
    assert.equal(again.violation, v.invariant);
    assert.equal(again.schedule, v.schedule);
  });

test("replay strings: round trip; another version, damage and bad programs are EINVAL naming --replay", () => {
  const p = checkProgram({
    version: PROGRAM_VERSION,
    log: "manual",
    thp: false,
    prefault: [1],
    vcpus: [[{ op: "write", gfn: 1 }]],
    migration: [{ op: "clear", first: 0, pages: 1024 }],
    hosts: [[{ op: "zap", gfn: 1 }]],
  });
  const s = encodeReplay(p, "locked", "shadow", null, [0, 0, 1, 2]);
  assert.deepEqual(decodeReplay(s), {
    program: p,
    design: "locked",
    mode: "shadow",
    bug: null,
    choices: [0, 0, 1, 2],
  });
  assert.throws(
    () => decodeReplay(s.replace(/^gen1:/, "gen2:")),
    /EINVAL: --replay: .*generator version 2; this kvmmu reads version 1/,
  );
  const old = encodeReplay({ ...p, version: 0 }, "locked", "tdp", null, [0]);
  assert.throws(() => decodeReplay(old), /EINVAL: --replay: the program is from generator version 0/);
  assert.throws(() => decodeReplay("gen1:!!"), /EINVAL: --replay/);
  assert.throws(() => decodeReplay("gen1:" + Buffer.from("[1").toString("base64url")), /damaged/);
  assert.throws(() => decodeReplay(encodeReplay(p, "locked", "tdp", null, [3])), /--replay: item "3"/);
  const badClear = { ...p, migration: [{ op: "clear", first: 10, pages: 4 }] } as unknown as Program;
  assert.throws(() => decodeReplay(encodeReplay(badClear, "locked", "tdp", null, [0])), /multiple of 64/);
  assert.throws(() => decodeReplay(encodeReplay(p, "nope", "tdp", null, [0])), /unknown design "nope"/);
});

test("explore --generate: bad input is EINVAL naming the option; --json has the fields", async () => {
  const cases: [string[], RegExp][] = [
    [["--generate", "--scenario", "skip-flush"], /EINVAL: --generate: --generate and --scenario/],
    [["--generate", "--programs", "0"], /EINVAL: --programs: 0 is out of range/],
    [["--generate", "--programs", "many"], /EINVAL: --programs: "many" is not an integer/],
    [["--programs", "3", "--scenario", "skip-flush"], /EINVAL: --programs: needs --generate/],
    [["--replay", "gen7:e30"], /EINVAL: --replay: .*generator version 7/],
    [["--generate", "--wp", "nope"], /EINVAL: --wp/],
  ];
  for (const [args, re] of cases) {
    const r = await runKvmmu(["explore", ...args]);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.err}`);
    assert.match(r.err, re);
  }
  const ok = await runKvmmu(["explore", "--generate", "--programs", "1", "--schedules", "5", "--json"]);
  assert.equal(ok.code, 0, ok.err);
  const j = JSON.parse(ok.out) as Record<string, unknown>;
  for (const k of ["programs", "schedules", "violations", "firstViolation"]) assert.ok(k in j, k);
  assert.equal(j.programs, 1);
  assert.equal(j.schedules, 5 * designModePairs());
});

test("explore --generate --bug prints the shrunk program, its schedule and a replay that reproduces it", async () => {
  const r = await runKvmmu([
    "explore",
    "--generate",
    "--bug",
    "skip-flush",
    "--programs",
    "5",
    "--schedules",
    "300",
    "--mode",
    "tdp",
    "--wp",
    "lockless",
  ]);
  assert.equal(r.code, 1, r.err);
  assert.match(r.out, /program \(shrunk in \d+ tries\), on lockless: log /);
  assert.match(r.out, /schedule \(\d+ steps\): generated@bug\/wp=lockless:/);
  const replay = /kvmmu explore --replay (gen1:\S+)/.exec(r.out)![1];
  const again = await runKvmmu(["explore", "--replay", replay]);
  assert.equal(again.code, 1);
  assert.match(again.out, /violation: lost dirty page/);
});

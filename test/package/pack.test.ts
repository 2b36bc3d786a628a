/**
 * The package as a user gets it: `npm pack`, install the tarball into a fresh project, run the
 * `kvmmu` binary, and type-check (strict, NodeNext) and run a TypeScript consumer that imports
 * from "kvmmu". dist/ is built by `pretest`; the pack skips scripts so it ships that build.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("../../../", import.meta.url));

/** What a library user installs: the bytes of every file under `dir` (as `du --apparent-size`). */
function treeBytes(dir: string): number {
  let n = 0;
  for (const f of readdirSync(dir, { recursive: true, encoding: "utf8" })) {
    const st = lstatSync(join(dir, f));
    if (st.isFile()) n += st.size;
  }
  return n;
}

const CONSUMER = `import { Vm, KvmError, KVM_MEM_LOG_DIRTY_PAGES, PAGE_SIZE, bitmap_weight } from "kvmmu";
import type { Errno } from "kvmmu";

const vm = Vm.create({ memory: 4 << 20, wp: "lockless" });
const hva = vm.mmap(2 << 20, { thp: false });
vm.setUserMemoryRegion({
  slot: 0,
  flags: KVM_MEM_LOG_DIRTY_PAGES,
  guestPhysAddr: 1 << 20,
  memorySize: 2 << 20,
  userspaceAddr: hva,
});
const data = new TextEncoder().encode("hello from the host");
vm.writeGuest((1 << 20) + PAGE_SIZE - 5, data);
const back = new TextDecoder().decode(vm.readGuest((1 << 20) + PAGE_SIZE - 5, data.length));
const dirty: number = bitmap_weight(vm.getDirtyLog(0));
let code: Errno | "none" = "none";
try {
  vm.readGuest(0, 8);
} catch (e) {
  if (e instanceof KvmError) code = e.code;
}
console.log(JSON.stringify({ back, dirty, code }));
`;

test(
  "npm pack: the tarball installs, runs `kvmmu --help`, and a strict TypeScript consumer builds and runs",
  { timeout: 240_000 },
  () => {
    const tmp = mkdtempSync(join(tmpdir(), "kvmmu-pack-"));
    try {
      const run = (cmd: string, args: string[], cwd: string): string =>
        execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
      run("npm", ["pack", "--ignore-scripts", "--pack-destination", tmp], repo);
      const tgz = readdirSync(tmp).find((f) => f.endsWith(".tgz"));
      assert.ok(tgz, "npm pack made a tarball");
      const proj = join(tmp, "consumer");
      run("mkdir", ["-p", proj], tmp);
      writeFileSync(
        join(proj, "package.json"),
        JSON.stringify({ name: "consumer", private: true, type: "module" }),
      );
      run("npm", ["install", join(tmp, tgz), "--no-audit", "--no-fund", "--prefer-offline"], proj);
      // The binary (its dist/ came in the tarball), through npx once; then through the link npm
      // made for it (npx would only start npm again in front of each command).
      const help = run("npx", ["--no-install", "kvmmu", "--help"], proj);
      assert.match(help, /dirty-log-perf/);
      const kvmmu = join(proj, "node_modules/.bin/kvmmu");
      // The report's plotting, DOM and schema libraries are optional peers: not installed for a
      // library user, and the package with its dependencies stays light.
      for (const p of ["@observablehq/plot", "linkedom", "@sinclair/typebox"])
        assert.equal(existsSync(join(proj, "node_modules", p)), false, `${p} is not installed`);
      const bytes = treeBytes(join(proj, "node_modules"));
      assert.ok(
        bytes <= 10 * 2 ** 20,
        `node_modules is ${(bytes / 2 ** 20).toFixed(1)} MiB (aim: <= 10 MiB)`,
      );
      // Every other command works without them; compare and report say what to install.
      const perf = run(
        kvmmu,
        [
          "dirty-log-perf",
          "-v",
          "1",
          "-b",
          "2M",
          "-i",
          "1",
          "--wp",
          "locked",
          "--contention",
          "none",
          "--json",
        ],
        proj,
      );
      assert.equal((JSON.parse(perf) as { command: string }).command, "dirty-log-perf");
      writeFileSync(join(proj, "r.json"), perf);
      for (const cmd of [
        ["compare", "r.json"],
        ["report", "r.json", "-o", "r.html"],
      ]) {
        let stderr = "";
        let status = 0;
        try {
          execFileSync(kvmmu, cmd, {
            cwd: proj,
            encoding: "utf8",
            stdio: "pipe",
          });
        } catch (e) {
          ({ stderr, status } = e as { stderr: string; status: number });
        }
        assert.equal(status, 2, `kvmmu ${cmd[0]} without its optional packages exits 2`);
        assert.match(stderr, /^kvmmu: ENOPKG: .*npm install @sinclair\/typebox@/m, stderr);
      }
      // Every source map in the package points at a source the package ships (stack traces and
      // debuggers can show the TypeScript).
      const pkg = join(proj, "node_modules/kvmmu");
      const maps = readdirSync(join(pkg, "dist/src"), { recursive: true, encoding: "utf8" }).filter((f) =>
        f.endsWith(".js.map"),
      );
      assert.ok(maps.length > 50, `${maps.length} source maps`);
      for (const m of maps) {
        const map = JSON.parse(readFileSync(join(pkg, "dist/src", m), "utf8")) as { sources: string[] };
        for (const src of map.sources)
          assert.ok(existsSync(join(pkg, "dist/src", dirname(m), src)), `${m}: ${src} is not in the package`);
      }
      // A strict NodeNext consumer, and the examples that ship in the package, built against it
      // under the strictest common settings (strict and more), with this repository's compiler
      // and Node types: one compiler run for both.
      writeFileSync(join(proj, "main.ts"), CONSUMER);
      cpSync(join(pkg, "examples"), join(proj, "examples"), { recursive: true });
      writeFileSync(
        join(proj, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            strict: true,
            noUncheckedIndexedAccess: true,
            exactOptionalPropertyTypes: true,
            rootDir: ".",
            outDir: "out",
            types: ["node"],
            typeRoots: [join(repo, "node_modules/@types")],
          },
          files: ["main.ts"],
          include: ["examples/**/*.ts"],
        }),
      );
      run(join(repo, "node_modules/.bin/tsc"), ["-p", "."], proj);
      assert.ok(existsSync(join(proj, "out/examples")), "the examples were compiled too");
      const out = JSON.parse(run(process.execPath, ["out/main.js"], proj)) as Record<string, unknown>;
      assert.deepEqual(out, { back: "hello from the host", dirty: 2, code: "EFAULT" });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  },
);

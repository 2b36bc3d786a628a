/**
 * The package as a user gets it: `npm pack`, install the tarball into a fresh project, run the
 * `kvmmu` binary, and type-check (strict, NodeNext) and run a TypeScript consumer that imports
 * from "kvmmu". dist/ is built by `pretest`; the pack skips scripts so it ships that build.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = fileURLToPath(new URL("../../../", import.meta.url));

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
      // The binary (its dist/ came in the tarball).
      const help = run("npx", ["--no-install", "kvmmu", "--help"], proj);
      assert.match(help, /dirty-log-perf/);
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
      // A strict NodeNext consumer, type-checked with this repository's compiler and Node types.
      writeFileSync(join(proj, "main.ts"), CONSUMER);
      writeFileSync(
        join(proj, "tsconfig.json"),
        JSON.stringify({
          compilerOptions: {
            target: "ES2022",
            module: "NodeNext",
            moduleResolution: "NodeNext",
            strict: true,
            outDir: "out",
            types: ["node"],
            typeRoots: [join(repo, "node_modules/@types")],
          },
          files: ["main.ts"],
        }),
      );
      run(join(repo, "node_modules/.bin/tsc"), ["-p", "."], proj);
      const out = JSON.parse(run(process.execPath, ["out/main.js"], proj)) as Record<string, unknown>;
      assert.deepEqual(out, { back: "hello from the host", dirty: 2, code: "EFAULT" });
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  },
);

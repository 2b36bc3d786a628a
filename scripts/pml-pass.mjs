// The PML path against write protection on one thread: a vCPU driven on this thread writes every
// page of a 4 KiB-mapped slot (one write64 a page, sequential) pass after pass, a GET_DIRTY_LOG
// (which re-arms every page) between passes, the two variants alternated pass by pass. Prints the
// CPU ns per write of each (median of the passes after the first) and their ratio. With the vCPU
// on the main thread, `node --cpu-prof` sees it (a vCPU worker is not profiled); PROF=file
// profiles the passes only (not the setup) through node:inspector.
//   node scripts/pml-pass.mjs [DIST=dist] [PAGES=65536] [PASSES=10]
import { writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [distArg = "dist", pagesArg = "65536", passesArg = "10"] = process.argv.slice(2);
const dist = pathToFileURL(resolve(distArg)).href;
const { Vm } = await import(`${dist}/src/vm.js`);
const { Vcpu } = await import(`${dist}/src/vcpu/vcpu.js`);
const { vmKvm } = await import(`${dist}/src/vm/internal.js`);
const { KVM_MEM_LOG_DIRTY_PAGES } = await import(`${dist}/src/kvm_host.js`);
const pages = Number(pagesArg);
const passes = Number(passesArg);

function make(pml) {
  const bytes = pages * 4096;
  const vm = Vm.create({ memory: bytes + (16 << 20), wp: "tdp-mmu", maxVcpus: 1, pml });
  const hva = vm.mmap(bytes, { thp: false });
  const region = { slot: 0, flags: 0, guestPhysAddr: 0, memorySize: bytes, userspaceAddr: hva };
  vm.setUserMemoryRegion(region);
  vm.createVcpu(0);
  const v = new Vcpu(vmKvm(vm), 0, 12);
  v.enterGuest();
  for (let g = 0; g < pages; g++) v.write64(g, 0, 1, 0);
  v.exitGuest();
  vm.setUserMemoryRegion({ ...region, flags: KVM_MEM_LOG_DIRTY_PAGES });
  return { vm, v, ns: [], f0: v.fault.fast + v.fault.slow };
}

function weight(bm) {
  let n = 0;
  for (let x of bm) for (; x !== 0; x &= x - 1) n++;
  return n;
}

const runs = { pml: make(true), wp: make(false) };
let session = null;
if (process.env.PROF) {
  const { Session } = await import("node:inspector");
  session = new Session();
  session.connect();
  session.post("Profiler.enable");
  session.post("Profiler.start");
}
for (let p = 0; p < passes; p++)
  for (const r of Object.values(runs)) {
    const c0 = process.cpuUsage();
    r.v.enterGuest(); // takes the GET's TLB flush request
    for (let g = 0; g < pages; g++) r.v.write64(g, 0, p, 0);
    r.v.exitGuest(); // flushes the PML buffer
    const c = process.cpuUsage(c0);
    r.ns.push(((c.user + c.system) * 1000) / pages);
    const n = weight(r.vm.getDirtyLog(0));
    if (n !== pages) throw new Error(`pass ${p}: ${n} dirty pages of ${pages}`);
  }
if (session)
  session.post("Profiler.stop", (_e, r) => writeFileSync(process.env.PROF, JSON.stringify(r.profile)));
const median = (a) => [...a].sort((x, y) => x - y)[a.length >> 1];
const m = {};
for (const [k, r] of Object.entries(runs)) {
  m[k] = median(r.ns.slice(1));
  const faults = r.v.fault.fast + r.v.fault.slow - r.f0;
  console.log(
    `${k}: ${m[k].toFixed(1)} CPU ns/write (passes: ${r.ns.map((x) => x.toFixed(0)).join(" ")}), faults while logging ${faults}`,
  );
}
console.log(`wp/pml ${(m.wp / m.pml).toFixed(2)}`);

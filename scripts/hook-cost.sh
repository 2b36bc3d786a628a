#!/usr/bin/env bash
# What the controlled-scheduling hook costs when it is off: builds a copy of the engine with the
# hook calls removed from src/sync/atomic.ts, then runs dirty-log-perf alternately with the real
# build and the copy (same flags, same seed) and prints both medians.
#   scripts/hook-cost.sh [rounds] [dirty-log-perf flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}; shift || true
flags=("$@"); [ ${#flags[@]} -gt 0 ] || flags=(-i 6 --contention none --park)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r src tsconfig.json package.json "$tmp"/
ln -s "$PWD/node_modules" "$tmp/node_modules"
# The baseline: no scheduler support at all, the wrappers are the Atomics builtins themselves.
cat > "$tmp/src/sync/atomic.ts" <<'TS'
export const enum Op { Load = 0, Store = 1, Xchg = 2, Cas = 3, Or = 4, And = 5, Add = 6, GuestRead = 7, GuestWrite = 8, Spin = 9 }
export type SchedHook = (op: Op, arr: Int32Array, index: number) => void;
export const aload: (a: Int32Array, i: number) => number = Atomics.load;
export const astore: (a: Int32Array, i: number, v: number) => void = Atomics.store;
export const axchg: (a: Int32Array, i: number, v: number) => number = Atomics.exchange;
export const acas: (a: Int32Array, i: number, e: number, v: number) => number = Atomics.compareExchange;
export const aor: (a: Int32Array, i: number, v: number) => number = Atomics.or;
export const aand: (a: Int32Array, i: number, v: number) => number = Atomics.and;
export const aadd: (a: Int32Array, i: number, v: number) => number = Atomics.add;
export const spinPoint = (_a: Int32Array, _i: number): void => {};
export const guestPoint = (_w: boolean, _a: Int32Array, _i: number): void => {};
export function setSchedHook(_h: SchedHook | null): void {}
export function schedHookInstalled(): boolean { return false; }
TS
sed -i 's/"include": \[.*\]/"include": ["src\/**\/*.ts"]/' "$tmp/tsconfig.json"
npx tsc -p "$tmp/tsconfig.json" --noUnusedLocals false --noUnusedParameters false || true
npm run build --silent || true
for r in $(seq "$rounds"); do
  for v in with without; do
    main=dist/src/cli/main.js; [ $v = without ] && main="$tmp/dist/src/cli/main.js"
    node "$main" dirty-log-perf "${flags[@]}" --json | node -e '
      let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const r=JSON.parse(s);
      for (const [k,v] of Object.entries(r.results)) console.log(process.argv[1], k, v.avgGetDirtyLogNs.toFixed(0), v.guestWritesPerSec.toFixed(0));})' "$v"
  done
done | node -e '
  let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{
    const m={};for(const l of s.trim().split("\n")){const [v,k,g,w]=l.split(" ");(m[v+" "+k]??=[]).push([+g,+w]);}
    const med=a=>{a=[...a].sort((x,y)=>x-y);return a[a.length>>1];};
    for(const [key,rows] of Object.entries(m)) console.log(key.padEnd(18),"median get-dirty-log",(med(rows.map(r=>r[0]))/1e6).toFixed(2),"ms, median guest writes/s",(med(rows.map(r=>r[1]))/1e6).toFixed(3),"M");
    for (const k of ["locked","lockless"]) { const a=m["with "+k], b=m["without "+k]; if(a&&b) console.log(k, "hook on/off: get-dirty-log", (med(a.map(r=>r[0]))/med(b.map(r=>r[0]))).toFixed(3)+"x, guest throughput", (med(a.map(r=>r[1]))/med(b.map(r=>r[1]))).toFixed(3)+"x"); }
  })'

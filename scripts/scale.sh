#!/usr/bin/env bash
# Scale sweep: dirty-log-perf with one vCPU, vCPUs parked, no notifier churn, one write-protect
# design at a time, for guest sizes from 256 MiB up (default 256M 512M 1G 2G 4G 8G 16G; pass
# sizes to run fewer). Per size it prints populate (the guest's first pass, which includes
# first touch of fresh memory), first touch alone (a fresh SharedArrayBuffer of the same size,
# one write per 4 KiB page, in a separate process), enable-logging and the median get-dirty-log,
# each also per GiB. Flat per-GiB columns mean the cost grows linearly with guest size.
# Host memory is one Int32Array, so sizes whose guest plus page tables pass 16 GiB are refused
# with ENOMEM (a line says so).
#   scripts/scale.sh [--wp lockless|locked] [--mode tdp|shadow] [sizes...]
set -euo pipefail
cd "$(dirname "$0")/.."
wp=lockless
mode=tdp
while [ $# -gt 0 ]; do
  case "$1" in
    --wp) wp=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    *) break ;;
  esac
done
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(256M 512M 1G 2G 4G 8G 16G)
printf '%-6s %12s %12s %12s %14s %12s %14s %12s\n' size populate_ms touch_ms touch_ms/GiB enable_ms enable/GiB getlog_ms getlog/GiB
for b in "${sizes[@]}"; do
  gib=$(node -e 'const s=process.argv[1];const m={K:2**10,M:2**20,G:2**30}[s.slice(-1).toUpperCase()]??1;console.log(parseFloat(s)*m/2**30)' "$b")
  if ! out=$(node dist/src/cli/main.js dirty-log-perf -v 1 -b "$b" --wp "$wp" --mode "$mode" --contention none --park -i 5 --json 2>/tmp/scale.$$.err); then
    echo "$b: $(tail -1 /tmp/scale.$$.err)"
    continue
  fi
  touch=$(node -e 'const n=Math.round(+process.argv[1]*2**30);const t=performance.now();const a=new Int32Array(new SharedArrayBuffer(n));for(let i=0;i<a.length;i+=1024)a[i]=1;console.log((performance.now()-t).toFixed(1))' "$gib")
  node -e '
    const [b, gib, touch] = [process.argv[1], +process.argv[2], +process.argv[3]];
    const j = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const r = Object.values(j.results)[0];
    const f = (x) => x.toFixed(1);
    const pop = r.populateNs / 1e6, en = r.enableLoggingNs / 1e6, gl = r.getDirtyLog.medianNs / 1e6;
    console.log([b.padEnd(6), f(pop).padStart(12), f(touch).padStart(12), f(touch / gib).padStart(12),
      f(en).padStart(14), f(en / gib).padStart(12), f(gl).padStart(14), f(gl / gib).padStart(12)].join(" "));
  ' "$b" "$gib" "$touch" <<<"$out"
done
rm -f /tmp/scale.$$.err

#!/usr/bin/env bash
# Scale sweep: dirty-log-perf with one vCPU, parked during the harvest, no notifier churn, the
# classic KVM_GET_DIRTY_LOG (-g: the GET write-protects), one write-protect design at a time (a
# 16 GiB guest leaves no room for a second VM), for guest sizes from 256 MiB up (default 256M 512M
# 1G 2G 4G 8G 16G; pass sizes to run fewer). Per size:
#   first touch   host_mmap of the guest memory: zeroing every frame of the fresh SharedArrayBuffer
#                 is its first touch (page faults of the host kernel), timed apart from populate;
#   populate      the guest's first pass (faults, 2 MiB mappings), wall clock;
#   enable        enabling dirty logging (write-protect of the slot), wall clock and process CPU;
#   get-dirty-log the median GET, wall clock and process CPU, per GiB and per dirty page, and the
#                 median involuntary context switches during one GET (other processes' load).
# Flat per-GiB columns mean the cost grows linearly with guest size. The wall clock of a call that
# outlasts the scheduler's time slice on a loaded machine includes other processes' turns; the
# process CPU time does not (vCPUs parked, no host thread: it is the harvester's).
# Host memory is one Int32Array of at most 2^32 words (16 GiB); sizes past it, or past the memory
# the machine has free, are refused with ENOMEM (a line says so).
#   scripts/scale.sh [--wp lockless|locked] [--mode tdp|shadow] [-i N] [sizes...]
set -euo pipefail
cd "$(dirname "$0")/.."
wp=lockless
mode=tdp
iters=3
while [ $# -gt 0 ]; do
  case "$1" in
    --wp) wp=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    -i) iters=$2; shift 2 ;;
    *) break ;;
  esac
done
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(256M 512M 1G 2G 4G 8G 16G)
echo "# scale: --wp $wp --mode $mode -i $iters; $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg); $(awk '/MemAvailable/ {printf "%.1f GiB available", $2/2^20}' /proc/meminfo)"
printf '%-5s %9s %9s %9s %9s %9s %9s %9s %9s %9s %8s %8s %7s %6s\n' size touch_ms touch/GiB pop/GiB en_ms en/GiB en_cpu/G get_ms get/GiB getcpu/G ns/page cpu_ns/p preempt meta%
err=$(mktemp)
trap 'rm -f "$err"' EXIT
for b in "${sizes[@]}"; do
  gib=$(node -e 'const s=process.argv[1];const m={K:2**10,M:2**20,G:2**30}[s.slice(-1).toUpperCase()]??1;console.log(parseFloat(s)*m/2**30)' "$b")
  if ! out=$(node dist/src/cli/main.js dirty-log-perf -v 1 -b "$b" -g --wp "$wp" --mode "$mode" --contention none --park -i "$iters" --json 2>"$err"); then
    echo "$b: $(tail -1 "$err")"
    continue
  fi
  node -e '
    const [b, gib] = [process.argv[1], +process.argv[2]];
    const j = JSON.parse(require("fs").readFileSync(0, "utf8"));
    const r = Object.values(j.results)[0];
    const f = (x, w) => x.toFixed(1).padStart(w);
    const ms = (ns) => ns / 1e6;
    const gl = ms(r.getDirtyLog.medianNs), glc = ms(r.cpu.protectCallNs);
    console.log([b.padEnd(5), f(ms(r.mmapNs), 9), f(ms(r.mmapNs) / gib, 9), f(ms(r.populateNs) / gib, 9),
      f(ms(r.enableLoggingNs), 9), f(ms(r.enableLoggingNs) / gib, 9), f(ms(r.cpu.enableLoggingNs) / gib, 9),
      f(gl, 9), f(gl / gib, 9), f(glc / gib, 9), f(r.nsPerDirtyPage, 8), f(r.cpu.nsPerDirtyPage, 8),
      String(r.cpu.preemptions).padStart(7), j.metadataPercent.toFixed(2).padStart(6)].join(" "));
  ' "$b" "$gib" <<<"$out"
done
echo "# end: load average $(cut -d' ' -f1-3 /proc/loadavg)"

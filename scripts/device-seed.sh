#!/usr/bin/env bash
# The seed's own configuration, for a machine with a core per vCPU (16 cores or more):
# 12 vCPUs and 8 GiB of guest memory in total; dirty-log-perf (both designs, alternated, also
# with --preset seed) and kernbench with EPT on and off (--mode tdp,shadow). Every result is
# written as JSON (schemaVersion 1) into OUT_DIR.
#
#   scripts/device-seed.sh [OUT_DIR]          # default OUT_DIR: results/seed-<timestamp>
#   VCPUS=1 BYTES=4M ITER=2 JOBS=4 RUNS=1 scripts/device-seed.sh /tmp/x   # a tiny check (2 cores)
# Keep VCPUS + 1 within the cores: --preset seed spins on mmu_lock and pins the harvester on
# CPU 0 and vCPU i on CPU 1 + i; spinners beyond the cores starve the lock holders
# (docs/design.md §14).
#
# Environment: VCPUS (12), BYTES per vCPU (682M: 12 x 682 MiB ~ 8 GiB, a multiple of 2 MiB),
# ITER (10), WARMUP (1), JOBS per vCPU for kernbench (300), RUNS (3, as the seed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-results/seed-$(date -u +%Y%m%dT%H%M%SZ)}
VCPUS=${VCPUS:-12}
BYTES=${BYTES:-682M}
ITER=${ITER:-10}
WARMUP=${WARMUP:-1}
JOBS=${JOBS:-300}
RUNS=${RUNS:-3}
mkdir -p "$OUT_DIR"
[ -f dist/src/cli/main.js ] || npx tsc -p .
kvmmu() { node bin/kvmmu.js "$@"; }
cpus=$(node -e 'console.log(require("os").availableParallelism())')
echo "device-seed: $cpus cores; $VCPUS vCPUs x $BYTES; results in $OUT_DIR" >&2
if [ "$cpus" -lt $((VCPUS + 2)) ]; then
  echo "device-seed: warning: $VCPUS vCPUs + harvester + host thread do not fit $cpus cores" >&2
fi
common=(-v "$VCPUS" -b "$BYTES" -i "$ITER" --warmup "$WARMUP")
# KVM's perf test: vCPUs parked during the harvest, no host churn.
kvmmu dirty-log-perf "${common[@]}" --park --contention none --output "$OUT_DIR/dirty-log-perf-park.json" >"$OUT_DIR/dirty-log-perf-park.txt"
# vCPUs writing during the harvest, default MMU-notifier churn.
kvmmu dirty-log-perf "${common[@]}" --output "$OUT_DIR/dirty-log-perf.json" >"$OUT_DIR/dirty-log-perf.txt"
# The seed's host conditions (docs/design.md §14): the preset's own 100 windows and warm-up.
kvmmu dirty-log-perf -v "$VCPUS" -b "$BYTES" --preset seed --output "$OUT_DIR/dirty-log-perf-seed.json" >"$OUT_DIR/dirty-log-perf-seed.txt"
# EPT on and off, dirty logging off / locked / lockless.
kvmmu kernbench -v "$VCPUS" -j "$JOBS" -n "$RUNS" --warmup "$WARMUP" --mode tdp,shadow \
  --output "$OUT_DIR/kernbench.json" >"$OUT_DIR/kernbench.txt"
echo "device-seed: done: $(ls "$OUT_DIR" | tr '\n' ' ')" >&2

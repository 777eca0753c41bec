#!/usr/bin/env bash
# The one script to run on a GPU machine (cmake + nvcc, no Node needed): builds the C++
# core and the CUDA backend, then runs the CPU core tests, the CUDA parity test
# (every kernel and whole meta-gradients against the CPU) and the CUDA benchmark.
#   bash scripts/device-check.sh            (run from the repository root)
# Output: "$OUT/device-check.log" (everything) and "$OUT/bench-cuda.jsonl" (the bench).
# A failed step does not stop the later ones (the bench still runs); the script exits
# non-zero at the end when any step failed. Budget: about 6 minutes on one H200.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/device-check-out}"
BUILD="${BUILD:-$ROOT/build-device-check}"
JOBS="${JOBS:-16}"
mkdir -p "$OUT" "$BUILD"
LOG="$OUT/device-check.log"
: > "$LOG"
STATUS=0
START=$(date +%s)

log() { echo "== $* ($(( $(date +%s) - START )) s)" | tee -a "$LOG"; }

# step NAME TIMEOUT_SECONDS COMMAND...: runs the command with a time limit, keeps its
# output in the log, and remembers a failure instead of stopping.
step() {
  local name="$1" limit="$2"
  shift 2
  log "$name"
  local rc=0
  timeout "$limit" "$@" >> "$LOG" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "$name FAILED (exit $rc)"
    STATUS=1
  else
    log "$name ok"
  fi
  return 0
}

step "nvidia-smi -L" 30 nvidia-smi -L
step "nvcc --version" 30 nvcc --version
step "configure" 60 cmake -S "$ROOT" -B "$BUILD" -DMAML_CUDA=ON -DCMAKE_BUILD_TYPE=Release
step "build" 180 cmake --build "$BUILD" -j "$JOBS" --target maml_core_tests maml_cuda_parity maml_cuda_bench
if grep -q "maml-native: CUDA backend OFF" "$LOG"; then
  log "CUDA backend was not configured (nvcc not found?)"
  STATUS=1
fi

if [ -x "$BUILD/maml_core_tests" ]; then
  step "CPU core tests" 90 "$BUILD/maml_core_tests"
else
  log "CPU core tests: not built"; STATUS=1
fi
PARITY="$BUILD/native/core/cuda/maml_cuda_parity"
BENCH="$BUILD/native/core/cuda/maml_cuda_bench"
if [ -x "$PARITY" ]; then
  step "CUDA parity" 120 "$PARITY"
else
  log "CUDA parity: not built"; STATUS=1
fi
if [ -x "$BENCH" ]; then
  step "CUDA bench" 100 "$BENCH" --json "$OUT/bench-cuda.jsonl" --iterations 20
else
  log "CUDA bench: not built"; STATUS=1
fi
grep -E "passed, .* failed|^FAIL" "$LOG" | tee -a "$OUT/summary.txt" || true
log "done, status $STATUS"
exit "$STATUS"

#!/usr/bin/env bash
# GPU check: one unattended run on a machine with a GPU, its own python3 and
# torch, and no network. Each step has a time limit, is recorded (status,
# exit code, seconds) and never stops the next one:
#   1. preflight (benchmarks/gpu_preflight.py): nvcc's CUDA against torch's,
#      CUDA headers, gcc/g++, cmake, ninja, Python.h, pybind11, the GPU as nvidia-smi
#      and torch see it, free disk, pytest; OK/MISSING lines;
#   2. build in place: FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0, MAX_JOBS=16
#      (setup.py drives the CMake build, in build/cmake);
#   3. correctness without pytest (benchmarks/gpu_correctness.py): fused op on
#      CUDA vs the reference and the CPU op over every option, float64 and
#      float32, and at the target size; run once per CUDA design: default, then
#      TORCH_EXT_CUDA_PERSISTENT=1;
#   4. pytest tests/test_cuda.py tests/test_gradients.py, where pytest exists;
#   5. benchmark at the target size T=1000, B=64, F=N=1024 (fused op in each
#      design, expert autograd loop, hand-written Function, floor; TF32 off
#      and on), then a torch.compile probe at T=100 and, in the time left,
#      B=16 N=256 (latency-bound) and N=4096 (W_rec does not fit on chip);
#      then, in the time left, mixed precision for each model
#      (benchmarks/mixed_precision.py --device cuda: float32 with TF32 off and
#      on, under autocast bfloat16 with float32 products (the default) and
#      with tensor-core products (TORCH_EXT_LOW_PRECISION_PRODUCTS=on), the
#      expert loop under the same autocast);
#   6. the summary table (benchmarks/gpu_summary.py), printed last.
# The steps share a budget (GPU_CHECK_BUDGET_S, default 420 s) so that the whole
# run stays under 8 minutes. Output: $OUT (default
# benchmarks/results/gpu-<date>), nine files: preflight.txt, build.log,
# correctness.txt, pytest.log, bench.txt, bench.json, mixed_precision.txt,
# summary.txt and run.log (everything printed). Exit status 0 only if every step passed.
#
# Dry run (GPU_CHECK_DRY_RUN=1, and automatically where neither torch nor
# nvidia-smi sees a GPU; GPU_CHECK_DRY_RUN=0 forces a full run): the preflight
# runs for real; the build is skipped (the command is printed) and the
# extension present is used; the correctness check runs on the CPU at small
# sizes; pytest runs tests/test_cuda.py and tests/test_gpu_check.py; the
# benchmark runs with --smoke on the CPU; the table comes last. About a minute.
set -u  # no -e, no pipefail: a failing step is recorded and the next one runs

PY="${PYTHON:-python3}"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET_S:-420}"
DEADLINE=$((START + BUDGET))
MIN_STEP_S=20

if command -v timeout >/dev/null 2>&1; then
  with_limit() { local limit=$1; shift; timeout -k 10 "$limit" "$@"; }
else
  NO_TIMEOUT=1
  with_limit() { shift; "$@"; }
fi

if [ -n "${OUT:-}" ]; then  # resolve before cd: $OUT may be relative to the caller
  mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_check: cannot create OUT=$OUT"; exit 2; }
fi
cd "$(dirname "$0")/.." || exit 2

case "${GPU_CHECK_DRY_RUN:-auto}" in
  1|yes|true) MODE=dry-run; WHY="GPU_CHECK_DRY_RUN=$GPU_CHECK_DRY_RUN" ;;
  0|no|false) MODE=full; WHY="GPU_CHECK_DRY_RUN=$GPU_CHECK_DRY_RUN" ;;
  *)
    if with_limit 60 "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
         >/dev/null 2>&1 || with_limit 30 nvidia-smi -L >/dev/null 2>&1; then
      MODE=full; WHY="a GPU is visible"
    else
      MODE=dry-run; WHY="no GPU visible to torch or nvidia-smi"
    fi ;;
esac

if [ -z "${OUT:-}" ]; then
  OUT="benchmarks/results/gpu-$(date +%Y-%m-%d)"
  [ "$MODE" = dry-run ] && OUT="$OUT-dry-run"
  [ -e "$OUT" ] && OUT="$OUT-$(date +%H%M%S)"
  mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_check: cannot create $OUT"; exit 2; }
fi
WORK=$(mktemp -d) || { echo "gpu_check: mktemp failed"; exit 2; }
trap 'rm -rf "$WORK"' EXIT
: > "$WORK/steps.tsv"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1
[ -n "${NO_TIMEOUT:-}" ] && echo "WARN: no 'timeout' command: steps run without a time limit"

record() {  # NAME STATUS RC SECONDS LIMIT NOTE
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$WORK/steps.tsv"
}

# run_step NAME CAP RESERVE OUTFILE SHOW CMD...: runs CMD for at most
# min(CAP, the budget left minus RESERVE seconds for the steps after it),
# never less than MIN_STEP_S; its output goes to $WORK/<NAME>.txt, is appended
# to $OUT/OUTFILE and shown (SHOW: all, bench, or tail:N). Sets STEP_STATUS.
run_step() {
  local name=$1 cap=$2 reserve=$3 outfile=$4 show=$5
  shift 5
  local t0 left limit rc seconds log="$WORK/${name//[^a-zA-Z0-9]/_}.txt"
  t0=$(date +%s)
  left=$((DEADLINE - t0 - reserve))
  limit=$((left < cap ? left : cap))
  [ "$limit" -lt "$MIN_STEP_S" ] && limit=$MIN_STEP_S
  echo
  echo "==== $name (limit ${limit} s): $*"
  with_limit "$limit" "$@" > "$log" 2>&1
  rc=$?
  seconds=$(($(date +%s) - t0))
  case $rc in
    0) STEP_STATUS=ok ;;
    124) STEP_STATUS="timed out" ;;
    137) [ "$seconds" -ge "$limit" ] && STEP_STATUS="timed out" || STEP_STATUS=killed ;;
    *) STEP_STATUS=failed ;;
  esac
  { echo "==== $name: $*"; cat "$log"; echo "==== $name: $STEP_STATUS (rc $rc, $seconds s)"; } \
    >> "$OUT/$outfile"
  case $show in
    all) cat "$log" ;;
    bench) tr '\r' '\n' < "$log" | grep -v '^benchmark:' ;;
    tail:*) [ "$STEP_STATUS" = ok ] && tail -n "${show#tail:}" "$log" || tail -n 40 "$log" ;;
  esac
  echo "---- $name: $STEP_STATUS (rc $rc, $seconds s)"
  record "$name" "$STEP_STATUS" "$rc" "$seconds" "$limit" ""
}

skip_step() {  # NAME STATUS OUTFILE NOTE
  echo
  echo "==== $1: $2: $4"
  echo "==== $1: $2: $4" >> "$OUT/$3"
  record "$1" "$2" - - - "$4"
}

LABEL="full run"; [ "$MODE" = dry-run ] && LABEL="dry run"
echo "GPU check: $LABEL ($WHY), $(date -Iseconds), output in $OUT, budget $BUDGET s"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# ---- 1. preflight
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
if ! command -v ninja >/dev/null 2>&1; then  # the Python package's ninja, if that is there
  ninja_dir=$(with_limit 30 "$PY" -c "import ninja; print(ninja.BIN_DIR)" 2>/dev/null)
  if [ -n "$ninja_dir" ] && [ -x "$ninja_dir/ninja" ]; then
    export PATH="$ninja_dir:$PATH"
    echo "ninja: not on PATH; using the Python package's, $ninja_dir/ninja"
  fi
fi
run_step preflight 60 300 preflight.txt all "$PY" -m benchmarks.gpu_preflight \
  --json "$WORK/preflight.json"
df -h . /tmp 2>/dev/null | tee -a "$OUT/preflight.txt"

# ---- 2. build
BUILT=0
BUILD_CMD=(env FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST" "MAX_JOBS=$MAX_JOBS"
           "$PY" setup.py build_ext --inplace)
check_import() {  # the extension imports (with CUDA kernels, in a full run)
  local want_cuda=$1
  with_limit 60 "$PY" -c "import sys, torch_ext; i = torch_ext.build_info(); print('build_info:', i); \
sys.exit(0 if i['cuda'] or not $want_cuda else 1)"
}
if [ "$MODE" = full ]; then
  run_step build 300 150 build.log tail:3 "${BUILD_CMD[@]}"
  [ "$STEP_STATUS" = ok ] && check_import True > "$WORK/import.txt" 2>&1 && BUILT=1
  why="the build failed or has no CUDA kernels: see build.log"
else
  skip_step build "skipped (dry run)" build.log "would run: ${BUILD_CMD[*]}"
  check_import False > "$WORK/import.txt" 2>&1 && BUILT=1
  why="no extension in torch_ext/ that imports"
fi
[ -f "$WORK/import.txt" ] && tee -a "$OUT/build.log" < "$WORK/import.txt"
[ "$BUILT" = 1 ] || record "import torch_ext" "not built" - - - "$why"

# ---- 3. correctness, once per CUDA design
if [ "$MODE" = full ]; then
  CORRECTNESS=("$PY" -m benchmarks.gpu_correctness --device cuda)
else
  CORRECTNESS=("$PY" -m benchmarks.gpu_correctness --device cpu --no-target)
fi
for design in default persistent; do
  if [ "$BUILT" != 1 ]; then
    skip_step "correctness ($design)" "not built" correctness.txt "no extension to check"
    continue
  fi
  if [ "$design" = default ]; then
    env_design=(env -u TORCH_EXT_CUDA_PERSISTENT); reserve=120
  else
    env_design=(env TORCH_EXT_CUDA_PERSISTENT=1); reserve=90
  fi
  run_step "correctness ($design)" 100 "$reserve" correctness.txt all "${env_design[@]}" \
    "${CORRECTNESS[@]}" --json "$WORK/correctness-$design.json"
  cp "$WORK/correctness__${design}_.txt" "$WORK/correctness-$design.txt" 2>/dev/null
done

# ---- 4. pytest
if [ "$BUILT" != 1 ]; then
  skip_step pytest "not built" pytest.log "no extension to test"
elif ! with_limit 60 "$PY" -c "import pytest" >/dev/null 2>&1; then
  skip_step pytest "skipped" pytest.log "pytest is not installed here (gpu_correctness.py ran instead)"
else
  PYTEST=("$PY" -m pytest -q -rf -p no:cacheprovider)
  with_limit 60 "$PY" -c "import pytest_timeout" >/dev/null 2>&1 && PYTEST+=(--timeout=120)
  if [ "$MODE" = full ]; then
    run_step pytest 150 60 pytest.log tail:25 "${PYTEST[@]}" tests/test_cuda.py tests/test_gradients.py
  else
    # The extension present was not built by this run: CPU-only is expected.
    run_step pytest 60 60 pytest.log tail:8 env TORCH_EXT_NO_CUDA=1 "${PYTEST[@]}" \
      tests/test_cuda.py tests/test_gpu_check.py
  fi
fi

# ---- 5. benchmark, then the torch.compile probe in the time left
if [ "$MODE" = full ]; then
  BENCH=("$PY" -m benchmarks.bench --device cuda --reps 5 --warmup 2 --no-snntorch)
  MIXED=("$PY" -m benchmarks.mixed_precision --device cuda --size 1000,64,1024 --reps 3)
  MAIN_SIZE=1000,64,1024 PROBE_SIZE=100,64,1024 COMPILE_MAX_T=100
  # Latency-bound (small B and N), and W_rec too large to stay on chip.
  OTHER_SIZES=(--size 1000,16,256 --size 1000,64,4096)
else  # the same steps at smoke sizes: T above --compile-max-t, then the probe below it
  BENCH=("$PY" -m benchmarks.bench --device cpu --smoke --no-snntorch)
  MIXED=("$PY" -m benchmarks.mixed_precision --device cpu --size 6,2,8 --reps 1)
  MAIN_SIZE=20,4,16 PROBE_SIZE=10,4,16 COMPILE_MAX_T=10
  OTHER_SIZES=(--size 20,2,8 --size 20,4,32)
fi
if [ "$BUILT" != 1 ]; then
  skip_step benchmark "not built" bench.txt "no extension to time"
else
  # --compile: the loop is compiled only up to --compile-max-t steps (compilation
  # unrolls the time loop); at T=1000 bench.py records that it skipped it.
  run_step benchmark 150 15 bench.txt bench "${BENCH[@]}" --targets-only --size "$MAIN_SIZE" \
    --compile --compile-max-t "$COMPILE_MAX_T" --out "$WORK/bench-main"
  left=$((DEADLINE - $(date +%s) - 10))
  if [ "$left" -ge 60 ]; then
    run_step "compile probe" 180 10 bench.txt bench "${BENCH[@]}" --targets-only \
      --size "$PROBE_SIZE" --compile --compile-max-t "$COMPILE_MAX_T" --out "$WORK/bench-compile"
  else
    skip_step "compile probe" skipped bench.txt "only $left s left of the budget (needs 60)"
  fi
  left=$((DEADLINE - $(date +%s) - 10))
  if [ "$left" -ge 60 ]; then
    run_step "other sizes" 120 10 bench.txt bench "${BENCH[@]}" --targets-only "${OTHER_SIZES[@]}" \
      --reps 3 --out "$WORK/bench-sizes"
  else
    skip_step "other sizes" skipped bench.txt "only $left s left of the budget (needs 60)"
  fi
  for model in lif adaptive cuba; do
    left=$((DEADLINE - $(date +%s) - 10))
    if [ "$left" -ge 45 ]; then
      run_step "mixed precision ($model)" 60 10 mixed_precision.txt tail:6 "${MIXED[@]}" \
        --model "$model" --json "$WORK/mixed-$model.json"
    else
      skip_step "mixed precision ($model)" skipped mixed_precision.txt \
        "only $left s left of the budget (needs 45)"
    fi
  done
fi

# ---- 6. summary table, last
echo
if ! with_limit 60 "$PY" -m benchmarks.gpu_summary --work "$WORK" --out "$OUT" --mode "$MODE" \
     --seconds $(($(date +%s) - START)); then
  { echo "==== GPU check summary (raw: gpu_summary.py failed): step, status, rc, s, limit, note"
    cat "$WORK/steps.tsv"; } | tee "$OUT/summary.txt"
fi
if cut -f2 "$WORK/steps.tsv" | grep -qE '^(failed|timed out|killed|not built)$'; then
  exit 1
fi
exit 0

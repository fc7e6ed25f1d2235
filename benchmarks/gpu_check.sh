#!/usr/bin/env bash
# One prepared run on a machine with a GPU, its own python3 and torch, and no
# network: build in place, run the CUDA tests, run the GPU benchmark, print a
# short table last. Copies its outputs to $OUT (or benchmarks/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" FORCE_CUDA=1
time python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
if python3 -c "import pytest" 2>/dev/null; then
  # Failures are reported but do not stop the run: the table below still comes.
  python3 -m pytest tests/test_cuda.py tests/test_gradients.py -q 2>&1 | tail -15 \
    | tee "$OUT/cuda_tests.txt" || true
else
  echo "pytest is not installed here: CUDA tests not run" | tee "$OUT/cuda_tests.txt"
fi
python3 -m benchmarks.bench --device cuda --targets-only --reps 5 --no-snntorch --out "$OUT" \
  2>&1 | grep -v "benchmark:" | tee "$OUT/gpu_bench.txt"

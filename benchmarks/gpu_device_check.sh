#!/usr/bin/env bash
# One-shot check of normlab's CUDA kernels on a GPU machine: the real-GPU tests, then benchmarks/gpu.py.
#
#   bash benchmarks/gpu_device_check.sh            # writes to $OUT (default /tmp/normlab-gpu-check)
#
# No network is assumed: normlab runs from src/ (PYTHONPATH), and CuPy, numba-cuda, ml-dtypes and a CUDA
# build of PyTorch must already be installed (the project's device image has them; elsewhere
# `pip install -e '.[gpu]'` for CUDA 12 or '.[gpu-cu13]' for CUDA 13 first).  Wheels carried in ./.whl are
# installed to /tmp/site first if that folder exists.  Everything lands in $OUT as at most 6 files:
# nvidia-smi.txt, versions.txt, gpu_tests.txt, gpu_bench.txt, gpu_bench.json, summary.txt.
# Budget: at most 6 minutes of tests (kernel compilation included: every layer and lab network on the GPU)
# and about 3 of benchmark (kernel rows, then the MLP and LeNet-BN epochs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/normlab-gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
unset NUMBA_ENABLE_CUDASIM
if [ -d .whl ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
{
    "$PY" - <<'PY'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "numba", "numba_cuda", "cupy", "ml_dtypes", "torch"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING:", type(exc).__name__, exc)
PY
    "$PY" -m normlab info
} >"$OUT/versions.txt" 2>&1

timeout 360 "$PY" -m pytest tests/gpu/test_cuda_device.py tests/gpu/test_cuda_models.py tests/gpu/test_info.py -q -rs \
    -p no:cacheprovider -o addopts="--import-mode=importlib" >"$OUT/gpu_tests.txt" 2>&1
tests_rc=$?
timeout 300 "$PY" -m benchmarks.gpu --json "$OUT/gpu_bench.json" >"$OUT/gpu_bench.txt" 2>&1
bench_rc=$?

{
    echo "tests exit status: $tests_rc (0 = all passed; 124 = timed out)"
    tail -n 3 "$OUT/gpu_tests.txt"
    echo "benchmark exit status: $bench_rc (2 = no CUDA; 124 = timed out)"
    sed -n '/^GPU:/,$p' "$OUT/gpu_bench.txt"
} | tee "$OUT/summary.txt"

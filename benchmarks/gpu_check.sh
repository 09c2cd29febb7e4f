#!/usr/bin/env bash
# One-command GPU check: the test suite with the GPU tests enabled, and the GPU benchmark.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [FASHION_MNIST_DIR]
#
# For a machine with an NVIDIA GPU where CuPy, numba-cuda and pytest are installed. It
# installs nothing: xpnet runs from this checkout (PYTHONPATH), and PyTorch and pytest-xdist
# are used when present. In order:
#   1. the GPU tests (pytest -m gpu), which must not skip: among them CUDA-graph steps
#      against eager GPU steps, resume under graphs, the short-batch fallback;
#   2. benchmarks/gpu_bench.py: kernels, CPU-vs-GPU step parity, the Trainer's steps with
#      CUDA graphs, eagerly and in PyTorch eager CUDA fp32 side by side (DeepConvNet at batch
#      32, 100 and 1,000, SimpleConvNet at 100; GPU busy vs wall time per step, launches per
#      step, the per-call launch cost), a DeepConvNet epoch on 60,000 MNIST-sized samples
#      (batch 100, Adam) launched eagerly beside PyTorch CUDA and beside xpnet's CPU time (a
#      few steps, extrapolated), the representative CNNs (LeNet, VGGNet, MiniGoogLeNet,
#      ResNet-20: one float32 step against the CPU, steps beside PyTorch's); given
#      FASHION_MNIST_DIR (the four IDX files), also the README's `xpnet train --device gpu`
#      (CUDA graphs) on the real data, 10 epochs;
#   3. the rest of the suite (tests marked slow are left to CI), spread over up to 8 cores
#      when pytest-xdist is installed.
# Everything goes to OUT_DIR (logs, JUnit XML, JSON, results.md); the short table is printed
# last. Each part has its own time limit, so the whole run ends within 8 minutes.
set -uo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR [FASHION_MNIST_DIR]" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
DATA_ARGS=()
if [ $# -eq 2 ]; then
    if [ ! -d "$2" ]; then
        echo "FASHION_MNIST_DIR $2 is not a directory; give the folder of the four IDX files" >&2
        exit 2
    fi
    DATA_ARGS=(--data-dir "$(cd "$2" && pwd)")
fi
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
START=$(date +%s)
status=0

DEADLINE=465                        # seconds: the whole run stays under 8 minutes
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
# the smaller of a part's own limit and what is left after keeping `reserve` for later parts
limit() { local l=$(( $(left) - $2 )); [ $l -gt $1 ] && l=$1; [ $l -lt 20 ] && l=20; echo $l; }

log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu_check.log"; }

# -- 0. the machine -------------------------------------------------------------------------
{
    nvidia-smi 2>&1 || echo "nvidia-smi not found"
    "$PY" -VV
    "$PY" -c "import cupy; cupy.show_config()" 2>&1 | head -40
    "$PY" -m pip list 2>/dev/null | grep -iE "^(numpy|numba|numba.cuda|cupy.*|torch|pytest.*|cuda.*) "
} >"$OUT/machine.txt" 2>&1

"$PY" -c "import pytest" 2>/dev/null || { log "pytest is not installed: pip install pytest"; exit 2; }
"$PY" -c "import xpnet.backend as b, sys; r = b.gpu_unavailable_reason(); \
print(r or 'GPU ok'); sys.exit(1 if r else 0)" >"$OUT/gpu_status.txt" 2>&1
if [ $? -ne 0 ]; then
    log "no usable GPU: $(cat "$OUT/gpu_status.txt")"
    status=1
fi

PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 150)

# -- 1. GPU tests first, so their result exists even if a later part runs out of time ------
log "GPU tests (pytest -m gpu)"
timeout "$(limit 150 240)" "${PYTEST[@]}" -m gpu --junitxml "$OUT/junit-gpu.xml" tests \
    >"$OUT/tests-gpu.log" 2>&1
rc=$?
tail -n 3 "$OUT/tests-gpu.log" | tee -a "$OUT/gpu_check.log"
if [ $rc -ne 0 ]; then status=1; log "GPU tests failed (exit $rc), see tests-gpu.log"; fi
if ! tail -n 1 "$OUT/tests-gpu.log" | grep -q " passed"; then
    status=1
    log "no GPU test passed (all skipped or none ran): the GPU was not usable"
fi

# -- 2. benchmark -----------------------------------------------------------------------------
budget=$(limit 300 90)
train_s=$(( budget - 110 )); [ $train_s -lt 30 ] && train_s=30
log "GPU benchmark (limit ${budget}s, real-data training at most ${train_s}s)"
timeout "$budget" "$PY" benchmarks/gpu_bench.py "$OUT/bench" ${DATA_ARGS[@]+"${DATA_ARGS[@]}"} \
    --train-seconds "$train_s" --time-limit "$(( budget - 5 ))" >"$OUT/bench.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    status=1
    log "benchmark exit $rc (124 means out of time); collecting the parts that finished"
    "$PY" benchmarks/gpu_bench.py "$OUT/bench" --report-only >>"$OUT/bench.log" 2>&1
fi

# -- 3. the rest of the suite ---------------------------------------------------------------
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "$(( $(nproc) > 8 ? 8 : $(nproc) ))")
log "the rest of the test suite (not gpu, not slow) ${XDIST[*]+${XDIST[*]}}"
timeout "$(limit 170 5)" "${PYTEST[@]}" ${XDIST[@]+"${XDIST[@]}"} -m "not gpu and not slow" \
    --junitxml "$OUT/junit-rest.xml" tests >"$OUT/tests-rest.log" 2>&1
rc=$?
tail -n 3 "$OUT/tests-rest.log" | tee -a "$OUT/gpu_check.log"
if [ $rc -ne 0 ]; then status=1; log "test suite failed or timed out (exit $rc)"; fi

# the pytest summaries join the benchmark's results.json and results.md
"$PY" -c "import json, sys; json.dump({'gpu': sys.argv[1], 'rest': sys.argv[2]}, \
open(sys.argv[3], 'w'), indent=2)" "$(tail -n 1 "$OUT/tests-gpu.log")" \
    "$(tail -n 1 "$OUT/tests-rest.log")" "$OUT/bench/tests.json" 2>/dev/null \
    && "$PY" benchmarks/gpu_bench.py "$OUT/bench" --report-only >/dev/null 2>&1

log "done in $(( $(date +%s) - START ))s; everything is in $OUT"
echo
echo "== tests =="
echo "gpu:  $(tail -n 1 "$OUT/tests-gpu.log")"
echo "rest: $(tail -n 1 "$OUT/tests-rest.log")"
echo "== benchmark (also $OUT/bench/results.md) =="
cat "$OUT/bench/results.md" 2>/dev/null || echo "(no benchmark results)"
exit $status

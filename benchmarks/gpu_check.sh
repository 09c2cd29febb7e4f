#!/usr/bin/env bash
# One-command GPU check: the test suite with the GPU tests enabled, then the GPU benchmark.
#
#   bash benchmarks/gpu_check.sh OUT_DIR
#
# For a machine with an NVIDIA GPU and CuPy + numba-cuda already installed. Installs only
# what is missing (xpnet itself without dependencies; pytest-benchmark and PyTorch if
# absent and reachable), then:
#   1. the GPU tests (pytest -m gpu), which must not skip;
#   2. the rest of the suite (tests marked slow are left to CI);
#   3. benchmarks/gpu_bench.py: kernels, CPU-vs-GPU step parity, a DeepConvNet epoch on
#      60,000 MNIST-sized samples (batch 100, Adam) on the GPU beside PyTorch CUDA and
#      beside xpnet's CPU time (a few steps, extrapolated).
# Everything goes to OUT_DIR (logs, JUnit XML, JSON, results.md); the short table is
# printed last. Each part has its own time limit, so the whole run ends within 8 minutes.
set -uo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
    exit 2
fi
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$(date +%s)
status=0

DEADLINE=465                        # seconds: the whole run stays under 8 minutes
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
# the smaller of a part's own limit and what is left after keeping `reserve` for later parts
limit() { local l=$(( $(left) - $2 )); [ $l -gt $1 ] && l=$1; [ $l -lt 20 ] && l=20; echo $l; }

log() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu_check.log"; }

# Quiet pip that gives up at once when offline instead of retrying for minutes.
pip_quiet() { timeout "$1" "$PY" -m pip install --quiet --disable-pip-version-check \
    --retries 0 --timeout 10 "${@:2}" >>"$OUT/pip.log" 2>&1; }

# -- 0. the machine ------------------------------------------------------------------
{
    nvidia-smi 2>&1 || echo "nvidia-smi not found"
    "$PY" -VV
    "$PY" -c "import cupy; cupy.show_config()" 2>&1 | head -40
    "$PY" -c "import numba, numba_cuda; print('numba', numba.__version__, 'numba-cuda', \
numba_cuda.__version__)" 2>&1
} >"$OUT/machine.txt"

# -- 1. install only what is missing ----------------------------------------------------
if ! "$PY" -m pip show xpnet >/dev/null 2>&1; then
    log "installing xpnet (editable, no dependencies)"
    pip_quiet 60 --no-deps --no-build-isolation -e . || pip_quiet 60 --no-deps -e . \
        || log "could not install xpnet; running from the checkout (PYTHONPATH)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import pytest_benchmark" 2>/dev/null || pip_quiet 30 pytest-benchmark \
    || log "pytest-benchmark missing and not installable (benchmark tests may skip)"
if ! "$PY" -c "import torch" 2>/dev/null; then
    log "PyTorch missing: trying to install it (the comparison is skipped if this fails)"
    pip_quiet "$(limit 120 360)" torch \
        || log "PyTorch not installable here; its column will be skipped"
fi

"$PY" -c "import xpnet.backend as b, sys; r = b.gpu_unavailable_reason(); \
print(r or 'GPU ok'); sys.exit(1 if r else 0)" >"$OUT/gpu_status.txt" 2>&1
if [ $? -ne 0 ]; then
    log "no usable GPU: $(cat "$OUT/gpu_status.txt")"
    status=1
fi

PYTEST=("$PY" -m pytest -q -ra -p no:cacheprovider)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 150)

# -- 2. GPU tests first, so their result exists even if a later part runs out of time ----
log "GPU tests (pytest -m gpu)"
timeout "$(limit 150 270)" "${PYTEST[@]}" -m gpu --junitxml "$OUT/junit-gpu.xml" tests \
    >"$OUT/tests-gpu.log" 2>&1
rc=$?
tail -n 3 "$OUT/tests-gpu.log" | tee -a "$OUT/gpu_check.log"
if [ $rc -ne 0 ]; then status=1; log "GPU tests failed (exit $rc), see tests-gpu.log"; fi
if ! tail -n 1 "$OUT/tests-gpu.log" | grep -q " passed"; then
    status=1
    log "no GPU test passed (all skipped or none ran): the GPU was not usable"
fi

# -- 3. the rest of the suite ---------------------------------------------------------------
log "the rest of the test suite (not gpu, not slow)"
timeout "$(limit 170 100)" "${PYTEST[@]}" -m "not gpu and not slow" \
    --junitxml "$OUT/junit-rest.xml" tests >"$OUT/tests-rest.log" 2>&1
rc=$?
tail -n 3 "$OUT/tests-rest.log" | tee -a "$OUT/gpu_check.log"
if [ $rc -ne 0 ]; then status=1; log "test suite failed or timed out (exit $rc)"; fi

# -- 4. benchmark ------------------------------------------------------------------------
budget=$(limit 400 5)
log "GPU benchmark (limit ${budget}s)"
timeout "$budget" "$PY" benchmarks/gpu_bench.py "$OUT/bench" >"$OUT/bench.log" 2>&1
rc=$?
if [ $rc -ne 0 ]; then
    status=1
    log "benchmark exit $rc (124 means out of time); collecting the parts that finished"
    "$PY" benchmarks/gpu_bench.py "$OUT/bench" --report-only >>"$OUT/bench.log" 2>&1
fi

log "done in $(( $(date +%s) - START ))s; everything is in $OUT"
echo
echo "== tests =="
echo "gpu:  $(tail -n 1 "$OUT/tests-gpu.log")"
echo "rest: $(tail -n 1 "$OUT/tests-rest.log")"
echo "== benchmark (also $OUT/bench/results.md) =="
cat "$OUT/bench/results.md" 2>/dev/null || echo "(no benchmark results)"
exit $status

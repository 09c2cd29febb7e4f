"""Run the GPU kernels under Numba's CUDA simulator, in a process of their own.

NUMBA_ENABLE_CUDASIM is read when ``numba.cuda`` is first imported, and this pytest
process may already have imported it for real (or must not switch it on for the other
tests), so the simulator cases in ``tests/cuda_sim_cases.py`` run in a child pytest.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CASES = REPO / "tests" / "cuda_sim_cases.py"


def run_simulator_cases(cases: Path, min_passed: int) -> None:
    """Run the pytest file ``cases`` in a child process with the CUDA simulator on, and
    fail unless it passed at least ``min_passed`` cases and skipped none."""
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         str(cases)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, f"simulator cases failed:\n{report}"
    summary = proc.stdout.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    # every case must have run: a skip here would mean the simulator was not switched on
    assert passed and int(passed.group(1)) >= min_passed, summary
    assert "skipped" not in summary and "failed" not in summary, summary


@pytest.mark.slow
def test_gpu_kernels_match_reference_under_cuda_simulator():
    run_simulator_cases(CASES, min_passed=100)

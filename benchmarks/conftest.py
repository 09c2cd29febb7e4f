"""Configuration of the benchmark suite (pytest-benchmark), run apart from the tests:

    pytest benchmarks/ --quick --benchmark-json=bench.json     # the quick subset, ~2 minutes
    pytest benchmarks/ --benchmark-json=bench.json             # everything
    python -m xpnet.bench bench.json -o RESULTS.md             # the report

- ``--quick`` keeps only the cases marked ``quick`` (one per comparison the report needs) and
  gives each a smaller time budget.
- Each comparison is one pytest-benchmark group. The ``bench`` fixture times a case and
  records what it is in ``extra_info`` (implementation, dtype, device, batch, FLOPs ...)
  so the report can compute ratios without parsing test names.
- Cases on the GPU synchronise the device inside the timed call (CuPy and PyTorch launch
  asynchronously, so an unsynchronised call would time only the launch); they skip
  cleanly without CuPy or a GPU. Cases that need PyTorch skip cleanly without it.
- The machine, the library versions, the BLAS library and the kernel it picked (via
  threadpoolctl), the thread settings and the load average go into the JSON's
  ``machine_info["xpnet"]`` and are printed in the header of the run.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
import time
from pathlib import Path

import machine  # pytest puts this conftest's folder on the path
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

#: The project's shared data (the book's weights, 10k MNIST digits), as in tests/conftest.py.
SHARED = Path(os.environ.get("XPNET_SHARED", REPO.parent / "shared"))

#: Time budget per case (seconds of timed calls), and the rounds it may use.
BUDGETS = {
    "quick": {"budget": 0.4, "min_rounds": 3, "max_rounds": 30},
    "full": {"budget": 2.0, "min_rounds": 5, "max_rounds": 200},
}

#: Environment variables that change what the BLAS and the thread pools do.
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "XPNET_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)


# ---------------------------------------------------------------------------
# Options, markers, the quick subset
# ---------------------------------------------------------------------------


def pytest_addoption(parser):
    group = parser.getgroup("xpnet benchmarks")
    group.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="run only the cases marked 'quick' with a small time budget (about 2 minutes "
        "on 2 cores); without it the full suite runs",
    )
    group.addoption(
        "--bench-report",
        metavar="PATH",
        default=None,
        help="after the run, write the Markdown report (python -m xpnet.bench) of the "
        "--benchmark-json file to PATH, with its charts beside it",
    )


def pytest_configure(config):
    if config.getoption("--bench-report") and not config.getoption("benchmark_json"):
        raise pytest.UsageError("--bench-report needs --benchmark-json=FILE (the report is "
                                "made from that file)")
    config.addinivalue_line("markers", "quick: part of the quick benchmark run (--quick)")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU with CuPy (skipped without one)")
    config.addinivalue_line("markers", "torch: compares with PyTorch (skipped without it)")
    # xpnet's defaults, applied up front so that every xpnet case runs with them (not only
    # those after the first convolution): its kernels on all the cores this process may use
    # (or XPNET_NUM_THREADS), BLAS single-threaded inside them. PyTorch gets as many threads.
    from xpnet.threads import set_num_threads

    n = set_num_threads()
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.set_num_threads(n)


def pytest_sessionstart(session):
    # pytest-benchmark gathers machine_info at the end; the load before the run is kept here
    if hasattr(os, "getloadavg"):
        session.config._xpnet_load_start = list(os.getloadavg())


def pytest_sessionfinish(session, exitstatus):
    # pytest-benchmark's own sessionfinish (a hook wrapper) has written the JSON by now
    report = session.config.getoption("--bench-report")
    if report:
        from xpnet.bench.report import write_report

        json_file = session.config.getoption("benchmark_json")
        # pytest-benchmark < 5.3 gives an open file (its path in .name), 5.3+ a Path
        if not isinstance(json_file, (str, os.PathLike)):
            json_file = json_file.name
        path = write_report(os.fspath(json_file), report)
        session.config._xpnet_report = path


def pytest_terminal_summary(terminalreporter, config):
    path = getattr(config, "_xpnet_report", None)
    if path is not None:
        terminalreporter.write_line(f"benchmark report written to {path}")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--quick"):
        return
    keep = [item for item in items if item.get_closest_marker("quick")]
    dropped = [item for item in items if not item.get_closest_marker("quick")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def run_mode(config) -> str:
    return "quick" if config.getoption("--quick") else "full"


# ---------------------------------------------------------------------------
# What the numbers were measured on
# ---------------------------------------------------------------------------


def _version(module_name: str) -> str | None:
    try:
        module = __import__(module_name)
    except Exception:  # not installed, or a GPU library without its driver
        return None
    return str(getattr(module, "__version__", "?"))


def _cpu_caches() -> dict:
    """Cache sizes of CPU 0 from sysfs (Linux), e.g. {'L1d': '48K', 'L2': '2048K'}."""
    caches = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        caches[name] = size
    return caches


def _pool_owner(filepath: str) -> str:
    """Which package shipped a native library: the first path part naming one we know."""
    parts = Path(filepath).parts
    for part in reversed(parts):
        name = part.split(".libs")[0].split("-")[0]
        if name in ("numpy", "scipy", "torch", "cupy", "sklearn"):
            return name
    return "system"


def _blas_info() -> list[dict]:
    """The native thread pools threadpoolctl sees: BLAS library, version, the kernel it
    picked for this CPU (``architecture``), threads, and the package that loaded it
    (NumPy's is the one xpnet's products use)."""
    from threadpoolctl import threadpool_info

    pools = []
    for pool in threadpool_info():
        entry = {k: v for k, v in pool.items() if k != "filepath"}
        entry["library"] = Path(pool.get("filepath", "")).name  # no install path
        entry["owner"] = _pool_owner(pool.get("filepath", ""))
        pools.append(entry)
    return pools


def _gpu_info() -> dict | None:
    from xpnet import backend

    reason = backend.gpu_unavailable_reason()
    if reason is not None:
        return {"available": False, "reason": reason}
    cp = backend.require_gpu()
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"]
    return {
        "available": True,
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cp.cuda.runtime.driverGetVersion(),
    }


def _torch_info() -> dict | None:
    try:
        import torch
    except ImportError:
        return None
    return {
        "version": torch.__version__,
        "num_threads": torch.get_num_threads(),
        "mkl": bool(torch.backends.mkl.is_available()),
        "mkldnn": bool(torch.backends.mkldnn.is_available()),
        "cuda": bool(torch.cuda.is_available()),
    }


def environment_info(config) -> dict:
    """Everything the report prints beside the numbers (JSON-serialisable)."""
    import numba

    from xpnet.threads import get_num_threads

    return {
        "mode": run_mode(config),
        "cpu": machine.cpu_model(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_caches": _cpu_caches(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("xpnet", "numpy", "numba", "torch", "cupy", "threadpoolctl",
                         "pytest_benchmark")
        },
        "blas": _blas_info(),
        "threads": {
            "xpnet kernels": get_num_threads(),
            "numpy BLAS (outside the kernels)": numpy_blas_threads(),
            "numba_threading_layer": _numba_layer(numba),
        },
        "torch": _torch_info(),
        "env": {name: os.environ.get(name) for name in ENV_VARS},
        "gpu": _gpu_info(),
        "load_average_start": getattr(config, "_xpnet_load_start", None),
        "command": _command(config),
    }


def _command(config) -> str:
    """The pytest command line of the run, with the BLAS variables it removed or set."""
    unset = [f"-u {name}" for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
             if name not in os.environ]
    prefix = f"env {' '.join(unset)} " if unset else ""
    return prefix + "pytest " + " ".join(str(a) for a in config.invocation_params.args)


def _numba_layer(numba) -> str | None:
    try:
        return str(numba.threading_layer())
    except ValueError:  # no parallel kernel has run yet
        return str(numba.config.THREADING_LAYER)


def _blas_summary(blas: list[dict]) -> str:
    parts = []
    for pool in blas:
        if pool.get("user_api") != "blas":
            continue
        parts.append(
            f"{pool.get('owner')}: {pool.get('internal_api')} {pool.get('version')} "
            f"kernel={pool.get('architecture')} "
            f"threads={pool.get('num_threads')} ({pool.get('threading_layer')})"
        )
    return "; ".join(parts) or "no BLAS found by threadpoolctl"


def pytest_report_header(config):
    info = environment_info(config)
    env = ", ".join(f"{k}={v}" for k, v in info["env"].items() if v is not None) or "none set"
    torch = info["torch"]
    return [
        f"xpnet benchmarks ({info['mode']}): {info['cpu']}, {info['cpus_usable']} usable CPUs",
        f"BLAS: {_blas_summary(info['blas'])}",
        f"threads: xpnet kernels {info['threads']['xpnet kernels']}, NumPy BLAS "
        f"{info['threads']['numpy BLAS (outside the kernels)']}"
        + (f", torch {torch['num_threads']}" if torch else ", torch not installed"),
        f"thread/BLAS environment: {env}",
        "GPU: " + (info["gpu"].get("name") if info["gpu"]["available"] else info["gpu"]["reason"]),
    ]


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["xpnet"] = environment_info(config)
    # the report is committed: keep the machine's name and install paths out of it
    machine_info.pop("node", None)
    if "python_executable" in machine_info:
        machine_info["python_executable"] = Path(machine_info["python_executable"]).name


def pytest_benchmark_update_commit_info(config, commit_info):
    commit_info.pop("project", None)  # the checkout's folder name, not the project's


def pytest_benchmark_update_json(config, benchmarks, output_json):
    info = output_json.get("machine_info", {}).get("xpnet")
    if info is not None and hasattr(os, "getloadavg"):
        info["load_average_end"] = list(os.getloadavg())
        # after the run the kernels have run, so Numba's threading layer is known
        import numba

        info["threads"]["numba_threading_layer"] = _numba_layer(numba)


# ---------------------------------------------------------------------------
# Fixtures: timing, devices, optional libraries, shared data
# ---------------------------------------------------------------------------


class Bench:
    """Time ``fn`` with pytest-benchmark and record what it is.

        bench(fn, group="inference DeepConvNet batch=100", label="xpnet float32",
              baseline=False, sync=None, impl="xpnet", dtype="float32", batch=100)

    One untimed call warms up (JIT compilation, allocator, caches), a second estimates
    the cost; the number of rounds then fills the mode's time budget (at least
    ``min_rounds``). Calls faster than a millisecond are repeated within a round so the
    timer's resolution does not matter. ``sync`` (the device's synchronize) is called
    inside every timed call. Extra keywords go to ``extra_info``.
    """

    def __init__(self, benchmark, mode: str, cores: int):
        self.benchmark = benchmark
        self.mode = mode
        self.cores = cores  # the threads xpnet's kernels, PyTorch and a full BLAS use

    def __call__(self, fn, *, group, label, baseline=False, sync=None, rounds=None,
                 warmup=True, blas_threads=None, **extra):
        """``blas_threads``: run the case with NumPy's BLAS on that many threads (the book's
        code and the GEMM peak use every core, as plain NumPy does); None keeps xpnet's
        own setting (its kernels run single-threaded BLAS products on worker threads)."""
        from threadpoolctl import threadpool_limits

        if blas_threads is None:
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(limits=blas_threads, user_api="blas")
        with limits:
            return self._run(fn, group, label, baseline, sync, rounds, warmup, extra)

    def _run(self, fn, group, label, baseline, sync, rounds, warmup, extra):
        def call():
            fn()
            if sync is not None:
                sync()

        budget = BUDGETS[self.mode]
        self.benchmark.group = group
        self.benchmark.extra_info.update(
            {"group": group, "label": label, "baseline": bool(baseline), **extra}
        )
        if self.benchmark.disabled:  # --benchmark-disable: run each case once, as a test
            return self.benchmark.pedantic(call)
        if warmup:
            call()
        if rounds is None:
            start = time.perf_counter()
            call()
            cost = time.perf_counter() - start
            iterations = max(1, math.ceil(1e-3 / max(cost, 1e-7)))
            rounds = int(budget["budget"] / (cost * iterations))
            rounds = min(max(rounds, budget["min_rounds"]), budget["max_rounds"])
        else:
            iterations = 1
        result = self.benchmark.pedantic(call, rounds=rounds, iterations=iterations)
        if extra.get("impl") not in ("torch", "cupy"):  # those do not use NumPy's BLAS
            # what the case ran with (xpnet's kernels change BLAS threads inside their
            # calls, so this is the setting outside them)
            self.benchmark.extra_info["blas_threads"] = numpy_blas_threads()
        return result


def numpy_blas_threads() -> int | None:
    """Threads of the BLAS that NumPy's products use, as threadpoolctl sees it now."""
    from threadpoolctl import threadpool_info

    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and _pool_owner(pool.get("filepath", "")) == "numpy":
            return int(pool["num_threads"])
    return None


@pytest.fixture
def bench(benchmark, request):
    from xpnet.threads import get_num_threads

    return Bench(benchmark, run_mode(request.config), get_num_threads())


@pytest.fixture(scope="session")
def cupy_module():
    """The cupy module (skips the case when CuPy or a GPU is missing)."""
    from xpnet import backend

    reason = backend.gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no GPU: {reason}")
    return backend.require_gpu()


@pytest.fixture(scope="session")
def gpu_sync(cupy_module):
    """Waits for all work queued on the current GPU."""
    device = cupy_module.cuda.Device()
    return device.synchronize


@pytest.fixture(scope="session")
def torch_module():
    return pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")


@pytest.fixture(scope="session")
def torch_cuda_sync(torch_module):
    if not torch_module.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device here")
    return torch_module.cuda.synchronize


@pytest.fixture
def device_sync(request):
    """``device_sync(device, impl)``: the synchronize function for a case, or None on the CPU;
    skips the case when the device or library is missing."""

    def get(device, impl="xpnet"):
        if impl == "torch":
            request.getfixturevalue("torch_module")
            if device == "gpu":
                return request.getfixturevalue("torch_cuda_sync")
            return None
        if device == "gpu":
            return request.getfixturevalue("gpu_sync")
        return None

    return get


@pytest.fixture(scope="session")
def mnist10k():
    """(x, t): the 10,000 real MNIST digits as (N, 1, 28, 28) float32 in [0, 1] and uint8
    labels; skips when the shared data is absent."""
    from xpnet.datasets import load_idx_pair

    root = SHARED / "data" / "mnist-10k"
    if not root.exists():
        pytest.skip(f"{root} is not present")
    x, t = load_idx_pair(
        root / "images-idx3-ubyte.gz", root / "labels-idx1-ubyte.gz", normalize=True,
        flatten=False,
    )
    return x, t


@pytest.fixture(scope="session")
def book_weights():
    """Path of one of the book's pretrained pickles (skips when absent)."""

    def get(name):
        path = SHARED / "fixtures" / "book" / name
        if not path.exists():
            pytest.skip(f"{path} is not present")
        return path

    return get

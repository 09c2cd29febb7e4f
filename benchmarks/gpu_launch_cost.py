"""The host cost of one kernel launch: Numba's dispatcher, xpnet's fast path, CuPy's kernels.

    python benchmarks/gpu_launch_cost.py [--calls 2000] [--json OUT.json]   # on a GPU
    python benchmarks/gpu_launch_cost.py --host-only                         # any machine

``launch_cost_table()`` (on a GPU, called by ``benchmarks/gpu_bench.py``) launches one small
kernel - y += a * x over 1,024 float32 - many times in a row and reports the median host
time per call in microseconds, for:

* ``numba``: the ``@cuda.jit`` dispatcher, ``kernel[grid, block, stream](x, y, a)``, on Numba
  views made once outside the loop;
* ``numba_with_views``: the same plus a Numba view of each CuPy array per call (what every
  xpnet launch paid before the fast path);
* ``fast``: ``xpnet.kernels.cuda_launch.launch`` on the CuPy arrays (PTX plan, packed
  arguments, cuLaunchKernel);
* ``cupy_raw`` and ``cupy_elementwise``: the same work as a ``cupy.RawKernel`` and a
  ``cupy.ElementwiseKernel``;
* ``fast_im2col``: ``kernels.cuda.launch_im2col`` (shape guards, then the fast path): a real
  xpnet kernel of 8 arguments, two of them 4-d arrays.

The calls are timed in batches with a device synchronisation between batches only; the
kernel runs in about 2 us on the GPU, so a launch that costs more than that on the host is
measured by its host cost. ``host_marshal_cost()`` needs no GPU: the fast path's own work
per call - reading the arguments, the plan lookup, packing - with a driver that launches
nothing (the PTX is compiled, so NVVM must be installed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from numba import cuda  # noqa: E402

from xpnet import backend  # noqa: E402
from xpnet.kernels import cuda_launch  # noqa: E402

N = 1024
THREADS = 256


@cuda.jit
def _axpy_kernel(x, y, a):
    """y += a * x, all (n,)."""
    i = cuda.grid(1)
    if i < y.size:
        y[i] += a * x[i]


_AXPY_SOURCE = r"""
extern "C" __global__ void axpy(const float* x, float* y, float a, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] += a * x[i];
}
"""


def per_call_us(fn, calls=2000, batches=10, sync=None):
    """Median over ``batches`` of the host time per call of ``fn()`` called ``calls`` //
    ``batches`` times in a row, in microseconds; ``sync()`` runs between batches only."""
    fn()  # compile, load, warm caches
    if sync:
        sync()
    per_batch = max(1, calls // batches)
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        times.append((time.perf_counter() - t0) / per_batch * 1e6)
        if sync:
            sync()
    return float(np.median(times))


def launch_cost_table(calls: int = 2000) -> dict:
    """Median host microseconds per launch of one small kernel, by launch method (GPU)."""
    cp = backend.require_gpu()
    from xpnet.kernels import cuda as gpu

    x = cp.arange(N, dtype=cp.float32)
    y = cp.zeros(N, dtype=cp.float32)
    a = np.float32(0.5)
    grid = (N + THREADS - 1) // THREADS
    stream = gpu._stream()  # Numba's handle on CuPy's current stream, as xpnet launches
    nx, ny = cuda.as_cuda_array(x, sync=False), cuda.as_cuda_array(y, sync=False)
    configured = _axpy_kernel[grid, THREADS, stream]
    raw = cp.RawKernel(_AXPY_SOURCE, "axpy")
    elementwise = cp.ElementwiseKernel("float32 x, float32 a", "float32 y", "y = a * x",
                                       "xpnet_ax")  # the launch is the point, not the sum
    n = np.int64(N)
    im2col_x = cp.zeros((1, 1, 4, 4), cp.float32)
    im2col_col = cp.zeros((4, 4), cp.float32)  # 2x2 windows, stride 2: (1*2*2, 1*2*2)
    sync = cp.cuda.get_current_stream().synchronize

    def numba_with_views():
        _axpy_kernel[grid, THREADS, stream](cuda.as_cuda_array(x, sync=False),
                                            cuda.as_cuda_array(y, sync=False), a)

    methods = {
        "numba": lambda: configured(nx, ny, a),
        "numba_with_views": numba_with_views,
        "fast": lambda: cuda_launch.launch(_axpy_kernel, grid, THREADS, stream, x, y, a),
        "cupy_raw": lambda: raw((grid,), (THREADS,), (x, y, a, n)),
        "cupy_elementwise": lambda: elementwise(x, a, y),
        # a real kernel of 8 arguments, through its launch function (shape guards included)
        "fast_im2col": lambda: gpu.launch_im2col(im2col_x, im2col_col, 2, 2, 2, 0,
                                                 stream=stream),
    }
    table = {f"{name}_us": per_call_us(fn, calls, sync=sync) for name, fn in methods.items()}
    fast = cuda_launch._fast_launcher()
    table["fast_path_on"] = fast is not None and isinstance(
        fast.plan(_axpy_kernel, (x, y, a)), cuda_launch.LaunchPlan)
    table["calls"] = calls
    table["kernel"] = f"y += a * x, {N} float32, {grid} blocks of {THREADS}"
    return table


# ---------------------------------------------------------------------------
# the fast path's own host work, on any machine
# ---------------------------------------------------------------------------


class _NullDriver:
    """Compiles for real, loads and launches nothing: what is left is the host's work."""

    def device(self):
        return 0

    def compute_capability(self):
        return (9, 0)

    def load(self, ptx, entry):
        return type("Function", (), {"ptr": 0})()

    def launch_kernel(self, function_ptr, grid, block, stream_ptr, params_ptr):
        pass


class _CupyLike:
    """The attributes the fast path reads from a CuPy array, over NumPy memory."""

    class _Flags:
        c_contiguous = True

    class _Data:
        def __init__(self, ptr):
            self.ptr = ptr

    def __init__(self, a):
        self.shape, self.strides, self.dtype, self.size = a.shape, a.strides, a.dtype, a.size
        self.data, self.flags, self._host = self._Data(a.ctypes.data), self._Flags(), a


class _Interface:
    """An array known only by its ``__cuda_array_interface__`` (Numba's device arrays)."""

    def __init__(self, a):
        self.__cuda_array_interface__ = {"shape": a.shape, "strides": None,
                                         "typestr": a.dtype.str,
                                         "data": (a.ctypes.data, False), "version": 3}
        self._host = a


def host_marshal_cost(calls: int = 20000) -> dict:
    """Microseconds per call of the fast path's host work (no GPU): im2col's 8 arguments
    (two 4-d arrays, six ints) and axpy's 3, as CuPy-like arrays and as array-interface
    objects; compiles the kernels to PTX first (NVVM needed)."""
    from xpnet.kernels import cuda as gpu

    cuda_launch._READERS[_CupyLike] = cuda_launch._read_cupy  # read as CuPy arrays are
    try:
        launcher = cuda_launch.FastLauncher(_NullDriver())
        x, col = np.zeros((1, 1, 4, 4), np.float32), np.zeros((4, 4), np.float32)
        vx, vy = np.zeros(N, np.float32), np.zeros(N, np.float32)
        table = {}
        for label, wrap in (("cupy_like", _CupyLike), ("array_interface", _Interface)):
            im2col_args = (wrap(x), wrap(col), 2, 2, 2, 0, 2, 2)
            axpy_args = (wrap(vx), wrap(vy), np.float32(0.5))
            for name, kernel, args in (("im2col", gpu._im2col_kernel, im2col_args),
                                       ("axpy", _axpy_kernel, axpy_args)):
                assert launcher.launch(kernel, 1, THREADS, 0, args), f"{name}: not fast"
                table[f"{name}_{label}_us"] = per_call_us(
                    lambda k=kernel, a=args: launcher.launch(k, 1, THREADS, 0, a), calls)
    finally:
        del cuda_launch._READERS[_CupyLike]
    table["compiles"] = launcher.compiles
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--host-only", action="store_true",
                   help="only the fast path's host work, with no GPU")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    result = {"host_marshal": host_marshal_cost()}
    if not args.host_only:
        result["launch"] = launch_cost_table(args.calls)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

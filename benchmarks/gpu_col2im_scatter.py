"""col2im by atomic scatter on the GPU: the alternative the library's gather is measured against.

``xpnet.kernels.cuda.col2im`` gathers: one thread per input pixel adds up the taps whose
window covers it, in a fixed order, so results are deterministic and equal the CPU's. This
module keeps the other design - one thread per ``col`` entry, ``atomicAdd`` into a zeroed
``x`` - only so that ``gpu_bench.py`` can measure the two side by side; its summation order
changes from run to run, which is why the library does not use it.

It reuses the library's launch layer (grid choice, geometry and size checks, CuPy's current
stream), so it runs under Numba's CUDA simulator exactly as on a GPU.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from xpnet import backend
from xpnet.kernels import cuda as gpu
from xpnet.kernels.cuda import _col_entry  # a device function: called by its global name


@cuda.jit
def _col2im_scatter_kernel(col, x, filter_h, filter_w, stride, pad, out_h, out_w):
    """col: (N*out_h*out_w, C*FH*FW) -> x: (N, C, H, W), pre-zeroed; one thread per col entry
    adds it to the pixel it was copied from (padding entries are dropped)."""
    height, width = x.shape[2], x.shape[3]
    ncols = col.shape[1]
    total = col.shape[0] * ncols
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, k, n, c, h, w = _col_entry(i, ncols, out_h, out_w, filter_h, filter_w, stride, pad)
        if 0 <= h < height and 0 <= w < width:
            cuda.atomic.add(x, (n, c, h, w), col[row, k])


def launch_col2im_scatter(col, x, filter_h, filter_w, stride, pad, *, stream=0,
                          threads=gpu.THREADS_PER_BLOCK, max_blocks=gpu.MAX_BLOCKS):
    """Add the windows in ``col`` into ``x`` with atomics; ``x`` must be zeroed first."""
    out_h, out_w = gpu._guard_col(x, col, filter_h, filter_w, stride, pad)
    gpu._launch(_col2im_scatter_kernel, col.size, threads, max_blocks, stream,
                col, x, filter_h, filter_w, stride, pad, out_h, out_w)


def col2im_scatter(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """``col2im`` by atomic scatter on CuPy arrays (float32/float64): the gather's result up to
    summation order."""
    cp = backend.require_gpu()
    col = gpu._input(cp, col, "col")
    if col.dtype not in (np.float32, np.float64):
        raise TypeError(f"col2im_scatter supports float32 and float64, got {col.dtype}")
    shape = tuple(int(s) for s in input_shape)
    x = cp.zeros(shape, dtype=col.dtype)
    if x.size:
        launch_col2im_scatter(gpu._dev(col), gpu._dev(x), filter_h, filter_w, stride, pad,
                              stream=gpu._stream())
    return x

"""One way to launch a Numba CUDA kernel: ``launch(kernel, grid, block, stream, *args)``.

Every GPU kernel of xpnet goes through here, so how a launch is made is decided in one
place. ``kernel`` is a ``@cuda.jit`` dispatcher; ``args`` are what Numba accepts (device
arrays - CuPy arrays, Numba views of them, NumPy arrays under the CUDA simulator - tuples
of them, NumPy scalars); ``stream`` is a Numba stream or 0.
"""

from __future__ import annotations

__all__ = ["launch"]


def launch(kernel, grid, block, stream, *args):
    """Launch ``kernel`` with ``grid`` blocks of ``block`` threads on ``stream``."""
    kernel[grid, block, stream](*args)

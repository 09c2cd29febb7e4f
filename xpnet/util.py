"""The book's helpers (``common/util.py``): im2col/col2im, output sizes, shuffling, smoothing.

``im2col`` and ``col2im`` run on the ``kernels`` package: Numba kernels for NumPy
arrays, CUDA kernels for CuPy arrays, with the book's column layout -- rows ordered
(N, out_h, out_w), columns ordered (C, filter_h, filter_w).
"""

from __future__ import annotations

import numpy as np

from xpnet import kernels
from xpnet.backend import as_numpy, get_array_module, get_rng

__all__ = ["im2col", "col2im", "conv_output_size", "shuffle_dataset", "smooth_curve"]


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """Unfold the filter windows of a batch of images into rows.

    input_data: (N, C, H, W) -> col: (N*out_h*out_w, C*filter_h*filter_w), same dtype and
    device.
    """
    return kernels.im2col(input_data, filter_h, filter_w, stride, pad)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """The adjoint of ``im2col``: fold rows back into images, summing overlapping entries.

    col: (N*out_h*out_w, C*filter_h*filter_w) -> (N, C, H, W) = ``input_shape``.
    """
    return kernels.col2im(col, input_shape, filter_h, filter_w, stride, pad)


def conv_output_size(input_size, filter_size, stride=1, pad=0):
    """Output length of a window of ``filter_size`` sliding over ``input_size`` padded by
    ``pad`` on each side: ``(input_size + 2*pad - filter_size) // stride + 1``.

    Positions that would run past the edge are dropped (floor), as im2col does. Raises
    ValueError when the window does not fit at all (output < 1).
    """
    input_size = kernels.check_integer("conv_output_size: input_size", input_size, 1)
    filter_size = kernels.check_integer("conv_output_size: filter_size", filter_size, 1)
    stride = kernels.check_integer("conv_output_size: stride", stride, 1)
    pad = kernels.check_integer("conv_output_size: pad", pad, 0)
    out = kernels.conv_output_size(input_size, filter_size, stride, pad)
    if out < 1:
        raise ValueError(
            f"conv_output_size: a window of {filter_size} does not fit an input of "
            f"{input_size} padded by {pad} on each side ({input_size + 2 * pad} in all)"
        )
    return out


def shuffle_dataset(x, t):
    """Shuffle samples and their labels together (along axis 0), on their device.

    x: (N, ...), t: (N, ...). The permutation comes from ``xpnet.backend.get_rng``, so
    ``xpnet.seed`` makes it reproducible. Returns new arrays ``(x, t)``.
    """
    xp = get_array_module(x, t)
    n = x.shape[0]
    if t.shape[0] != n:
        raise ValueError(
            f"shuffle_dataset: x of shape {x.shape} and t of shape {t.shape} have different "
            "numbers of samples"
        )
    rng = get_rng(xp)
    if hasattr(rng, "permutation"):
        permutation = rng.permutation(n)
    else:  # CuPy's Generator: sort random keys (ties have probability ~0 in float64)
        permutation = xp.argsort(rng.random(n))
    return x[permutation], t[permutation]


def smooth_curve(x):
    """Smooth a loss curve for plotting (the book's, a Kaiser-window moving average).

    x: 1-D sequence of length n -> NumPy float array of length n. Series shorter than the
    11-point window are returned unchanged (as floats): there is nothing to smooth over.
    """
    x = as_numpy(x).astype(np.float64)  # loss lists, host or device arrays
    if x.ndim != 1:
        raise ValueError(f"smooth_curve: expected a 1-D series, got shape {x.shape}")
    window_len = 11
    if x.size < window_len:
        return x.copy()
    # The book reflects the ends so the average is defined up to the edges.
    s = np.r_[x[window_len - 1 : 0 : -1], x, x[-1:-window_len:-1]]
    w = np.kaiser(window_len, 2)
    y = np.convolve(w / w.sum(), s, mode="valid")
    return y[5 : len(y) - 5]

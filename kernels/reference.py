"""Plain versions of the kernels, written for clarity: the oracle the tests trust.

Same signatures and results as the entry points of ``xpnet.kernels`` (without their argument
checks). ``im2col`` and ``col2im`` are the book's slicing loops (chapter 7.4.3,
``common/util.py``), changed only to keep the input's dtype and to run on the array module
of their input, so on CuPy arrays they are the book's code ported to the GPU (the naive GPU
baseline of ``benchmarks/gpu_bench.py``). The max-pool pair is the obvious loop over every
output position, NumPy only. Nothing here is fast; everything here is easy to check by eye.

Layouts (the book's): ``col`` rows are ordered (N, out_h, out_w), its columns (C, FH, FW).
"""

from __future__ import annotations

import numpy as np

from xpnet.backend import get_array_module


def conv_output_size(input_size: int, filter_size: int, stride: int = 1, pad: int = 0) -> int:
    """Output length of a filter sliding over ``input_size`` (+ ``pad`` each side), floored."""
    return (input_size + 2 * pad - filter_size) // stride + 1


def im2col(x, filter_h, filter_w, stride=1, pad=0):
    """x: (N, C, H, W) -> col: (N*out_h*out_w, C*filter_h*filter_w), same dtype."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out_h = conv_output_size(H, filter_h, stride, pad)
    out_w = conv_output_size(W, filter_w, stride, pad)

    img = xp.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = xp.zeros((N, C, filter_h, filter_w, out_h, out_w), dtype=x.dtype)
    for y in range(filter_h):
        y_max = y + stride * out_h
        for xx in range(filter_w):
            x_max = xx + stride * out_w
            col[:, :, y, xx, :, :] = img[:, :, y:y_max:stride, xx:x_max:stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """col: (N*out_h*out_w, C*filter_h*filter_w) -> x: input_shape (N, C, H, W).

    Entries that im2col copied to several places are summed back, so this is the adjoint
    of ``im2col``: ``<im2col(x), c> == <x, col2im(c)>``.
    """
    xp = get_array_module(col)
    N, C, H, W = input_shape
    out_h = conv_output_size(H, filter_h, stride, pad)
    out_w = conv_output_size(W, filter_w, stride, pad)
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)

    img = xp.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1), dtype=col.dtype)
    for y in range(filter_h):
        y_max = y + stride * out_h
        for xx in range(filter_w):
            x_max = xx + stride * out_w
            img[:, :, y:y_max:stride, xx:x_max:stride] += col[:, :, y, xx, :, :]
    return xp.ascontiguousarray(img[:, :, pad : H + pad, pad : W + pad])


def maxpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> (out, argmax), both (N, C, out_h, out_w).

    ``argmax`` (int32) is the row-major index of the maximum inside its pool_h x pool_w
    window. Padding is never selected; among equal values the first in row-major order
    wins, and a NaN wins over any number (the first NaN), as ``np.argmax`` does.
    """
    N, C, H, W = x.shape
    out_h = conv_output_size(H, pool_h, stride, pad)
    out_w = conv_output_size(W, pool_w, stride, pad)
    out = np.empty((N, C, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((N, C, out_h, out_w), dtype=np.int32)
    for n in range(N):
        for c in range(C):
            for i in range(out_h):
                for j in range(out_w):
                    best, best_k = None, -1
                    for a in range(pool_h):
                        for b in range(pool_w):
                            h, w = i * stride - pad + a, j * stride - pad + b
                            if not (0 <= h < H and 0 <= w < W):
                                continue  # padding: never selected
                            v = x[n, c, h, w]
                            if best is None or v > best or (np.isnan(v) and not np.isnan(best)):
                                best, best_k = v, a * pool_w + b
                    out[n, c, i, j] = best
                    argmax[n, c, i, j] = best_k
    return out, argmax


def maxpool_backward(dout, argmax, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout, argmax: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W).

    Each gradient goes to the input element its window selected; where windows overlap
    (stride < pool size) the contributions are summed.
    """
    N, C, H, W = input_shape
    dx = np.zeros(input_shape, dtype=dout.dtype)
    out_h, out_w = dout.shape[2], dout.shape[3]
    for n in range(N):
        for c in range(C):
            for i in range(out_h):
                for j in range(out_w):
                    a, b = divmod(int(argmax[n, c, i, j]), pool_w)
                    dx[n, c, i * stride - pad + a, j * stride - pad + b] += dout[n, c, i, j]
    return dx

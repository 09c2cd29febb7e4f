"""Plain versions of the kernels, written for clarity: the oracle the tests trust.

Same signatures and results as the entry points of ``xpnet.kernels`` (without their argument
checks). ``im2col`` and ``col2im`` are the book's slicing loops (chapter 7.4.3,
``common/util.py``), changed only to keep the input's dtype and to run on the array module
of their input, so on CuPy arrays they are the book's code ported to the GPU (the naive GPU
baseline of ``benchmarks/gpu_bench.py``). The max-pool pair is the obvious loop over every
output position, NumPy only; the average-pool pair sums the window's taps as im2col slices
them, on any array module. Nothing here is fast; everything here is easy to check by eye.

Layouts (the book's): ``col`` rows are ordered (N, out_h, out_w), its columns (C, FH, FW).
"""

from __future__ import annotations

import numpy as np

from xpnet.backend import get_array_module


def conv_output_size(input_size: int, filter_size: int, stride: int = 1, pad: int = 0) -> int:
    """Output length of a filter sliding over ``input_size`` (+ ``pad`` each side), floored.

    The one output-size formula of xpnet (kernels, layers, models and the FLOP model use
    it); it checks nothing, ``xpnet.util.conv_output_size`` is the checked public one.
    """
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


def avgpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> out: (N, C, out_h, out_w), each window's mean, x's dtype.

    Padding counts as zeros: every window is divided by pool_h * pool_w (PyTorch's
    ``count_include_pad=True``). The taps are added in row-major window order, then the sum
    is divided once: the order the kernels keep, so they match this bit for bit.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out_h = conv_output_size(H, pool_h, stride, pad)
    out_w = conv_output_size(W, pool_w, stride, pad)
    img = xp.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    total = xp.zeros((N, C, out_h, out_w), dtype=x.dtype)
    for a in range(pool_h):
        for b in range(pool_w):
            total += img[:, :, a : a + stride * out_h : stride, b : b + stride * out_w : stride]
    return total / x.dtype.type(pool_h * pool_w)


def avgpool_backward(dout, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W), dout's dtype.

    Every window hands dout / (pool_h * pool_w) to each of its pixels; where windows overlap
    the shares add up. Summed per pixel in the order of the window taps (a, b) ascending,
    then divided once, as the kernels do.
    """
    xp = get_array_module(dout)
    N, C, H, W = input_shape
    out_h, out_w = dout.shape[2], dout.shape[3]
    img = xp.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1), dtype=dout.dtype)
    for a in range(pool_h):
        for b in range(pool_w):
            img[:, :, a : a + stride * out_h : stride, b : b + stride * out_w : stride] += dout
    dx = img[:, :, pad : H + pad, pad : W + pad] / dout.dtype.type(pool_h * pool_w)
    return xp.ascontiguousarray(dx)


def channel_norm_forward(x, gamma, beta, eps, mean=None, var=None):
    """Per-channel batch normalization of x: (N, C, H, W) with gamma, beta: (C,).

    With ``mean`` and ``var`` None the statistics are the batch's (over N, H, W; the
    variance is the biased one); otherwise those (C,) arrays are used. Returns
    ``(out, xn, mean, var)``: ``xn = (x - mean) / sqrt(var + eps)``,
    ``out = gamma * xn + beta`` (both x's shape and dtype), mean and var (C,) in x's dtype.
    """
    xp = get_array_module(x)
    if mean is None:
        x64 = x.astype(xp.float64)
        mean = x64.mean(axis=(0, 2, 3)).astype(x.dtype)
        var = ((x64 - x64.mean(axis=(0, 2, 3), keepdims=True)) ** 2).mean(axis=(0, 2, 3))
        var = var.astype(x.dtype)
    channel = (1, -1, 1, 1)
    std = xp.sqrt(var + x.dtype.type(eps))
    xn = (x - mean.reshape(channel)) * (1 / std).reshape(channel)
    out = xn * gamma.reshape(channel).astype(x.dtype) + beta.reshape(channel).astype(x.dtype)
    return out, xn, mean, var


def channel_norm_backward(dout, xn, gamma, std, batch_statistics):
    """The gradients of ``channel_norm_forward``: dout, xn: (N, C, H, W); gamma, std: (C,).

    ``batch_statistics``: whether the forward pass used the batch's own mean and variance
    (training), which then depend on x too. Returns ``(dx, dgamma, dbeta)``, dgamma and
    dbeta (C,) in dout's dtype.
    """
    xp = get_array_module(dout)
    dbeta = dout.astype(xp.float64).sum(axis=(0, 2, 3)).astype(dout.dtype)
    dgamma = (dout.astype(xp.float64) * xn).sum(axis=(0, 2, 3)).astype(dout.dtype)
    channel = (1, -1, 1, 1)
    scale = (gamma.astype(dout.dtype) / std).reshape(channel)
    if batch_statistics:
        m = dout.shape[0] * dout.shape[2] * dout.shape[3]
        dx = (dout - (dbeta / m).reshape(channel) - xn * (dgamma / m).reshape(channel)) * scale
    else:
        dx = dout * scale
    return dx, dgamma, dbeta

"""The kernels on the CPU: Numba ``@njit`` loops over NumPy arrays.

Same signatures and layouts as ``kernels.reference``; ``kernels`` dispatches here for
NumPy arrays. Every kernel is parallel over independent output blocks (rows of ``col``
for im2col, (n, c) planes for the others), so threads never write the same element and
the results do not depend on the thread count. No ``fastmath``: these loops move and
compare values, and col2im's sums must stay in a fixed order to be reproducible.

float16 has no arithmetic in Numba; im2col moves its bits as uint16 (exact), and the
other kernels compute in float32 and round once at the end.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.reference import conv_output_size

_HALF = np.dtype(np.float16)


# ---------------------------------------------------------------------------
# im2col / col2im
# ---------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _im2col(x, filter_h, filter_w, stride, pad, out_h, out_w, col):
    N, C, H, W = x.shape
    # One task per output row (n, i): it writes out_w contiguous rows of col.
    for t in prange(N * out_h):
        n = t // out_h
        i = t - n * out_h
        h0 = i * stride - pad
        for j in range(out_w):
            r = t * out_w + j
            w0 = j * stride - pad
            # the filter columns b with 0 <= w0 + b < W; the rest read padding
            b_lo = min(max(0, -w0), filter_w)
            b_hi = max(min(filter_w, W - w0), b_lo)
            k = 0
            for c in range(C):
                for a in range(filter_h):
                    h = h0 + a
                    if h < 0 or h >= H:
                        for b in range(filter_w):
                            col[r, k + b] = 0
                    else:
                        for b in range(b_lo):
                            col[r, k + b] = 0
                        for b in range(b_lo, b_hi):
                            col[r, k + b] = x[n, c, h, w0 + b]
                        for b in range(b_hi, filter_w):
                            col[r, k + b] = 0
                    k += filter_w


@njit(parallel=True, cache=True)
def _col2im(col, filter_h, filter_w, stride, pad, out_h, out_w, x):
    N, C, H, W = x.shape
    fhw = filter_h * filter_w
    # One task per (n, c) plane: it owns x[n, c], so the += below never races.
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        for h in range(H):
            for w in range(W):
                x[n, c, h, w] = 0
        k0 = c * fhw
        for i in range(out_h):
            h0 = i * stride - pad
            a_lo = max(0, -h0)
            a_hi = min(filter_h, H - h0)
            for j in range(out_w):
                r = (n * out_h + i) * out_w + j
                w0 = j * stride - pad
                b_lo = max(0, -w0)
                b_hi = min(filter_w, W - w0)
                for a in range(a_lo, a_hi):
                    k = k0 + a * filter_w
                    for b in range(b_lo, b_hi):
                        x[n, c, h0 + a, w0 + b] += col[r, k + b]


def im2col(x, filter_h, filter_w, stride=1, pad=0):
    """x: (N, C, H, W) -> col: (N*out_h*out_w, C*filter_h*filter_w), same dtype."""
    N, C, H, W = x.shape
    out_h = conv_output_size(H, filter_h, stride, pad)
    out_w = conv_output_size(W, filter_w, stride, pad)
    if x.dtype == _HALF:  # a pure copy: move the bits, exactly
        return im2col(x.view(np.uint16), filter_h, filter_w, stride, pad).view(_HALF)
    col = np.empty((N * out_h * out_w, C * filter_h * filter_w), dtype=x.dtype)
    _im2col(x, filter_h, filter_w, stride, pad, out_h, out_w, col)
    return col


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """col: (N*out_h*out_w, C*filter_h*filter_w) -> x: input_shape, overlaps summed."""
    N, C, H, W = (int(s) for s in input_shape)
    out_h = conv_output_size(H, filter_h, stride, pad)
    out_w = conv_output_size(W, filter_w, stride, pad)
    if col.dtype == _HALF:
        return col2im(col.astype(np.float32), input_shape, filter_h, filter_w, stride, pad).astype(
            _HALF
        )
    x = np.empty((N, C, H, W), dtype=col.dtype)
    _col2im(col, filter_h, filter_w, stride, pad, out_h, out_w, x)
    return x


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def _maxpool_forward(x, pool_h, pool_w, stride, pad, out, argmax):
    N, C, H, W = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        for i in range(out_h):
            h0 = i * stride - pad
            a_lo = max(0, -h0)
            a_hi = min(pool_h, H - h0)
            for j in range(out_w):
                w0 = j * stride - pad
                b_lo = max(0, -w0)
                b_hi = min(pool_w, W - w0)
                # start from the first element inside the image: padding is never selected
                best = x[n, c, h0 + a_lo, w0 + b_lo]
                best_k = a_lo * pool_w + b_lo
                for a in range(a_lo, a_hi):
                    for b in range(b_lo, b_hi):
                        v = x[n, c, h0 + a, w0 + b]
                        # first maximum wins; a NaN beats any number (as np.argmax)
                        if v > best or (v != v and best == best):
                            best = v
                            best_k = a * pool_w + b
                out[n, c, i, j] = best
                argmax[n, c, i, j] = best_k


@njit(parallel=True, cache=True)
def _maxpool_backward(dout, argmax, pool_w, stride, pad, dx):
    N, C, H, W = dx.shape
    out_h, out_w = dout.shape[2], dout.shape[3]
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0
        for i in range(out_h):
            for j in range(out_w):
                k = argmax[n, c, i, j]
                a = k // pool_w
                b = k - a * pool_w
                dx[n, c, i * stride - pad + a, j * stride - pad + b] += dout[n, c, i, j]


def maxpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> (out, argmax int32), both (N, C, out_h, out_w)."""
    N, C, H, W = x.shape
    out_h = conv_output_size(H, pool_h, stride, pad)
    out_w = conv_output_size(W, pool_w, stride, pad)
    if x.dtype == _HALF:  # float32 holds every float16 exactly: the same maxima
        out, argmax = maxpool_forward(x.astype(np.float32), pool_h, pool_w, stride, pad)
        return out.astype(_HALF), argmax
    out = np.empty((N, C, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((N, C, out_h, out_w), dtype=np.int32)
    _maxpool_forward(x, pool_h, pool_w, stride, pad, out, argmax)
    return out, argmax


def maxpool_backward(dout, argmax, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout, argmax: (N, C, out_h, out_w) -> dx: input_shape, overlapping windows summed."""
    N, C, H, W = (int(s) for s in input_shape)
    if dout.dtype == _HALF:
        dx = maxpool_backward(dout.astype(np.float32), argmax, input_shape, pool_h, pool_w,
                              stride, pad)
        return dx.astype(_HALF)
    dx = np.empty((N, C, H, W), dtype=dout.dtype)
    _maxpool_backward(dout, argmax, pool_w, stride, pad, dx)
    return dx

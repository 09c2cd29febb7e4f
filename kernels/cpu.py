"""The kernels on the CPU: Numba ``@njit`` loops over NumPy arrays.

Same signatures and layouts as ``kernels.reference``; ``kernels`` dispatches here for
NumPy arrays. Every kernel is parallel over independent output blocks (rows of ``col``
for im2col, (n, c) planes for col2im and pooling, chunks of samples for the fused
convolution, runs of elements for ReLU), so threads never write the same element and
the results do not depend on the thread count. im2col and col2im are Numba ``prange``
loops; the kernels a training step runs (convolution, pooling, ReLU) are ``nogil``
kernels handed out by xpnet's own worker threads (see ``_parallel_for``). No
``fastmath``: these loops move and compare values, and col2im's sums must stay in a
fixed order to be reproducible.

float16 has no arithmetic in Numba: the kernels see float16 arrays as uint16 bits. im2col
and ReLU work on the bits (exact); the convolution's forward pass and pooling read float16
into float32 a cache-sized block at a time and round their results to float16 there, so a
float16 activation is never copied whole to float32; the rest compute in float32 and round
once at the end. Adam's update is one fused pass per parameter array.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from xpnet.kernels.reference import conv_output_size

_HALF = np.dtype(np.float16)


# ---------------------------------------------------------------------------
# float16 <-> float32 inside the kernels
# ---------------------------------------------------------------------------
#
# Numba has no float16 type, so the kernels see float16 arrays as their uint16 bits and
# convert with the two intrinsics below: LLVM's fpext / fptrunc between half and float,
# which round to nearest, ties to even, as NumPy's astype does, and compile to the CPU's
# conversion instructions (x86 F16C, ARM's native half): measured 100x faster than the
# same rounding written with integer operations. They run on cache-sized blocks inside the
# kernels, so float16 arrays are never converted whole.


@intrinsic
def _half_bits(typingctx, value):
    """float32 -> the bits (uint16) of the nearest float16."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))
    return types.uint16(types.float32), codegen


@intrinsic
def _single_from_half_bits(typingctx, bits):
    """The bits (uint16) of a float16 -> its value as float32 (exact)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@njit(cache=True, nogil=True)
def _half_to_single(bits, out):
    """out[i] = the float16 whose bits are bits[i], as float32 (1-D arrays)."""
    for i in range(out.size):
        out[i] = _single_from_half_bits(bits[i])


@njit(cache=True, nogil=True)
def _single_to_half(single, out_bits):
    """out_bits[i] = the bits of the float16 nearest to single[i] (1-D arrays)."""
    for i in range(single.size):
        out_bits[i] = _half_bits(single[i])


@njit(cache=True, nogil=True)
def _relu_single_to_half(single, out_bits):
    """out_bits[i] = the bits of ReLU of the float16 nearest to single[i]: rounding and
    ReLU commute (a value <= 0 gives +0 either way, a NaN stays NaN), so the ReLU is taken
    first, on the float32 value."""
    for i in range(single.size):
        v = single[i]
        out_bits[i] = _half_bits(np.float32(0) if v <= 0 else v)


_half_ok = None


def _half_in_kernels():
    """Whether the conversion kernels compile here (an LLVM without a lowering for the
    half conversions would fail to link them); otherwise float16 goes through astype."""
    global _half_ok
    if _half_ok is None:
        try:
            probe = np.array([1.5], np.float32)
            bits = np.empty(1, np.uint16)
            _single_to_half(probe, bits)
            _half_to_single(bits, probe)
            _half_ok = bool(probe[0] == 1.5)
        except Exception:  # any compile or link failure: the slow, sure path
            _half_ok = False
    return _half_ok


def to_half(x):
    """x: float32 array -> the same values rounded to float16 (as ``x.astype(float16)``)."""
    if not _half_in_kernels():
        return np.asarray(x, np.float32).astype(_HALF)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape, _HALF)
    _single_to_half(x.reshape(-1), out.reshape(-1).view(np.uint16))
    return out


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
    x = np.ascontiguousarray(x)  # one compiled layout (views are copied once)
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
    col = np.ascontiguousarray(col)
    x = np.empty((N, C, H, W), dtype=col.dtype)
    _col2im(col, filter_h, filter_w, stride, pad, out_h, out_w, x)
    return x


# ---------------------------------------------------------------------------
# max pooling
# ---------------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _has_nan(plane):
    """Whether a 2-D plane holds a NaN (an OR over the plane: vectorizes)."""
    found = False
    for h in range(plane.shape[0]):
        row = plane[h]
        for w in range(plane.shape[1]):
            found |= row[w] != row[w]
    return found


@njit(cache=True, nogil=True, inline="always")
def _wins(v, best, nan_aware):
    """Whether v replaces the window's best so far: a larger value wins, the first of equal
    ones stays; a NaN wins over numbers and then stays (np.argmax's rule). That rule's
    test compiles to code 7x slower than ``v > best``, which gives the same answer when
    the plane holds no NaN -- so the kernels check each plane first (``nan_aware``; the
    test is loop-invariant, so the compiler makes one loop of each kind)."""
    if nan_aware:
        return (not (v <= best)) & (best == best)
    return v > best


@njit(cache=True, nogil=True)
def _maxpool_forward(x, pool_h, pool_w, stride, pad, out, argmax, p0, p1):
    N, C, H, W = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for p in range(p0, p1):  # the (n, c) planes of this task
        n = p // C
        c = p - n * C
        xs = x[n, c]
        nan_aware = _has_nan(xs)
        for i in range(out_h):
            h0 = i * stride - pad
            a_lo = max(0, -h0)
            a_hi = min(pool_h, H - h0)
            for j in range(out_w):
                w0 = j * stride - pad
                b_lo = max(0, -w0)
                b_hi = min(pool_w, W - w0)
                # start from the first element inside the image: padding is never selected
                best = xs[h0 + a_lo, w0 + b_lo]
                best_k = a_lo * pool_w + b_lo
                for a in range(a_lo, a_hi):
                    for b in range(b_lo, b_hi):
                        v = xs[h0 + a, w0 + b]
                        take = _wins(v, best, nan_aware)
                        best = v if take else best
                        best_k = a * pool_w + b if take else best_k
                out[n, c, i, j] = best
                argmax[n, c, i, j] = best_k


@njit(cache=True, nogil=True)
def _maxpool_plane_2x2(xs, out, argmax, nan_aware):
    """out, argmax: (out_h, out_w) of the plane xs, unrolled (3x faster than the loop)."""
    out_h, out_w = out.shape
    for i in range(out_h):
        r0 = xs[2 * i]
        r1 = xs[2 * i + 1]
        out_row = out[i]
        argmax_row = argmax[i]
        for j in range(out_w):
            best = r0[2 * j]
            best_k = 0
            v = r0[2 * j + 1]
            take = _wins(v, best, nan_aware)
            best = v if take else best
            best_k = 1 if take else best_k
            v = r1[2 * j]
            take = _wins(v, best, nan_aware)
            best = v if take else best
            best_k = 2 if take else best_k
            v = r1[2 * j + 1]
            take = _wins(v, best, nan_aware)
            best = v if take else best
            best_k = 3 if take else best_k
            out_row[j] = best
            argmax_row[j] = best_k


@njit(cache=True, nogil=True)
def _maxpool_forward_2x2(x, out, argmax, p0, p1):
    """The networks' 2x2, stride-2, unpadded pooling over the planes p0..p1."""
    C = x.shape[1]
    for p in range(p0, p1):
        n = p // C
        c = p - n * C
        _maxpool_plane_2x2(x[n, c], out[n, c], argmax[n, c], _has_nan(x[n, c]))


_BAD_ARGMAX = (
    "maxpool_backward: argmax holds an index outside its pooling window (or one that points "
    "into the padding); pass the argmax that maxpool_forward returned for this input"
)


@njit(cache=True, nogil=True)
def _maxpool_backward(dout, argmax, pool_h, pool_w, stride, pad, dx, p0, p1):
    N, C, H, W = dx.shape
    out_h, out_w = dout.shape[2], dout.shape[3]
    window = pool_h * pool_w
    for p in range(p0, p1):
        n = p // C
        c = p - n * C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0
        for i in range(out_h):
            for j in range(out_w):
                k = argmax[n, c, i, j]
                # never trust the index: a wrong one would write outside dx
                if k < 0 or k >= window:
                    raise IndexError(_BAD_ARGMAX)
                a = k // pool_w
                b = k - a * pool_w
                h = i * stride - pad + a
                w = j * stride - pad + b
                if h < 0 or h >= H or w < 0 or w >= W:
                    raise IndexError(_BAD_ARGMAX)
                dx[n, c, h, w] += dout[n, c, i, j]


@njit(cache=True, nogil=True)
def _maxpool_backward_2x2(dout_bits, argmax, dx_bits, p0, p1):
    """The 2x2, stride-2, unpadded case with even H and W: the windows tile dx, so every
    element is written once, in order, with no zeroing pass first (1.3x-1.5x faster).

    dout_bits, dx_bits: the float arrays as unsigned integers of their size. Each element
    of a window gets dout's bits ANDed with all ones (the argmax) or zero: exactly the
    gradient or +0, and it vectorizes, where a float select compiled to one branch per
    element (measured: 10x slower)."""
    C = dx_bits.shape[1]
    out_h, out_w = dout_bits.shape[2], dout_bits.shape[3]
    for p in range(p0, p1):
        n = p // C
        c = p - n * C
        dout_plane, argmax_plane, dx_plane = dout_bits[n, c], argmax[n, c], dx_bits[n, c]
        bad = False
        for i in range(out_h):
            top, bottom = dx_plane[2 * i], dx_plane[2 * i + 1]
            dout_row, argmax_row = dout_plane[i], argmax_plane[i]
            for j in range(out_w):
                v = dout_row[j]
                k = argmax_row[j]
                bad |= (k < 0) | (k > 3)
                top[2 * j] = v & -(k == 0)
                top[2 * j + 1] = v & -(k == 1)
                bottom[2 * j] = v & -(k == 2)
                bottom[2 * j + 1] = v & -(k == 3)
        if bad:  # an index outside the window would lose its gradient
            raise IndexError(_BAD_ARGMAX)


_FLOAT_BITS = {_HALF: np.uint16, np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def maxpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> (out, argmax int32), both (N, C, out_h, out_w)."""
    N, C, H, W = x.shape
    out_h = conv_output_size(H, pool_h, stride, pad)
    out_w = conv_output_size(W, pool_w, stride, pad)
    x = np.ascontiguousarray(x)
    out = np.empty((N, C, out_h, out_w), dtype=x.dtype)
    argmax = np.empty((N, C, out_h, out_w), dtype=np.int32)
    if pool_h == pool_w == stride == 2 and pad == 0:
        def pool(x, out, argmax, p0, p1):
            _maxpool_forward_2x2(x, out, argmax, p0, p1)
    else:
        def pool(x, out, argmax, p0, p1):
            _maxpool_forward(x, pool_h, pool_w, stride, pad, out, argmax, p0, p1)
    if x.dtype == _HALF and _half_in_kernels():
        _parallel_for(N * C, _POOL_GRAIN, _planes_in_single(pool, x, out, argmax))
    elif x.dtype == _HALF:  # float32 holds every float16 exactly: the same maxima
        single, argmax = maxpool_forward(x.astype(np.float32), pool_h, pool_w, stride, pad)
        out = single.astype(_HALF)
    else:
        _parallel_for(N * C, _POOL_GRAIN, lambda p0, p1: pool(x, out, argmax, p0, p1))
    return out, argmax


def _planes_in_single(pool, x, out, argmax):
    """task(p0, p1): ``pool`` over the (n, c) planes p0..p1 of float16 x, reading them as
    float32 (exact) a cache-sized block at a time and rounding its maxima into out (float16);
    float32 holds every float16, so the maxima and argmax are float16's own."""
    N, C, H, W = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    planes = N * C
    x_bits = x.reshape(-1).view(np.uint16)
    out_bits = out.reshape(-1).view(np.uint16)
    argmax_planes = argmax.reshape(1, planes, out_h, out_w)
    block = max(1, _L2_BYTES // 4 // (H * W * 4))  # a quarter of L2 of float32 input

    def task(p0, p1):
        for b0 in range(p0, p1, block):
            b1 = min(b0 + block, p1)
            x_single = _scratch("pool_in", (1, b1 - b0, H, W), np.float32)
            out_single = _scratch("pool_out", (1, b1 - b0, out_h, out_w), np.float32)
            _half_to_single(x_bits[b0 * H * W : b1 * H * W], x_single.reshape(-1))
            pool(x_single, out_single, argmax_planes[:, b0:b1], 0, b1 - b0)
            _single_to_half(out_single.reshape(-1),
                            out_bits[b0 * out_h * out_w : b1 * out_h * out_w])

    return task


def maxpool_backward(dout, argmax, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout, argmax: (N, C, out_h, out_w) -> dx: input_shape, overlapping windows summed."""
    N, C, H, W = (int(s) for s in input_shape)
    tiled = pool_h == pool_w == stride == 2 and pad == 0 and H % 2 == 0 and W % 2 == 0
    bits = _FLOAT_BITS.get(dout.dtype) if tiled else None
    if dout.dtype == _HALF and bits is None:  # sums of overlapping windows: in float32
        dx = maxpool_backward(dout.astype(np.float32), argmax, input_shape, pool_h, pool_w,
                              stride, pad)
        return dx.astype(_HALF)
    dout = np.ascontiguousarray(dout)
    argmax = _argmax_as_compiled(argmax)
    dx = np.empty((N, C, H, W), dtype=dout.dtype)
    if bits is not None:  # the windows tile dx: each element is a copy of dout or +0
        dout_bits, dx_bits = dout.view(bits), dx.view(bits)
        _parallel_for(N * C, _POOL_GRAIN,
                      lambda p0, p1: _maxpool_backward_2x2(dout_bits, argmax, dx_bits, p0, p1))
        return dx
    _parallel_for(N * C, _POOL_GRAIN, lambda p0, p1: _maxpool_backward(
        dout, argmax, pool_h, pool_w, stride, pad, dx, p0, p1))
    return dx


def _argmax_as_compiled(argmax):
    """argmax as a C-contiguous int32 array (what maxpool_forward returns) or int64 array,
    the two the kernels are compiled for. Other integer dtypes go to int64, never to int32,
    so no value wraps around into the window (a uint64 beyond 2**63 becomes negative, which
    the kernels refuse)."""
    if argmax.dtype == np.int32:
        return np.ascontiguousarray(argmax)
    return np.ascontiguousarray(argmax, dtype=np.int64)


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------
#
# NumPy's ``maximum(x, 0)`` plus the book's mask ``x <= 0`` and ``dout * ~mask`` make four
# passes over memory and two temporaries; here forward is one pass (a view whose rows are
# strided, such as a slice of the last axis, is read in place) and backward one pass over
# dout and the kept output (``out <= 0`` exactly where ``x <= 0``, NaN included), with no
# mask array at all. Both are memory-bound: a second thread adds little.

_RELU_GRAIN = 1 << 18  # elements per task (1 MB of float32): smaller arrays run on one
# thread -- a second one only adds its wake-up (measured: 2x slower at 100x64x4x4)


# The loops below index slices from 0: indexed from ``lo``, which could be negative for all
# the compiler knows, every access carries Python's negative-index wraparound and the loop
# does not vectorize (measured: 4x-5x slower).


@njit(cache=True, nogil=True)
def _relu_forward_flat(x, out, lo, hi):
    src, dst = x[lo:hi], out[lo:hi]
    for i in range(dst.size):
        v = src[i]
        # a NaN is kept, as np.maximum keeps it; written as a select (no branch)
        dst[i] = 0 if v <= 0 else v


@njit(cache=True, nogil=True)
def _relu_forward_half_bits(x, out, lo, hi):
    """ReLU on float16 bits (uint16): sign bit set and not a NaN (magnitude bits at most
    infinity's 0x7C00) gives +0."""
    src, dst = x[lo:hi], out[lo:hi]
    for i in range(dst.size):
        v = src[i]
        dst[i] = 0 if 0x8000 <= v <= 0xFC00 else v


@njit(cache=True, nogil=True)
def _relu_forward_rows(x, pitch, out, r0, r1):
    """out[r] for r0 <= r < r1 from the row of length L = out.shape[1] that starts at
    x[r * pitch] of 1-D x."""
    L = out.shape[1]
    for r in range(r0, r1):
        src, dst = x[r * pitch : r * pitch + L], out[r]
        for j in range(L):
            v = src[j]
            dst[j] = 0 if v <= 0 else v


@njit(cache=True, nogil=True)
def _relu_backward_flat(dout, out, dx, lo, hi):
    grad, kept, dst = dout[lo:hi], out[lo:hi], dx[lo:hi]
    for i in range(dst.size):
        # the book's dout[mask] = 0 (mask = x <= 0), as a select: a zeroed unit passes
        # 0 even for an infinite or NaN dout. dout[i] is loaded before the test: read
        # only in the else branch, the load is conditional, the loop compiles to a
        # branch per element instead of vector selects (measured: 10x slower)
        g = grad[i]
        dst[i] = 0 if kept[i] <= 0 else g


def _as_rows(x):
    """(data, pitch, R, L): x's elements as R rows of L = x.shape[-1], row r starting at
    data[r * pitch] of a 1-D contiguous view of x's memory -- or None when x's layout is
    not that (then the caller copies).

    Axes of size 1 are dropped first: they are never stepped along, so their strides are
    arbitrary (NumPy sets them freely) and must not be read. Of the rest, the last must be
    contiguous, the one before it gives the (positive) pitch, and the leading ones must
    nest: stride[k] == shape[k+1] * stride[k+1]."""
    if x.size == 0:
        return None
    axes = [(n, st) for n, st in zip(x.shape, x.strides) if n > 1]
    if len(axes) < 2 or axes[-1][1] != x.itemsize:
        return None
    L = axes[-1][0]
    pitch_bytes = axes[-2][1]
    if pitch_bytes % x.itemsize or pitch_bytes < L * x.itemsize:
        return None
    for (_, outer), (n, inner) in zip(axes[:-2], axes[1:-1]):
        if outer != n * inner:
            return None
    pitch = pitch_bytes // x.itemsize
    R = x.size // L
    span = (R - 1) * pitch + L
    data = np.lib.stride_tricks.as_strided(x, shape=(span,), strides=(x.itemsize,))
    return data, pitch, R, L


def relu_forward(x):
    """x: any shape -> max(x, 0) (NaN kept), a new C-contiguous array of x's dtype."""
    if x.dtype == _HALF:  # on the bits: a negative number becomes +0, a NaN stays
        x = np.ascontiguousarray(x)
        out = np.empty(x.shape, x.dtype)
        bits, o = x.reshape(-1).view(np.uint16), out.reshape(-1).view(np.uint16)
        _parallel_for(x.size, _RELU_GRAIN,
                      lambda lo, hi: _relu_forward_half_bits(bits, o, lo, hi))
        return out
    if x.dtype not in (np.float32, np.float64):
        return np.maximum(x, x.dtype.type(0), order="C")
    out = np.empty(x.shape, x.dtype)
    rows = None if x.flags.c_contiguous else _as_rows(x)
    if rows is None:
        flat, o = np.ascontiguousarray(x).reshape(-1), out.reshape(-1)
        _parallel_for(x.size, _RELU_GRAIN, lambda lo, hi: _relu_forward_flat(flat, o, lo, hi))
        return out
    data, pitch, R, L = rows
    o = out.reshape(R, L)
    _parallel_for(R, max(1, _RELU_GRAIN // L),
                  lambda r0, r1: _relu_forward_rows(data, pitch, o, r0, r1))
    return out


def relu_backward(dout, out):
    """dout, out: the shape of relu_forward's output ``out`` -> dx = 0 where out <= 0,
    else dout; a new array of dout's dtype."""
    if dout.dtype not in (np.float32, np.float64) or out.dtype != dout.dtype:
        return np.where(out <= 0, dout.dtype.type(0), dout)
    shape = dout.shape
    dout = np.ascontiguousarray(dout)  # (1-D for a 0-d array: the result keeps ``shape``)
    out = np.ascontiguousarray(out)
    dx = np.empty(shape, dout.dtype)
    d, o, g = dout.reshape(-1), out.reshape(-1), dx.reshape(-1)
    _parallel_for(dx.size, _RELU_GRAIN, lambda lo, hi: _relu_backward_flat(d, o, g, lo, hi))
    return dx


# ---------------------------------------------------------------------------
# Convolution, fused: im2col + GEMM per cache-sized chunk of samples
# ---------------------------------------------------------------------------
#
# The book's Convolution builds the whole ``col`` (for DeepConvNet's second layer
# 100 x 784 x 144 floats, 45 MB) and keeps it until backward. On the CPU that costs more
# than the products themselves: the buffer is written and read back through main memory
# and its fresh pages fault in on every step. Here ``col`` exists only for a chunk of a few
# samples at a time, transposed to (C*FH*FW + 1, samples * positions), the samples side by
# side, so that one GEMM ``[W | b] @ col`` per chunk yields the (FN, samples * positions)
# products (the extra row of ones adds the bias, and in backward yields db as the last
# column of dW); a small copy puts them in NCHW order. One product per chunk rather than
# one per sample gives BLAS wide operands (1.3x-1.5x faster for the deep layers' 7x7 and
# 8x8 images). The chunk is sized to stay in the core's L2 cache; backward recomputes it
# from x rather than keeping it.
#
# For stride 1 the positions are laid out over the *padded* width Wp (output columns
# ow >= OW are junk, dropped by that copy): then every row of col is one contiguous run
# of the zero-padded image, so im2col is a memcpy per (c, kh, kw) and col2im a vector add
# (measured: the compact layout's bounds-checked loops cost more than the junk products;
# so does a compact col copied row by row from the padded image, without bounds checks:
# forward + backward of ResNet-20's 3x3 layers, 1 thread, batch 100, best of 11, took
# 34.5/30.1/27.0 ms at 28x28/14x14/7x7 against 31.2/24.2/23.2 ms padded, although the
# padded width wastes 7%/14%/29% of the products).
# The batch is split between worker threads; each runs nogil Numba kernels and
# single-threaded BLAS on its own chunks, and per-chunk partial dW are summed in chunk
# order, so results do not depend on the number of threads.


@njit(cache=True, nogil=True)
def _pad_sample(x, n, pad, xpad):
    """xpad[c*Hp*Wp + h*Wp + w] = x[n, c, h - pad, w - pad], zero outside (and in the tail)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Wp = W + 2 * pad
    plane = (H + 2 * pad) * Wp
    xpad[:] = 0
    for c in range(C):
        for h in range(H):
            o = c * plane + (h + pad) * Wp + pad
            dst, src = xpad[o : o + W], x[n, c, h]  # indexed from 0: the loop vectorizes
            for w in range(W):
                dst[w] = src[w]


@njit(cache=True, nogil=True)
def _im2col_t(x, n0, filter_h, filter_w, stride, pad, out_h, out_w, row_pitch, xpad, col):
    """col: (patch_len + 1, m * sample_cols), patch_len = C*FH*FW: the sample_cols =
    out_h * row_pitch columns from s * sample_cols on hold sample n0+s, rows (c, kh, kw)
    then a row of ones. Output row i of a sample starts at column i * row_pitch.

    row_pitch == W + 2*pad (stride 1): row (c, a, b) of a sample is
    xpad[c, a, b:][:sample_cols], contiguous.
    row_pitch == out_w: the compact layout, any stride, read straight from x with bounds.
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Wp = W + 2 * pad
    plane = (H + 2 * pad) * Wp
    sample_cols = out_h * row_pitch
    patch_len = C * filter_h * filter_w
    m = col.shape[1] // sample_cols
    for s in range(m):
        n = n0 + s
        c0 = s * sample_cols
        if stride == 1 and row_pitch == Wp:
            _pad_sample(x, n, pad, xpad)
            k = 0
            for c in range(C):
                for a in range(filter_h):
                    for b in range(filter_w):
                        src = np.uint64(c * plane + a * Wp + b)
                        dst = col[k, c0 : c0 + sample_cols]
                        for p in range(sample_cols):
                            dst[np.uint64(p)] = xpad[src + np.uint64(p)]
                        k += 1
        else:
            k = 0
            for c in range(C):
                for a in range(filter_h):
                    for b in range(filter_w):
                        # output columns j that read inside the image
                        j_lo = 0
                        while j_lo < out_w and j_lo * stride - pad + b < 0:
                            j_lo += 1
                        j_hi = out_w
                        while j_hi > j_lo and (j_hi - 1) * stride - pad + b >= W:
                            j_hi -= 1
                        dst = col[k, c0 : c0 + sample_cols]
                        for i in range(out_h):
                            h = i * stride - pad + a
                            o = i * row_pitch
                            if h < 0 or h >= H:
                                for j in range(out_w):
                                    dst[np.uint64(o + j)] = 0
                            else:
                                for j in range(j_lo):
                                    dst[np.uint64(o + j)] = 0
                                for j in range(j_lo, j_hi):
                                    dst[np.uint64(o + j)] = x[n, c, h, j * stride - pad + b]
                                for j in range(j_hi, out_w):
                                    dst[np.uint64(o + j)] = 0
                        k += 1
    for p in range(col.shape[1]):
        col[patch_len, p] = 1


@njit(cache=True, nogil=True)
def _col2im_t(col, n0, filter_h, filter_w, stride, pad, out_h, out_w, row_pitch, xpad, dx):
    """dx[n0+s] = the adjoint of _im2col_t applied to rows :patch_len of col's columns of
    sample s.

    col is the whole (patch_len + 1, m * sample_cols) buffer (C-contiguous, so the loops
    vectorize); its last row is ignored."""
    C, H, W = dx.shape[1], dx.shape[2], dx.shape[3]
    Wp = W + 2 * pad
    plane = (H + 2 * pad) * Wp
    sample_cols = out_h * row_pitch
    m = col.shape[1] // sample_cols
    for s in range(m):
        n = n0 + s
        c0 = s * sample_cols
        if stride == 1 and row_pitch == Wp:
            xpad[:] = 0
            k = 0
            for c in range(C):
                for a in range(filter_h):
                    for b in range(filter_w):
                        dst = np.uint64(c * plane + a * Wp + b)
                        src = col[k, c0 : c0 + sample_cols]
                        for p in range(sample_cols):
                            xpad[dst + np.uint64(p)] += src[np.uint64(p)]
                        k += 1
            for c in range(C):
                for h in range(H):
                    o = c * plane + (h + pad) * Wp + pad
                    src, dst = xpad[o : o + W], dx[n, c, h]
                    for w in range(W):
                        dst[w] = src[w]
        else:
            dx[n] = 0
            k = 0
            for c in range(C):
                for a in range(filter_h):
                    for b in range(filter_w):
                        src = col[k, c0 : c0 + sample_cols]
                        for i in range(out_h):
                            h = i * stride - pad + a
                            if h < 0 or h >= H:
                                continue
                            for j in range(out_w):
                                w = j * stride - pad + b
                                if w >= 0 and w < W:
                                    dx[n, c, h, w] += src[i * row_pitch + j]
                        k += 1


@njit(cache=True, nogil=True)
def _scatter_out(y, n0, m, row_pitch, out, relu):
    """out[n0+s, f, i, j] = y[f, s * sample_cols + i * row_pitch + j] for s < m, j < OW
    (sample_cols = OH * row_pitch): a chunk's products in NCHW order, without the junk
    columns of the padded-width layout; with ``relu``, ReLU's output of them (0 where
    <= 0, a NaN kept, as ``relu_forward``)."""
    FN, out_h, out_w = out.shape[1], out.shape[2], out.shape[3]
    sample_cols = out_h * row_pitch
    for s in range(m):
        for f in range(FN):
            for i in range(out_h):
                o = s * sample_cols + i * row_pitch
                src = y[f, o : o + out_w]
                dst = out[n0 + s, f, i]
                if relu:
                    for j in range(out_w):
                        v = src[j]
                        dst[j] = 0 if v <= 0 else v
                else:
                    for j in range(out_w):
                        dst[j] = src[j]


@njit(cache=True, nogil=True)
def _gather_dout(dout, n0, m, row_pitch, d):
    """d[f, s * sample_cols + i * row_pitch + j] = dout[n0+s, f, i, j] for s < m, and 0 in
    the junk columns j >= OW: the chunk's gradient in the layout of col."""
    FN, out_h, out_w = dout.shape[1], dout.shape[2], dout.shape[3]
    sample_cols = out_h * row_pitch
    for f in range(FN):
        for s in range(m):
            for i in range(out_h):
                o = s * sample_cols + i * row_pitch
                src = dout[n0 + s, f, i]
                dst = d[f, o : o + row_pitch]
                for j in range(out_w):
                    dst[j] = src[j]
                for j in range(out_w, row_pitch):
                    dst[j] = 0


_PADDED_WIDTH_MAX = 1.5  # the padded-width layout when its row is at most this much wider
_L2_BYTES = 3 << 19  # 1.5 MB: a chunk and its products stay in a 2 MB L2 cache
_MAX_COLUMNS = 4096  # samples * positions per chunk (measured: 1-channel 28x28 input,
# backward 3.4 ms at 11 samples a chunk, 2.0 ms at 4)


class _Geometry:
    """Sizes of one convolution call, and how it is cut into chunks of samples.

    patch_len: C*FH*FW, the rows of col (one filter's weights); row_pitch: col's columns
    per output row (the padded width W + 2*pad, or out_w); sample_cols: col's columns per
    sample (out_h * row_pitch); chunk_samples: samples per chunk; chunks: [(n0, n1)]."""

    def __init__(self, x_shape, w_shape, stride, pad, itemsize):
        N, C, H, W = x_shape
        FN, _, FH, FW = w_shape
        self.N, self.C, self.H, self.W = N, C, H, W
        self.FN, self.FH, self.FW = FN, FH, FW
        self.stride, self.pad = stride, pad
        self.out_h = conv_output_size(H, FH, stride, pad)
        self.out_w = conv_output_size(W, FW, stride, pad)
        self.patch_len = C * FH * FW
        # padded-width layout when it makes im2col a plain copy and wastes little work
        Wp = W + 2 * pad
        padded = stride == 1 and Wp <= self.out_w * _PADDED_WIDTH_MAX
        self.row_pitch = Wp if padded else self.out_w
        self.sample_cols = self.out_h * self.row_pitch
        self.xpad_size = C * (H + 2 * pad) * Wp + FW  # the tail covers the last row's overrun
        per_sample = ((self.patch_len + 1) + 2 * FN) * self.sample_cols * itemsize
        # and at most _MAX_COLUMNS columns: for few input channels (the first layer) the
        # L2 budget alone gives chunks so wide that the dW product slows down
        self.chunk_samples = max(
            1, min(N, _L2_BYTES // per_sample, _MAX_COLUMNS // self.sample_cols))
        step = self.chunk_samples
        self.chunks = [(n0, min(n0 + step, N)) for n0 in range(0, N, step)]


_local = threading.local()


def _scratch(name, shape, dtype):
    """A per-thread buffer reused across calls (fresh pages would fault in every step)."""
    key = (name, np.dtype(dtype).str)
    buf = getattr(_local, "bufs", None)
    if buf is None:
        buf = _local.bufs = {}
    size = math.prod(shape)
    a = buf.get(key)
    if a is None or a.size < size:
        a = buf[key] = np.empty(size, dtype)
    return a[:size].reshape(shape)


def _run_chunks(work, chunks, buffers, blas=True):
    """Run work(bufs, i, n0, n1) for every chunk on the worker threads, BLAS single-threaded
    (``blas``: work calls BLAS); ``bufs = buffers()`` is called once per worker (its
    scratch arrays). Chunks are handed out one at a time, so a worker slowed down by other
    load on its core takes fewer of them.

    The calling thread is one of the workers and returns as soon as every chunk is done:
    it never waits for a helper thread to wake up (measured on 2 cores, a wake-up took
    about 0.1 ms -- as long as a small layer's whole ReLU); a helper that wakes after the
    last chunk was taken finds nothing to do."""
    # (one chunk needs no thread count: a call to Numba costs microseconds, at batch 1 a lot)
    workers = 1 if len(chunks) < 2 else min(numba.get_num_threads(), len(chunks))
    with _blas_single_threaded() if blas else contextlib.nullcontext():
        # single-threaded BLAS with one worker too: the products' sums then do not
        # depend on how BLAS would have split them between its threads
        if workers <= 1:
            bufs = buffers()
            for i, (n0, n1) in enumerate(chunks):
                work(bufs, i, n0, n1)
            return
        counter = itertools.count()  # next() is atomic under the GIL: each chunk goes once
        left = [len(chunks)]
        lock = threading.Lock()
        finished = threading.Event()
        errors = []

        def worker():
            bufs = None
            try:
                while (i := next(counter)) < len(chunks):
                    if bufs is None:
                        bufs = buffers()
                    work(bufs, i, *chunks[i])
                    with lock:
                        left[0] -= 1
                        if not left[0]:
                            finished.set()
            except BaseException as e:  # re-raised by the calling thread
                errors.append(e)
                finished.set()

        pool = _executor(workers - 1)
        for _ in range(workers - 1):
            pool.submit(worker)
        worker()
        finished.wait()
        if errors:
            raise errors[0]


def _parallel_for(n, grain, fn):
    """fn(lo, hi) over pieces of range(n), at least ``grain`` long, on the worker threads.

    The elementwise and pooling kernels run here, on the convolutions' worker threads,
    rather than as Numba ``prange`` loops: Numba's OpenMP pool is a second set of
    threads, and on 2 busy cores its spinning team took 7 ms to finish a 0.4 ms ReLU.
    Each piece is written by one task, so results do not depend on the thread count."""
    workers = min(numba.get_num_threads(), n // grain) if grain and n >= 2 * grain else 1
    if workers <= 1:
        if n:
            fn(0, n)
        return
    pieces = min(4 * workers, n // grain)  # a few per worker: the load balances
    step = -(-n // pieces)
    chunks = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    _run_chunks(lambda _bufs, _i, lo, hi: fn(lo, hi), chunks, lambda: None, blas=False)


_POOL_GRAIN = 64  # (n, c) planes per task


_pool = None
_pool_size = 0
_pool_pid = None
_blas = None


def _executor(workers):
    """The worker pool, grown on demand; a forked child (whose copy of the pool has no
    threads) makes its own."""
    global _pool, _pool_size, _pool_pid
    if _pool is None or _pool_size < workers or _pool_pid != os.getpid():
        if _pool is not None and _pool_pid == os.getpid():
            _pool.shutdown(wait=False)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="xpnet-conv")
        _pool_size = workers
        _pool_pid = os.getpid()
    return _pool


@contextlib.contextmanager
def _blas_single_threaded():
    """Each worker calls BLAS on its own chunk: a multi-threaded BLAS would oversubscribe."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    changed = [(lib, n) for lib in _blas if (n := lib.get_num_threads()) != 1]
    for lib, _ in changed:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in changed:
            lib.set_num_threads(n)


def _half_as_single(fn):
    """float16 has no BLAS: compute in float32 and round the results once."""

    def wrapper(x, W, bias_or_dout, stride=1, pad=0):
        if _HALF in (x.dtype, W.dtype, bias_or_dout.dtype):
            f32 = np.float32
            out = fn(x.astype(f32), W.astype(f32), bias_or_dout.astype(f32), stride, pad)
            if isinstance(out, tuple):
                return tuple(o.astype(_HALF) for o in out)
            return out.astype(_HALF)
        return fn(x, W, bias_or_dout, stride, pad)

    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


def _chunk_buffers(g, dt):
    """One worker's scratch for a chunk of ``g.chunk_samples`` samples: the transposed col
    with its row of ones (patch_len + 1, columns), the padded image, and the (FN, columns)
    product or output gradient; columns = chunk_samples * sample_cols."""
    columns = g.chunk_samples * g.sample_cols
    return (_scratch("col", ((g.patch_len + 1) * columns,), dt),
            _scratch("xpad", (g.xpad_size,), dt),
            _scratch("y", (g.FN * columns,), dt))


def _chunk_views(bufs, g, m):
    """The col (patch_len + 1, m * sample_cols) and product (FN, m * sample_cols) views of
    a chunk of ``m`` samples."""
    columns = m * g.sample_cols
    col = bufs[0][: (g.patch_len + 1) * columns].reshape(g.patch_len + 1, columns)
    y = bufs[2][: g.FN * columns].reshape(g.FN, columns)
    return col, y


def conv2d_forward(x, W, b, stride=1, pad=0, relu=False):
    """x: (N, C, H, W), W: (FN, C, FH, FW), b: (FN,) -> out: (N, FN, OH, OW), x's dtype
    (float16 if any of the three is float16); with ``relu``, ReLU's output of it, written
    in the same pass.

    A float16 x stays float16 in memory: each chunk of samples is read into float32
    scratch, multiplied in float32 and rounded into out."""
    if x.dtype == _HALF and _half_in_kernels():
        return _conv2d_forward(x, W.astype(np.float32), b.astype(np.float32), stride, pad,
                               relu)
    if _HALF in (x.dtype, W.dtype, b.dtype):  # in float32, rounded once, then the ReLU
        out = _half_as_single(_conv2d_forward)(x, W, b, stride, pad)
        return relu_forward(out) if relu else out
    return _conv2d_forward(x, W, b, stride, pad, relu)


def _conv2d_forward(x, W, b, stride, pad, relu=False):
    half = x.dtype == _HALF
    dt = W.dtype if half else x.dtype  # the products' dtype
    g = _Geometry(x.shape, W.shape, stride, pad, dt.itemsize)
    x = np.ascontiguousarray(x)
    Wb = np.empty((g.FN, g.patch_len + 1), dt)  # [W | b]: the row of ones in col adds the bias
    Wb[:, : g.patch_len] = W.reshape(g.FN, g.patch_len)
    Wb[:, g.patch_len] = b.reshape(g.FN)
    out = np.empty((g.N, g.FN, g.out_h, g.out_w), x.dtype)
    sample = g.C * g.H * g.W
    x_bits = x.reshape(-1).view(np.uint16) if half else None
    out_bits = out.view(np.uint16) if half else None

    def buffers():
        if not half:
            return _chunk_buffers(g, dt)
        columns = g.chunk_samples * g.sample_cols
        return _chunk_buffers(g, dt) + (_scratch("x_single", (g.chunk_samples * sample,), dt),
                                        _scratch("y_half", (g.FN * columns,), np.uint16))

    def work(bufs, i, n0, n1):
        m = n1 - n0
        col, y = _chunk_views(bufs, g, m)
        if half:  # the chunk's samples as float32, then im2col from those
            x_single = bufs[3][: m * sample].reshape(m, g.C, g.H, g.W)
            _half_to_single(x_bits[n0 * sample : n1 * sample], x_single.reshape(-1))
            _im2col_t(x_single, 0, g.FH, g.FW, stride, pad, g.out_h, g.out_w, g.row_pitch,
                      bufs[1], col)
        else:
            _im2col_t(x, n0, g.FH, g.FW, stride, pad, g.out_h, g.out_w, g.row_pitch, bufs[1], col)
        np.matmul(Wb, col, out=y)  # one product for the whole chunk
        if half:  # rounded to float16 while still in cache, then put in NCHW order
            y_half = bufs[4][: y.size].reshape(y.shape)
            (_relu_single_to_half if relu else _single_to_half)(y.reshape(-1),
                                                                y_half.reshape(-1))
            _scatter_out(y_half, n0, m, g.row_pitch, out_bits, False)
        else:
            _scatter_out(y, n0, m, g.row_pitch, out, relu)

    _run_chunks(work, g.chunks, buffers)
    return out


@_half_as_single
def conv2d_backward(x, W, dout, stride=1, pad=0):
    """x: (N, C, H, W), W: (FN, C, FH, FW), dout: (N, FN, OH, OW) -> (dx, dW, db)."""
    g = _Geometry(x.shape, W.shape, stride, pad, x.dtype.itemsize)
    dt = x.dtype
    x = np.ascontiguousarray(x)
    W = W.astype(dt, copy=False)
    dout = np.ascontiguousarray(dout, dtype=dt)
    Wt = W.reshape(g.FN, g.patch_len).T  # (patch_len, FN), a transposed view: BLAS reads it
    dx = np.empty((g.N, g.C, g.H, g.W), dt)
    partial = np.empty((len(g.chunks), g.patch_len + 1, g.FN), dt)  # per-chunk [dW | db]^T

    def buffers():
        return _chunk_buffers(g, dt)

    def work(bufs, i, n0, n1):
        m = n1 - n0
        col, d = _chunk_views(bufs, g, m)
        _im2col_t(x, n0, g.FH, g.FW, stride, pad, g.out_h, g.out_w, g.row_pitch, bufs[1], col)
        _gather_dout(dout, n0, m, g.row_pitch, d)  # junk columns get a zero gradient
        # [dW | db]^T of the chunk as col @ d^T: (patch_len + 1, FN), BLAS's faster way round
        np.matmul(col, d.T, out=partial[i])
        np.matmul(Wt, d, out=col[: g.patch_len])  # col is spent: reuse it for dcol = W^T @ d
        _col2im_t(col, n0, g.FH, g.FW, stride, pad, g.out_h, g.out_w, g.row_pitch, bufs[1], dx)

    _run_chunks(work, g.chunks, buffers)
    total = partial.sum(axis=0)  # in chunk order: the same sums whatever the thread count
    dW = np.ascontiguousarray(total[: g.patch_len].T).reshape(W.shape)
    db = total[g.patch_len].copy()
    return dx, dW, db


# ---------------------------------------------------------------------------
# average pooling
# ---------------------------------------------------------------------------
#
# One prange task per (n, c) plane: it owns out[n, c] (forward) and dx[n, c] (backward, a
# gather: each pixel sums the windows covering it), so nothing races and the sums' order -
# the window taps in row-major order, then one division - is the reference's: the results
# match it bit for bit. ``count`` is pool_h * pool_w in the array's dtype, so float32 stays
# float32.


@njit(parallel=True, cache=True)
def _avgpool_forward(x, pool_h, pool_w, stride, pad, count, out):
    N, C, H, W = x.shape
    out_h, out_w = out.shape[2], out.shape[3]
    for plane in prange(N * C):
        n = plane // C
        c = plane - n * C
        for i in range(out_h):
            top = i * stride - pad
            for j in range(out_w):
                left = j * stride - pad
                total = count - count  # zero, in count's dtype
                # the taps inside the image, in row-major order (padding adds nothing)
                for h in range(max(top, 0), min(top + pool_h, H)):
                    for w in range(max(left, 0), min(left + pool_w, W)):
                        total += x[n, c, h, w]
                out[n, c, i, j] = total / count


@njit(cache=True)
def _covering_windows(size, out_size, pool, stride, pad):
    """For each pixel p of an axis of ``size``: the first and last window (of ``out_size``)
    whose taps [i*stride, i*stride + pool) hold the padded position p + pad."""
    first = np.empty(size, np.int64)
    last = np.empty(size, np.int64)
    for p in range(size):
        first[p] = max(0, (p + pad - pool) // stride + 1)
        last[p] = min(out_size - 1, (p + pad) // stride)
    return first, last


@njit(parallel=True, cache=True)
def _avgpool_backward(dout, pool_h, pool_w, stride, pad, count, dx):
    N, C, H, W = dx.shape
    out_h, out_w = dout.shape[2], dout.shape[3]
    # the covering windows of each row and column, found once: two floor divisions per
    # pixel cost more than the gather itself (measured: 40x slower in global pooling)
    i_first, i_last = _covering_windows(H, out_h, pool_h, stride, pad)
    j_first, j_last = _covering_windows(W, out_w, pool_w, stride, pad)
    for plane in prange(N * C):
        n = plane // C
        c = plane - n * C
        for h in range(H):
            for w in range(W):
                # walking the windows downwards walks the taps upwards: the reference's order
                # (counted loops: a range with step -1 costs a division of its own)
                total = count - count
                for a in range(i_last[h] - i_first[h] + 1):
                    for b in range(j_last[w] - j_first[w] + 1):
                        total += dout[n, c, i_last[h] - a, j_last[w] - b]
                dx[n, c, h, w] = total / count


def avgpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> out: (N, C, out_h, out_w), window means (padding counts as 0)."""
    if x.dtype == _HALF:  # no float16 arithmetic in Numba: sum in float32, round once
        return avgpool_forward(x.astype(np.float32), pool_h, pool_w, stride, pad).astype(_HALF)
    N, C, H, W = x.shape
    out_h = conv_output_size(H, pool_h, stride, pad)
    out_w = conv_output_size(W, pool_w, stride, pad)
    x = np.ascontiguousarray(x)
    out = np.empty((N, C, out_h, out_w), dtype=x.dtype)
    _avgpool_forward(x, pool_h, pool_w, stride, pad, x.dtype.type(pool_h * pool_w), out)
    return out


def avgpool_backward(dout, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout: (N, C, out_h, out_w) -> dx: input_shape, each window's dout shared evenly."""
    if dout.dtype == _HALF:
        dx = avgpool_backward(dout.astype(np.float32), input_shape, pool_h, pool_w, stride, pad)
        return dx.astype(_HALF)
    dout = np.ascontiguousarray(dout)
    dx = np.empty(tuple(int(s) for s in input_shape), dtype=dout.dtype)
    count = dout.dtype.type(pool_h * pool_w)
    if pad == 0 and (pool_h, pool_w) == dx.shape[2:]:  # one window, the whole plane
        np.divide(dout, count, out=dx)  # (N, C, 1, 1) broadcast: the kernel's value
        return dx
    _avgpool_backward(dout, pool_h, pool_w, stride, pad, count, dx)
    return dx


# ---------------------------------------------------------------------------
# Adam's update, fused
# ---------------------------------------------------------------------------
#
# NumPy's form of the book's Adam makes eight passes over memory and four temporaries
# per parameter array; here it is one pass, the same operations in the same order and
# dtype (no fastmath, no contraction into fused multiply-adds), so the results are
# bit for bit those of the NumPy formula.


# error_model="numpy": IEEE division, as NumPy's; Python's model tests every divisor for
# zero, which keeps the loop from vectorizing (measured: 7x slower)
@njit(cache=True, nogil=True, error_model="numpy")
def _adam_flat(param, grad, m, v, lr_t, one_minus_beta1, one_minus_beta2, eps):
    for i in range(param.size):
        g = grad[i]
        m_i = m[i] + one_minus_beta1 * (g - m[i])
        v_i = v[i] + one_minus_beta2 * (g * g - v[i])
        m[i] = m_i
        v[i] = v_i
        param[i] -= m_i / (np.sqrt(v_i) + eps) * lr_t


def adam_update(param, grad, m, v, lr_t, beta1, beta2, eps):
    """One Adam step in place, as the book writes it: ``m += (1-beta1)(grad - m)``,
    ``v += (1-beta2)(grad*grad - v)``, ``param -= m / (sqrt(v) + eps) * lr_t``.

    param, m, v: writable C-contiguous float32 or float64 arrays of one shape and dtype;
    grad: the same shape and dtype, any layout. The scalars are rounded to that dtype
    once, as NumPy does with a Python float in an array expression."""
    dtype = param.dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"adam_update: float32 or float64 arrays, got {dtype}")
    for name, a in (("grad", grad), ("m", m), ("v", v)):
        if a.dtype != dtype or a.shape != param.shape:
            raise ValueError(f"adam_update: {name} is {a.dtype} {a.shape}, but param is "
                             f"{dtype} {param.shape}; pass arrays of one shape and dtype")
    for name, a in (("param", param), ("m", m), ("v", v)):
        if not (a.flags.c_contiguous and a.flags.writeable):
            raise ValueError(f"adam_update: {name} must be a writable C-contiguous array")
    scalar = dtype.type
    _adam_flat(param.reshape(-1), np.ascontiguousarray(grad).reshape(-1), m.reshape(-1),
               v.reshape(-1), scalar(lr_t), scalar(1 - beta1), scalar(1 - beta2), scalar(eps))


# ---------------------------------------------------------------------------
# Per-channel batch normalization of (N, C, H, W) arrays
# ---------------------------------------------------------------------------
#
# Array expressions make about ten passes over the activations in each direction
# (centering, squaring, scaling, shifting, each a temporary); these make two: one for the
# channel sums, one writing xn and out (dx in backward). Sums run in float64, each
# channel's in one fixed order on one task, so results do not depend on the thread count.
# The sums may be reassociated (vectorised), which only changes them in float64 rounding.


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _channel_moments(x, c0, c1, mean, var):
    """mean[c], var[c] (float64) of x[:, c, :] for c in [c0, c1); x: (N, C, L)."""
    N, _, L = x.shape
    count = N * L
    for c in range(c0, c1):
        s = 0.0
        for n in range(N):
            for i in range(L):
                s += np.float64(x[n, c, i])
        mu = s / count
        s2 = 0.0
        for n in range(N):
            for i in range(L):
                d = np.float64(x[n, c, i]) - mu
                s2 += d * d
        mean[c] = mu
        var[c] = s2 / count


@njit(cache=True, nogil=True)
def _channel_normalize(x, mean, inv_std, gamma, beta, c0, c1, xn, out):
    """xn = (x - mean) * inv_std, out = xn * gamma + beta for channels [c0, c1); (N, C, L)."""
    N, _, L = x.shape
    for n in range(N):
        for c in range(c0, c1):
            m, s, g, b = mean[c], inv_std[c], gamma[c], beta[c]
            for i in range(L):
                v = (x[n, c, i] - m) * s
                xn[n, c, i] = v
                out[n, c, i] = v * g + b


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _channel_grad_sums(dout, xn, c0, c1, dbeta, dgamma):
    """dbeta[c] = sum dout, dgamma[c] = sum dout * xn (float64) over channel c's entries."""
    N, _, L = dout.shape
    for c in range(c0, c1):
        sb = 0.0
        sg = 0.0
        for n in range(N):
            for i in range(L):
                d = np.float64(dout[n, c, i])
                sb += d
                sg += d * np.float64(xn[n, c, i])
        dbeta[c] = sb
        dgamma[c] = sg


@njit(cache=True, nogil=True)
def _channel_norm_dx(dout, xn, scale, shift, slope, c0, c1, dx):
    """dx = (dout - shift - xn * slope) * scale for channels [c0, c1); (N, C, L)."""
    N, _, L = dout.shape
    for n in range(N):
        for c in range(c0, c1):
            a, b, s = shift[c], slope[c], scale[c]
            for i in range(L):
                dx[n, c, i] = (dout[n, c, i] - a - xn[n, c, i] * b) * s


_CHANNEL_GRAIN = 1 << 16  # elements per task


def _channel_tasks(shape, fn):
    """fn(c0, c1) over the channels of an (N, C, H, W) array, a task per run of channels."""
    N, C, H, W = shape
    _parallel_for(C, max(1, _CHANNEL_GRAIN // max(1, N * H * W)), fn)


def _rows3(a):
    """(N, C, H, W) -> C-contiguous (N, C, H*W)."""
    return np.ascontiguousarray(a).reshape(a.shape[0], a.shape[1], -1)


def channel_norm_forward(x, gamma, beta, eps, mean=None, var=None):
    """x: (N, C, H, W) float32/float64 -> (out, xn, mean, var); see
    ``kernels.channel_norm_forward``. Other dtypes take the array expressions."""
    if x.dtype not in (np.float32, np.float64):
        from xpnet.kernels import generic

        return generic.channel_norm_forward(x, gamma, beta, eps, mean, var)
    dt = x.dtype
    x3 = _rows3(x)
    C = x.shape[1]
    if mean is None:
        m64, v64 = np.empty(C), np.empty(C)
        _channel_tasks(x.shape, lambda c0, c1: _channel_moments(x3, c0, c1, m64, v64))
        mean, var = m64.astype(dt), v64.astype(dt)
    mean = np.ascontiguousarray(mean, dtype=dt).reshape(C)
    var = np.ascontiguousarray(var, dtype=dt).reshape(C)
    inv_std = 1 / np.sqrt(var + dt.type(eps))
    g = np.ascontiguousarray(gamma, dtype=dt).reshape(C)
    b = np.ascontiguousarray(beta, dtype=dt).reshape(C)
    xn, out = np.empty(x.shape, dt), np.empty(x.shape, dt)
    xn3, out3 = xn.reshape(x3.shape), out.reshape(x3.shape)
    _channel_tasks(x.shape, lambda c0, c1: _channel_normalize(x3, mean, inv_std, g, b, c0, c1,
                                                              xn3, out3))
    return out, xn, mean, var


def channel_norm_backward(dout, xn, gamma, std, batch_statistics):
    """(dx, dgamma, dbeta) of ``channel_norm_forward``; see ``kernels.channel_norm_backward``."""
    dt = dout.dtype
    if dt not in (np.float32, np.float64) or xn.dtype != dt:
        from xpnet.kernels import generic

        return generic.channel_norm_backward(dout, xn, gamma, std, batch_statistics)
    d3, xn3 = _rows3(dout), _rows3(xn)
    C = dout.shape[1]
    db64, dg64 = np.empty(C), np.empty(C)
    _channel_tasks(dout.shape, lambda c0, c1: _channel_grad_sums(d3, xn3, c0, c1, db64, dg64))
    dbeta, dgamma = db64.astype(dt), dg64.astype(dt)
    scale = np.ascontiguousarray(gamma, dtype=dt).reshape(C) / std.astype(dt, copy=False)
    if batch_statistics:
        m = dout.shape[0] * dout.shape[2] * dout.shape[3]
        shift, slope = dbeta / m, dgamma / m
    else:
        shift = slope = np.zeros(C, dt)
    dx = np.empty(dout.shape, dt)
    dx3 = dx.reshape(d3.shape)
    _channel_tasks(dout.shape, lambda c0, c1: _channel_norm_dx(d3, xn3, scale, shift, slope,
                                                               c0, c1, dx3))
    return dx, dgamma, dbeta

"""The convolution core on an NVIDIA GPU: Numba CUDA kernels on CuPy arrays.

Three layers, each with one job:

* raw ``@cuda.jit`` kernels (``_im2col_kernel`` …): pure index arithmetic, one thread per
  output element, grid-stride loops so any grid size covers any array;
* ``launch_*``: pick a grid and launch a kernel on given device arrays and a given stream.
  They accept anything Numba takes as a device array - CuPy arrays, Numba device arrays
  and, under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), plain NumPy arrays - so
  the simulator tests run exactly the kernels and launch code the GPU runs;
* the entry points ``im2col``, ``col2im``, ``maxpool_*``, ``avgpool_*`` with the signatures
  of ``kernels.reference``: CuPy arrays in and out, outputs allocated by CuPy, kernels
  launched on CuPy's *current stream*, so they are ordered with the CuPy work around them
  and nothing waits on the host.

The arguments were validated by ``xpnet.kernels`` before they get here. What this module
still checks protects memory, which a kernel on the GPU has no other guard for: every
array is at most 2**31 - 1 elements (the kernels index in 32 bits), a launch's arrays have
the shapes its geometry implies, and every ``argmax`` index lies in its window - a bad one
writes nothing and raises IndexError without a host synchronisation (see
``raise_pending_error``).

Layouts are the book's: ``col`` is ``(N*out_h*out_w, C*filter_h*filter_w)``, rows ordered
(N, out_h, out_w), columns (C, filter_h, filter_w); ``argmax`` is the int32 index inside the
pooling window, row-major. col2im and the pooling backward passes *gather* (one thread per
input pixel sums the windows covering it, in the reference's order, no atomics), so results
are reproducible and bit-identical to the reference; docs/gpu.md says why this beats the
atomic scatter. All kernels use Numba's current CUDA device (with several GPUs:
``cupy.cuda.Device(i).use()`` and ``numba.cuda.select_device(i)``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, int64, uint32

from xpnet import backend
from xpnet.kernels.cuda_launch import launch
from xpnet.kernels.reference import conv_output_size


def _restore_numpy_names_numba_cuda_needs():
    """Put back ``np.row_stack`` (an alias of ``np.vstack``) where NumPy no longer has it.

    NumPy 2.5 removed the alias. numba-cuda (0.30 and older) still registers a CUDA overload
    for it, unguarded, when it builds its first kernel, so every kernel launch would fail
    with ``AttributeError: module 'numpy' has no attribute 'row_stack'``. The alias is
    exactly ``vstack``, and it is added only where it is missing.
    """
    if not hasattr(np, "row_stack"):
        setattr(np, "row_stack", np.vstack)  # noqa: B010 - not np.row_stack, which NPY201 rewrites


_restore_numpy_names_numba_cuda_needs()

THREADS_PER_BLOCK = 256
# Enough blocks to fill any current GPU several times over; beyond this the grid-stride
# loops take over, so huge arrays never ask for more blocks than the hardware allows.
MAX_BLOCKS = 65_535

# ---------------------------------------------------------------------------
# Raw kernels
# ---------------------------------------------------------------------------

# Flat indices are split into (n, c, h, w) by division, on uint32 operands: a 64-bit
# division is several times slower on a GPU, and no array exceeds 2**31 - 1 elements
# (checked at launch; docs/gpu.md).
MAX_ELEMENTS = 2**31 - 1


@cuda.jit(device=True, inline="always")
def _divmod(a, b):
    """(a // b, a % b) for 0 <= a < 2**31 and 0 < b < 2**31, in 32-bit unsigned arithmetic."""
    q = int64(uint32(a) // uint32(b))
    return q, a - q * b


@cuda.jit(device=True, inline="always")
def _covering(p, size, stride, n_out):
    """The first and last output positions o whose window [o*stride, o*stride + size) holds
    the padded position p (an empty range when lo > hi); the gathers of col2im and of
    max-pool backward walk exactly these."""
    lo = _divmod(p - size, stride)[0] + 1 if p >= size else 0
    hi = min(n_out - 1, _divmod(p, stride)[0])
    return lo, hi


@cuda.jit(device=True, inline="always")
def _nchw(i, n_channels, height, width):
    """Split the flat index i of a C-contiguous (N, C, H, W) array into (n, c, h, w)."""
    t, w = _divmod(i, width)
    t, h = _divmod(t, height)
    n, c = _divmod(t, n_channels)
    return n, c, h, w


@cuda.jit(device=True, inline="always")
def _col_entry(i, ncols, out_h, out_w, filter_h, filter_w, stride, pad):
    """For the flat index i of ``col``: its (row, k) and the pixel (n, c, h, w) of x it holds;
    (h, w) lies outside the image where the window covers padding."""
    row, k = _divmod(i, ncols)
    t, ow = _divmod(row, out_w)
    n, oh = _divmod(t, out_h)
    t, kw = _divmod(k, filter_w)
    c, kh = _divmod(t, filter_h)
    return row, k, n, c, oh * stride + kh - pad, ow * stride + kw - pad


@cuda.jit
def _im2col_kernel(x, col, filter_h, filter_w, stride, pad, out_h, out_w):
    """x: (N, C, H, W) -> col: (N*out_h*out_w, C*filter_h*filter_w); one thread per col entry.

    Consecutive threads write consecutive columns of one row, so the writes (the larger
    array) are coalesced; reads of x follow the kernel window and hit the same cache lines.
    """
    height, width = x.shape[2], x.shape[3]
    ncols = col.shape[1]
    total = col.shape[0] * ncols
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        row, k, n, c, h, w = _col_entry(i, ncols, out_h, out_w, filter_h, filter_w, stride,
                                        pad)
        if 0 <= h < height and 0 <= w < width:
            col[row, k] = x[n, c, h, w]
        else:  # zero padding
            col[row, k] = 0


@cuda.jit
def _col2im_kernel(col, x, filter_h, filter_w, stride, pad, out_h, out_w, zero):
    """col -> x: (N, C, H, W), gathering: one thread per pixel of x, no atomics.

    Pixel (h, w) sits at padded position (hp, wp) = (h + pad, w + pad); it is tap
    (kh, kw) = (hp - oh*stride, wp - ow*stride) of every output position (oh, ow) whose window
    covers it. The taps are summed in ascending (kh, kw) order, the reference's order, so the
    result is bit-identical to it. ``zero`` is a scalar of x's dtype so the sum is kept in
    that dtype (float32 stays float32).
    """
    n_channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    total = x.shape[0] * n_channels * height * width
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, h, w = _nchw(i, n_channels, height, width)
        hp = h + pad
        wp = w + pad
        # output rows whose window covers hp: oh*stride <= hp < oh*stride + filter_h.
        # Walking oh downwards walks kh upwards: the reference's (kh, kw) summation order.
        oh_lo, oh_hi = _covering(hp, filter_h, stride, out_h)
        ow_lo, ow_hi = _covering(wp, filter_w, stride, out_w)
        acc = zero
        for oh in range(oh_hi, oh_lo - 1, -1):
            row_base = (n * out_h + oh) * out_w
            col_base = (c * filter_h + hp - oh * stride) * filter_w + wp
            for ow in range(ow_hi, ow_lo - 1, -1):
                acc += col[row_base + ow, col_base - ow * stride]
        x[n, c, h, w] = acc


@cuda.jit
def _maxpool_forward_kernel(x, out, argmax, pool_h, pool_w, stride, pad, lowest):
    """x: (N, C, H, W) -> out, argmax: (N, C, out_h, out_w); one thread per output.

    Padding is never selected (it counts as -inf). Ties keep the first position and a NaN
    wins over numbers, first NaN first - exactly ``numpy.argmax`` over the window. A window
    made only of padding gives -inf and index 0. ``lowest`` is -inf in x's dtype.
    """
    n_channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    total = out.shape[0] * n_channels * out_h * out_w
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, oh, ow = _nchw(i, n_channels, out_h, out_w)
        best = lowest
        best_k = -1
        for kh in range(pool_h):
            h = oh * stride + kh - pad
            if h < 0 or h >= height:
                continue
            for kw in range(pool_w):
                w = ow * stride + kw - pad
                if w < 0 or w >= width:
                    continue
                v = x[n, c, h, w]
                # v != v is NaN: it beats any number, and a later NaN does not replace it.
                if best_k < 0 or v > best or (v != v and best == best):
                    best = v
                    best_k = kh * pool_w + kw
        out[n, c, oh, ow] = best
        argmax[n, c, oh, ow] = best_k if best_k >= 0 else 0


@cuda.jit
def _maxpool_backward_kernel(dout, argmax, dx, pool_h, pool_w, stride, pad, zero, error):
    """dout, argmax: (N, C, out_h, out_w) -> dx: (N, C, H, W), gathering per input pixel.

    A pixel receives dout from every window that covers it and chose it; with overlapping
    windows the contributions are summed in ascending (oh, ow) order (the reference's), with
    no atomics. A gather only ever writes dx[i] for its own pixel, so an argmax index that
    is outside its window, or points into the padding, cannot write out of bounds: it just
    matches no pixel. Such an index sets ``error[0] = 1`` (see ``raise_pending_error``).
    """
    n_channels, height, width = dx.shape[1], dx.shape[2], dx.shape[3]
    out_h, out_w = dout.shape[2], dout.shape[3]
    total = dx.shape[0] * n_channels * height * width
    for i in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, h, w = _nchw(i, n_channels, height, width)
        hp = h + pad
        wp = w + pad
        # windows covering (hp, wp), visited in ascending (oh, ow): the reference's order
        oh_lo, oh_hi = _covering(hp, pool_h, stride, out_h)
        ow_lo, ow_hi = _covering(wp, pool_w, stride, out_w)
        acc = zero
        for oh in range(oh_lo, oh_hi + 1):
            k_base = (hp - oh * stride) * pool_w + wp
            for ow in range(ow_lo, ow_hi + 1):
                if argmax[n, c, oh, ow] == k_base - ow * stride:
                    acc += dout[n, c, oh, ow]
        dx[n, c, h, w] = acc
    # every index once: in its window and inside the image, or the gradient above lost it
    window = pool_h * pool_w
    for i in range(cuda.grid(1), argmax.size, cuda.gridsize(1)):
        n, c, oh, ow = _nchw(i, n_channels, out_h, out_w)
        k = argmax[n, c, oh, ow]
        if k < 0 or k >= window:
            error[0] = 1
        else:
            kh, kw = _divmod(k, pool_w)
            h = oh * stride + kh - pad
            w = ow * stride + kw - pad
            if h < 0 or h >= height or w < 0 or w >= width:
                error[0] = 1


@cuda.jit
def _avgpool_forward_kernel(x, out, pool_h, pool_w, stride, pad, count):
    """x: (N, C, H, W) -> out: (N, C, out_h, out_w); one thread per output.

    The window's pixels are added in row-major order (padding adds nothing: it counts as
    zero) and the sum divided once by ``count`` = pool_h * pool_w, a scalar of x's dtype,
    so the arithmetic stays in that dtype: the reference's order, bit for bit.
    """
    n_channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    total_outputs = out.shape[0] * n_channels * out_h * out_w
    for i in range(cuda.grid(1), total_outputs, cuda.gridsize(1)):
        n, c, oh, ow = _nchw(i, n_channels, out_h, out_w)
        total = count - count
        for kh in range(pool_h):
            h = oh * stride + kh - pad
            if 0 <= h < height:
                for kw in range(pool_w):
                    w = ow * stride + kw - pad
                    if 0 <= w < width:
                        total += x[n, c, h, w]
        out[n, c, oh, ow] = total / count


@cuda.jit
def _avgpool_backward_kernel(dout, dx, pool_h, pool_w, stride, pad, count):
    """dout: (N, C, out_h, out_w) -> dx: (N, C, H, W), gathering per input pixel: the dout of
    every window covering it, taps (kh, kw) ascending (the reference's order), divided once."""
    n_channels, height, width = dx.shape[1], dx.shape[2], dx.shape[3]
    out_h, out_w = dout.shape[2], dout.shape[3]
    total_pixels = dx.shape[0] * n_channels * height * width
    for i in range(cuda.grid(1), total_pixels, cuda.gridsize(1)):
        n, c, h, w = _nchw(i, n_channels, height, width)
        oh_lo, oh_hi = _covering(h + pad, pool_h, stride, out_h)
        ow_lo, ow_hi = _covering(w + pad, pool_w, stride, out_w)
        total = count - count
        for oh in range(oh_hi, oh_lo - 1, -1):
            for ow in range(ow_hi, ow_lo - 1, -1):
                total += dout[n, c, oh, ow]
        dx[n, c, h, w] = total / count


# ---------------------------------------------------------------------------
# Launch layer: device arrays in, kernel launched on `stream`
# ---------------------------------------------------------------------------


def _grid(total: int, threads: int, max_blocks: int) -> int:
    return max(1, min(math.ceil(total / threads), max_blocks))


def _check_size(*arrays):
    """The kernels index in 32 bits (see ``_divmod``): refuse arrays they cannot address."""
    for a in arrays:
        if a.size > MAX_ELEMENTS:
            raise ValueError(
                f"an array of shape {tuple(a.shape)} ({a.size} elements) is too large for the "
                f"GPU kernels (at most {MAX_ELEMENTS}); use a smaller batch"
            )


def _scalar(dtype, value):
    """A NumPy scalar of ``dtype``: Numba types the kernel argument, and so the sum, by it."""
    return np.dtype(dtype).type(value)


def _launch(kernel, work, threads, max_blocks, stream, *args):
    """Launch ``kernel`` over ``work`` items (one thread each, up to ``max_blocks`` blocks;
    the grid-stride loops cover the rest); an empty array launches nothing."""
    if work:
        launch(kernel, _grid(work, threads, max_blocks), threads, stream, *args)


def _out_hw(shape, size_h, size_w, stride, pad):
    """(out_h, out_w) of a window sliding over ``shape`` (N, C, H, W)."""
    return (conv_output_size(shape[2], size_h, stride, pad),
            conv_output_size(shape[3], size_w, stride, pad))


def _guard_col(x, col, filter_h, filter_w, stride, pad):
    """(out_h, out_w) of the windows over ``x``, once ``col`` is shaped for them: the
    kernels index both by this geometry, so any other shape would read or write outside."""
    out_h, out_w = _out_hw(x.shape, filter_h, filter_w, stride, pad)
    _expect_shape("col", col.shape, (x.shape[0] * out_h * out_w, x.shape[1] * filter_h * filter_w))
    _check_size(x, col)
    return out_h, out_w


def _guard_pooled(image, pool_h, pool_w, stride, pad, **pooled):
    """Each array of ``pooled`` (by name) is (N, C, out_h, out_w) for ``image``, as the
    kernels index it."""
    out_h, out_w = _out_hw(image.shape, pool_h, pool_w, stride, pad)
    for name, a in pooled.items():
        _expect_shape(name, a.shape, (image.shape[0], image.shape[1], out_h, out_w))
    _check_size(image, *pooled.values())


def _expect_shape(name, got, expected):
    if tuple(got) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(got)}; expected {tuple(expected)}")


def launch_im2col(x, col, filter_h, filter_w, stride, pad, *, stream=0,
                  threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Fill ``col`` (N*out_h*out_w, C*FH*FW) from ``x`` (N, C, H, W); both on the device."""
    out_h, out_w = _guard_col(x, col, filter_h, filter_w, stride, pad)
    _launch(_im2col_kernel, col.size, threads, max_blocks, stream,
            x, col, filter_h, filter_w, stride, pad, out_h, out_w)


def launch_col2im(col, x, filter_h, filter_w, stride, pad, *, stream=0,
                  threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Write ``x`` (N, C, H, W) as the sum of the overlapping windows in ``col`` (gather)."""
    out_h, out_w = _guard_col(x, col, filter_h, filter_w, stride, pad)
    _launch(_col2im_kernel, x.size, threads, max_blocks, stream,
            col, x, filter_h, filter_w, stride, pad, out_h, out_w, _scalar(x.dtype, 0))


def launch_maxpool_forward(x, out, argmax, pool_h, pool_w, stride, pad, *, stream=0,
                           threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Fill ``out`` and int32 ``argmax`` (N, C, out_h, out_w) from ``x`` (N, C, H, W)."""
    _guard_pooled(x, pool_h, pool_w, stride, pad, out=out, argmax=argmax)
    _launch(_maxpool_forward_kernel, out.size, threads, max_blocks, stream,
            x, out, argmax, pool_h, pool_w, stride, pad, _scalar(x.dtype, -np.inf))


def launch_maxpool_backward(dout, argmax, dx, pool_h, pool_w, stride, pad, *, stream=0,
                            threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Write ``dx`` (N, C, H, W) from ``dout`` and integer ``argmax`` (N, C, out_h, out_w).

    A bad index in ``argmax`` raises IndexError from this call if the kernel has finished
    by the time it returns, else from the next call (see ``raise_pending_error``).
    """
    _guard_pooled(dx, pool_h, pool_w, stride, pad, dout=dout, argmax=argmax)
    flag = _error_flag()
    raise_pending_error()  # an earlier launch's, found without waiting for the device
    _launch(_maxpool_backward_kernel, dx.size, threads, max_blocks, stream,
            dout, argmax, dx, pool_h, pool_w, stride, pad, _scalar(dx.dtype, 0), flag)
    raise_pending_error()  # this launch's, if it is already done (always, in the simulator)


def launch_avgpool_forward(x, out, pool_h, pool_w, stride, pad, *, stream=0,
                           threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Fill ``out`` (N, C, out_h, out_w) with the window means of ``x`` (N, C, H, W)."""
    _guard_pooled(x, pool_h, pool_w, stride, pad, out=out)
    _launch(_avgpool_forward_kernel, out.size, threads, max_blocks, stream,
            x, out, pool_h, pool_w, stride, pad, _scalar(x.dtype, pool_h * pool_w))


def launch_avgpool_backward(dout, dx, pool_h, pool_w, stride, pad, *, stream=0,
                            threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Write ``dx`` (N, C, H, W): each pixel's share of the ``dout`` of its windows."""
    _guard_pooled(dx, pool_h, pool_w, stride, pad, dout=dout)
    _launch(_avgpool_backward_kernel, dx.size, threads, max_blocks, stream,
            dout, dx, pool_h, pool_w, stride, pad, _scalar(dx.dtype, pool_h * pool_w))


# ---------------------------------------------------------------------------
# Entry points: CuPy arrays in and out, on CuPy's current stream; arguments checked by
# xpnet.kernels
# ---------------------------------------------------------------------------


def im2col(x, filter_h, filter_w, stride=1, pad=0):
    """x: (N, C, H, W) CuPy array -> col: (N*out_h*out_w, C*filter_h*filter_w), same dtype."""
    cp = backend.require_gpu()
    x = _input(cp, x, "x")
    out_h, out_w = _out_hw(x.shape, filter_h, filter_w, stride, pad)
    col = cp.empty((x.shape[0] * out_h * out_w, x.shape[1] * filter_h * filter_w), x.dtype)
    if col.size:  # an empty batch has no device buffer to hand to Numba
        launch_im2col(_dev(x), _dev(col), filter_h, filter_w, stride, pad, stream=_stream())
    return col


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """col: (N*out_h*out_w, C*filter_h*filter_w) -> x: input_shape (N, C, H, W), the adjoint
    of im2col (overlapping windows summed, padding dropped)."""
    cp = backend.require_gpu()
    col = _input(cp, col, "col")
    x = cp.empty(tuple(input_shape), dtype=col.dtype)
    if x.size:
        launch_col2im(_dev(col), _dev(x), filter_h, filter_w, stride, pad, stream=_stream())
    return x


def _pooled_empty(cp, shape, pool_h, pool_w, stride, pad, dtype):
    """A new CuPy array (N, C, out_h, out_w) for the pooling of ``shape``."""
    out_h, out_w = _out_hw(shape, pool_h, pool_w, stride, pad)
    return cp.empty((shape[0], shape[1], out_h, out_w), dtype=dtype)


def maxpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> (out, argmax), both (N, C, out_h, out_w); argmax int32 in-window."""
    cp = backend.require_gpu()
    x = _input(cp, x, "x")
    out = _pooled_empty(cp, x.shape, pool_h, pool_w, stride, pad, x.dtype)
    argmax = cp.empty(out.shape, dtype=np.int32)
    if out.size:
        launch_maxpool_forward(_dev(x), _dev(out), _dev(argmax), pool_h, pool_w, stride, pad,
                               stream=_stream())
    return out, argmax


def maxpool_backward(dout, argmax, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout, argmax: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W)."""
    cp = backend.require_gpu()
    dout = _input(cp, dout, "dout")
    argmax = _input(cp, argmax, "argmax")
    if argmax.dtype != np.int32:  # to int64, not int32: no index may wrap into the window
        argmax = argmax.astype(np.int64)
    dx = cp.empty(tuple(input_shape), dtype=dout.dtype)
    if dx.size:
        launch_maxpool_backward(_dev(dout), _dev(argmax), _dev(dx), pool_h, pool_w, stride,
                                pad, stream=_stream())
    return dx


def avgpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> out: (N, C, out_h, out_w), window means (padding counts as 0)."""
    cp = backend.require_gpu()
    x = _input(cp, x, "x")
    if x.dtype == np.float16:  # sum in float32 and round once, as the CPU does
        return avgpool_forward(x.astype(np.float32), pool_h, pool_w, stride, pad).astype(x.dtype)
    out = _pooled_empty(cp, x.shape, pool_h, pool_w, stride, pad, x.dtype)
    if out.size:
        launch_avgpool_forward(_dev(x), _dev(out), pool_h, pool_w, stride, pad,
                               stream=_stream())
    return out


def avgpool_backward(dout, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W)."""
    cp = backend.require_gpu()
    dout = _input(cp, dout, "dout")
    if dout.dtype == np.float16:
        dx = avgpool_backward(dout.astype(np.float32), input_shape, pool_h, pool_w, stride, pad)
        return dx.astype(dout.dtype)
    dx = cp.empty(tuple(input_shape), dtype=dout.dtype)
    if dx.size:
        launch_avgpool_backward(_dev(dout), _dev(dx), pool_h, pool_w, stride, pad,
                                stream=_stream())
    return dx


# ---------------------------------------------------------------------------
# Helpers: device views, the stream
# ---------------------------------------------------------------------------


def _input(cp, a, name):
    """``a`` as a C-contiguous CuPy array. A host array would hand the kernels a host
    pointer, and the kernels are compiled for floating data (argmax: integers, checked by
    ``xpnet.kernels``)."""
    if not isinstance(a, cp.ndarray):
        raise backend.DeviceError(
            f"{name} is a {type(a).__module__}.{type(a).__name__} on the cpu, but the GPU "
            "kernels take CuPy arrays on the gpu; move it with xpnet.backend.to_device(x, 'gpu')"
        )
    if name != "argmax" and a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array (float16/32/64), got {a.dtype}")
    return cp.ascontiguousarray(a)


def _dev(a):
    """A CuPy array as the launch layer takes it: as it is.

    ``kernels.cuda_launch.launch`` reads CuPy arrays directly (a Numba view costs more host
    time than the whole fast launch), and where it leaves a launch to Numba it makes the
    views itself, without the host synchronisation Numba does by default.
    """
    return a


# ---------------------------------------------------------------------------
# Bad argmax indices: a flag in host memory the kernel writes, read without a sync
# ---------------------------------------------------------------------------
#
# Checking argmax on the host would copy it back and wait for the device on every backward
# pass. Instead the kernel sets a flag in mapped (zero-copy, page-locked) host memory, which
# the host reads like any variable, without waiting. Each ``maxpool_backward`` launch reads
# it before and after launching: a bad index is reported by the call that passed it when
# its kernel has already finished, otherwise by the next call (in training: a later pooling
# layer or the next step), never costing a synchronisation. ``raise_pending_error`` can
# also be called where the stream is synchronised anyway (e.g. after reading the loss).

_BAD_ARGMAX = (
    "maxpool_backward: argmax held an index outside its pooling window (or one that "
    "points into the padding); its gradient was dropped. Pass the argmax that "
    "maxpool_forward returned for this input"
)


class MappedErrorFlag:
    """A kernel's error report: an int32[1] flag per device in mapped (zero-copy,
    page-locked) host memory, which kernels set and the host reads like a variable,
    never waiting for the device. ``flag()`` is the current device's (made on first use);
    ``raise_pending()`` raises IndexError(``message``) if any is set, and clears it."""

    def __init__(self, message: str):
        self.message = message
        self._flags: dict = {}

    def flag(self):
        key = getattr(cuda.current_context().device, "id", 0)
        flag = self._flags.get(key)
        if flag is None:
            flag = cuda.mapped_array(1, dtype=np.int32)
            flag[0] = 0
            self._flags[key] = flag
        return flag

    def raise_pending(self) -> None:
        for flag in self._flags.values():
            if flag[0]:
                flag[0] = 0
                raise IndexError(self.message)


_bad_argmax = MappedErrorFlag(_BAD_ARGMAX)


def _error_flag():
    """The current device's int32[1] flag, mapped host memory the kernels can write."""
    return _bad_argmax.flag()


def raise_pending_error():
    """Raise IndexError if a finished maxpool_backward kernel found a bad argmax index (and
    clear the flag). Reads host memory only: never waits for the device."""
    _bad_argmax.raise_pending()


_streams: dict = {}


def _stream():
    """Numba's handle on CuPy's current stream (cached per stream pointer)."""
    ptr = backend.current_stream_ptr()
    stream = _streams.get(ptr)
    if stream is None:
        stream = _streams[ptr] = cuda.external_stream(ptr)
    return stream

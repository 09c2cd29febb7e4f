"""The convolution core on an NVIDIA GPU: Numba CUDA kernels on CuPy arrays.

Three layers, each with one job:

* raw ``@cuda.jit`` kernels (``_im2col_kernel`` …): pure index arithmetic, one thread per
  output element, grid-stride loops so any grid size covers any array;
* ``launch_*``: pick a grid and launch a kernel on given device arrays and a given stream.
  They accept anything Numba takes as a device array - CuPy arrays, Numba device arrays
  and, under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), plain NumPy arrays - so
  the simulator tests run exactly the kernels and launch code the GPU runs;
* the public entry points ``im2col``, ``col2im``, ``maxpool_forward``, ``maxpool_backward``
  with the signatures of ``kernels.reference``: they take and return CuPy arrays, allocate
  the outputs with CuPy and launch on CuPy's *current stream*, so kernels are ordered with
  the CuPy work around them and nothing waits on the host.

Layouts are the book's (see ``kernels.reference``): ``col`` is
``(N*out_h*out_w, C*filter_h*filter_w)``, rows ordered (N, out_h, out_w), columns
(C, filter_h, filter_w); ``argmax`` is the int32 index inside the pooling window, row-major.
A bad ``argmax`` index is never trusted: it writes nothing, and raises IndexError without a
host synchronisation (see ``raise_pending_error``).

col2im (and the max-pool backward) *gather*: one thread per input pixel walks the few
(kh, kw) taps whose window covers it and adds them up in a fixed order, as Chainer's
``col2im_gpu`` does. The alternative, one thread per ``col`` element scattering into ``x``
with ``atomicAdd``, reads ``col`` perfectly coalesced but (a) adds the overlapping taps in
an order that changes from run to run, so float32 gradients - and therefore seeded
training runs - are not reproducible and differ from the CPU in the last bits, (b) needs
atomics the hardware lacks for float16 on older GPUs, and (c) must zero ``x`` first, one
more pass over memory. Gathering writes every output exactly once, coalesced, with no
zeroing; its reads of ``col`` are strided, but each thread reads only
``ceil(FH/stride) * ceil(FW/stride)`` values (9 for a 3x3, stride-1 convolution), which the
L2 cache absorbs. ``benchmarks/gpu_col2im_scatter.py`` keeps the atomic version so that
``benchmarks/gpu_bench.py`` measures the two side by side; the default stays the gather
even where the scatter is a little faster, because reproducible training (and CPU/GPU
parity) is worth more than a fraction of a step.

All kernels use Numba's current CUDA device; with several GPUs, run on the device CuPy
uses (``cupy.cuda.Device(i).use()`` and ``numba.cuda.select_device(i)``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, int64, uint32

from xpnet import backend


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

# Flat indices are split into (n, c, h, w) by division. GPUs have no integer divide
# instruction: Numba types indices as int64, and a 64-bit division is a software sequence
# several times longer than a 32-bit one. The arrays here have fewer than 2**31 elements
# (checked at launch), so the divisions are done on uint32 operands, which LLVM lowers to
# the short 32-bit unsigned sequence (checked in the PTX: one div.s64, outside the loops).
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
        kernel[_grid(work, threads, max_blocks), threads, stream](*args)


def _conv_geometry(x, col, filter_h, filter_w, stride, pad):
    """(out_h, out_w) of the windows over ``x``, once ``col`` has its shape and both fit."""
    out_h, out_w = _conv_out(x.shape, filter_h, filter_w, stride, pad)
    _expect_shape("col", col.shape, _col_shape(x.shape, filter_h, filter_w, out_h, out_w))
    _check_size(x, col)
    return out_h, out_w


def _pool_geometry(image, pooled, pooled_name, argmax, pool_h, pool_w, stride, pad):
    """Check that ``pooled`` and ``argmax`` are (N, C, out_h, out_w) for ``image`` and fit."""
    out_h, out_w = _conv_out(image.shape, pool_h, pool_w, stride, pad)
    shape = (image.shape[0], image.shape[1], out_h, out_w)
    _expect_shape(pooled_name, pooled.shape, shape)
    _expect_shape("argmax", argmax.shape, shape)
    _check_size(image, pooled)


def launch_im2col(x, col, filter_h, filter_w, stride, pad, *, stream=0,
                  threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Fill ``col`` (N*out_h*out_w, C*FH*FW) from ``x`` (N, C, H, W); both on the device."""
    out_h, out_w = _conv_geometry(x, col, filter_h, filter_w, stride, pad)
    _launch(_im2col_kernel, col.size, threads, max_blocks, stream,
            x, col, filter_h, filter_w, stride, pad, out_h, out_w)


def launch_col2im(col, x, filter_h, filter_w, stride, pad, *, stream=0,
                  threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Write ``x`` (N, C, H, W) as the sum of the overlapping windows in ``col`` (gather)."""
    out_h, out_w = _conv_geometry(x, col, filter_h, filter_w, stride, pad)
    _launch(_col2im_kernel, x.size, threads, max_blocks, stream,
            col, x, filter_h, filter_w, stride, pad, out_h, out_w, _scalar(x.dtype, 0))


def launch_maxpool_forward(x, out, argmax, pool_h, pool_w, stride, pad, *, stream=0,
                           threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Fill ``out`` and int32 ``argmax`` (N, C, out_h, out_w) from ``x`` (N, C, H, W)."""
    _pool_geometry(x, out, "out", argmax, pool_h, pool_w, stride, pad)
    _launch(_maxpool_forward_kernel, out.size, threads, max_blocks, stream,
            x, out, argmax, pool_h, pool_w, stride, pad, _scalar(x.dtype, -np.inf))


def launch_maxpool_backward(dout, argmax, dx, pool_h, pool_w, stride, pad, *, stream=0,
                            threads=THREADS_PER_BLOCK, max_blocks=MAX_BLOCKS):
    """Write ``dx`` (N, C, H, W) from ``dout`` and integer ``argmax`` (N, C, out_h, out_w).

    A bad index in ``argmax`` raises IndexError from this call if the kernel has finished
    by the time it returns, else from the next call (see ``raise_pending_error``).
    """
    _pool_geometry(dx, dout, "dout", argmax, pool_h, pool_w, stride, pad)
    flag = _error_flag()
    raise_pending_error()  # an earlier launch's, found without waiting for the device
    _launch(_maxpool_backward_kernel, dx.size, threads, max_blocks, stream,
            dout, argmax, dx, pool_h, pool_w, stride, pad, _scalar(dx.dtype, 0), flag)
    raise_pending_error()  # this launch's, if it is already done (always, in the simulator)


# ---------------------------------------------------------------------------
# Public entry points: CuPy arrays in and out, on CuPy's current stream
# ---------------------------------------------------------------------------


def im2col(x, filter_h, filter_w, stride=1, pad=0):
    """x: (N, C, H, W) CuPy array -> col: (N*out_h*out_w, C*filter_h*filter_w), same dtype."""
    cp = backend.require_gpu()
    x = _input(cp, x, "x", 4)
    _check_geometry(x.shape, filter_h, filter_w, stride, pad, "filter")
    out_h, out_w = _conv_out(x.shape, filter_h, filter_w, stride, pad)
    col = cp.empty(_col_shape(x.shape, filter_h, filter_w, out_h, out_w), dtype=x.dtype)
    if col.size:  # an empty batch has no device buffer to hand to Numba
        launch_im2col(_dev(x), _dev(col), filter_h, filter_w, stride, pad, stream=_stream())
    return col


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """col: (N*out_h*out_w, C*filter_h*filter_w) -> x: input_shape (N, C, H, W), the adjoint
    of im2col (overlapping windows summed, padding dropped)."""
    cp = backend.require_gpu()
    col = _input(cp, col, "col", 2)
    shape = _shape4(input_shape)
    _check_geometry(shape, filter_h, filter_w, stride, pad, "filter")
    x = cp.empty(shape, dtype=col.dtype)
    if x.size:
        launch_col2im(_dev(col), _dev(x), filter_h, filter_w, stride, pad, stream=_stream())
    return x


def maxpool_forward(x, pool_h, pool_w, stride=1, pad=0):
    """x: (N, C, H, W) -> (out, argmax), both (N, C, out_h, out_w); argmax int32 in-window."""
    cp = backend.require_gpu()
    x = _input(cp, x, "x", 4)
    _check_geometry(x.shape, pool_h, pool_w, stride, pad, "pool")
    out_h, out_w = _conv_out(x.shape, pool_h, pool_w, stride, pad)
    shape = (x.shape[0], x.shape[1], out_h, out_w)
    out = cp.empty(shape, dtype=x.dtype)
    argmax = cp.empty(shape, dtype=np.int32)
    if out.size:
        launch_maxpool_forward(_dev(x), _dev(out), _dev(argmax), pool_h, pool_w, stride, pad,
                               stream=_stream())
    return out, argmax


def maxpool_backward(dout, argmax, input_shape, pool_h, pool_w, stride=1, pad=0):
    """dout, argmax: (N, C, out_h, out_w) -> dx: input_shape (N, C, H, W)."""
    cp = backend.require_gpu()
    dout = _input(cp, dout, "dout", 4)
    argmax = _input(cp, argmax, "argmax", 4)
    if argmax.dtype != np.int32:  # to int64, not int32: no index may wrap into the window
        argmax = argmax.astype(np.int64)
    shape = _shape4(input_shape)
    _check_geometry(shape, pool_h, pool_w, stride, pad, "pool")
    dx = cp.empty(shape, dtype=dout.dtype)
    if dx.size:
        launch_maxpool_backward(_dev(dout), _dev(argmax), _dev(dx), pool_h, pool_w, stride,
                                pad, stream=_stream())
    return dx


# ---------------------------------------------------------------------------
# Helpers: geometry checks, device views, the stream
# ---------------------------------------------------------------------------


def _conv_out(shape, filter_h, filter_w, stride, pad):
    """(out_h, out_w) of a window sliding over ``shape`` (N, C, H, W), as the book: floor."""
    return ((shape[2] + 2 * pad - filter_h) // stride + 1,
            (shape[3] + 2 * pad - filter_w) // stride + 1)


def _col_shape(shape, filter_h, filter_w, out_h, out_w):
    return (shape[0] * out_h * out_w, shape[1] * filter_h * filter_w)


def _expect_shape(name, got, expected):
    if tuple(got) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(got)}; expected {tuple(expected)}")


def _shape4(input_shape):
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"input_shape must be (N, C, H, W) with sizes >= 0, got {input_shape}")
    return shape


def _check_geometry(shape, size_h, size_w, stride, pad, what):
    """One clear error for window sizes, stride or padding that make no output."""
    for name, value, low in ((f"{what}_h", size_h, 1), (f"{what}_w", size_w, 1),
                             ("stride", stride, 1), ("pad", pad, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    height, width = shape[2] + 2 * pad, shape[3] + 2 * pad
    if size_h > height or size_w > width:
        raise ValueError(
            f"{what} {size_h}x{size_w} is larger than the padded input {height}x{width} "
            f"(input shape {tuple(shape)}, pad {pad})"
        )


def _input(cp, a, name, ndim):
    """A C-contiguous floating (or, for argmax, integer) CuPy array of rank ``ndim``."""
    if not isinstance(a, cp.ndarray):
        raise backend.DeviceError(
            f"{name} is a {type(a).__module__}.{type(a).__name__} on the cpu, but the GPU "
            "kernels take CuPy arrays on the gpu; move it with xpnet.backend.to_device(x, 'gpu')"
        )
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if name == "argmax":
        if a.dtype.kind not in "iu":
            raise TypeError(f"argmax must be an integer array (int32), got {a.dtype}")
    elif a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating array (float16/32/64), got {a.dtype}")
    return cp.ascontiguousarray(a)


def _dev(a):
    """A Numba view of a CuPy array, without the host synchronisation Numba does by default.

    Importing an array that names a stream makes Numba wait for that stream on the host;
    we launch on CuPy's current stream anyway, so stream order already protects the data.
    """
    return cuda.as_cuda_array(a, sync=False)


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
_error_flags: dict = {}


def _error_flag():
    """The current device's int32[1] flag, mapped host memory the kernels can write."""
    key = getattr(cuda.current_context().device, "id", 0)
    flag = _error_flags.get(key)
    if flag is None:
        flag = cuda.mapped_array(1, dtype=np.int32)
        flag[0] = 0
        _error_flags[key] = flag
    return flag


def raise_pending_error():
    """Raise IndexError if a finished maxpool_backward kernel found a bad argmax index (and
    clear the flag). Reads host memory only: never waits for the device."""
    for flag in _error_flags.values():
        if flag[0]:
            flag[0] = 0
            raise IndexError(_BAD_ARGMAX)


_streams: dict = {}


def _stream():
    """Numba's handle on CuPy's current stream (cached per stream pointer)."""
    ptr = backend.current_stream_ptr()
    stream = _streams.get(ptr)
    if stream is None:
        stream = _streams[ptr] = cuda.external_stream(ptr)
    return stream

"""The kernels' contract, written once and run on every backend.

Not collected by itself (the name does not start with ``test_``). A test module imports
these tests and defines the ``backend`` fixture, one ``Backend`` per kernel set, as
Chainer's backend-injected tests do:

* ``tests/test_kernels.py``: ``cpu`` (the entry points on NumPy arrays: the Numba kernels),
  ``reference`` (the oracle must keep the contract too) and ``gpu`` (the entry points on
  CuPy arrays; skipped without a GPU);
* ``tests/cuda_sim_cases.py``: ``cuda-sim``, the very ``@cuda.jit`` kernels and ``launch_*``
  functions of ``kernels.cuda`` under Numba's CUDA simulator, in a process of their own.

A test takes NumPy inputs, moves them to the backend with ``backend.asarray``, and compares
``backend.asnumpy`` of the result with ``kernels.reference``: bit for bit where the backend
keeps the reference's summation order (``backend.exact``), else within a tolerance.
Adding an op: add its tests here, and every backend runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from xpnet.kernels import reference as ref

__all__ = [
    "test_avgpool_backward_is_the_adjoint_of_forward",
    "test_avgpool_equals_reference",
    "test_avgpool_of_the_whole_plane_equals_reference",
    "test_avgpool_on_views",
    "test_avgpool_padding_counts_as_zeros",
    "test_col2im_equals_reference",
    "test_col2im_is_the_adjoint_of_im2col",
    "test_float16_is_exact_where_it_can_be",
    "test_im2col_equals_reference",
    "test_maxpool_backward_refuses_an_index_into_the_padding",
    "test_maxpool_backward_refuses_an_index_outside_the_window",
    "test_maxpool_equals_reference",
    "test_maxpool_nan_wins_as_in_argmax",
    "test_overlapping_pool_windows_sum_their_gradients",
]

DTYPES = [np.float32, np.float64]
SEEDS = range(16)  # the most any backend ran before the contract was shared
VIEW_SEEDS = range(20)


# ----------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """One kernel set: ``ops`` has the entry points' names and signatures."""

    name: str
    ops: object
    asarray: object = np.asarray
    asnumpy: object = np.asarray
    exact: frozenset = field(default_factory=frozenset)  # ops bit-identical to the reference
    checks_indices: bool = True  # refuses a bad argmax (the reference trusts its input)
    # waits for the device and raises what its kernels flagged (on a GPU a bad argmax may
    # be reported after the call that passed it returned)
    finish: object = lambda: None


_EVERYTHING = frozenset({"im2col", "col2im", "maxpool_forward", "maxpool_backward",
                         "avgpool_forward", "avgpool_backward"})


def make_backend(name: str) -> Backend:
    """The Backend called ``name``: 'cpu', 'reference', 'gpu' or 'cuda-sim'."""
    if name == "cpu":
        from xpnet import kernels

        # col2im sums the overlapping windows in another order than the reference
        return Backend(name, kernels, exact=_EVERYTHING - {"col2im"})
    if name == "reference":
        return Backend(name, ref, exact=_EVERYTHING, checks_indices=False)
    if name == "gpu":
        from xpnet import backend, kernels

        if not backend.gpu_available():
            pytest.skip(f"no GPU: {backend.gpu_unavailable_reason()}")
        from xpnet.kernels import cuda

        cp = backend.require_gpu()

        def finish():
            cp.cuda.Device().synchronize()
            cuda.raise_pending_error()

        return Backend(name, kernels, cp.asarray, cp.asnumpy, exact=_EVERYTHING, finish=finish)
    if name == "cuda-sim":
        return Backend(name, _SimulatedKernels(), exact=_EVERYTHING)
    raise ValueError(f"unknown kernel backend {name!r}")


def _contiguous(a, dtype=None):
    """A writable C-contiguous copy, as the CuPy entry points make (the simulator writes every
    argument back to its host array, read-only views included)."""
    return np.array(a, dtype=dtype, order="C")


def _nan_pooled(x, ph, pw, stride, pad):
    """A NaN-filled (N, C, out_h, out_w) output for the pooling of ``x``."""
    return np.full((*x.shape[:2], *out_hw(x.shape, ph, pw, stride, pad)), np.nan, x.dtype)


class _SimulatedKernels:
    """The entry points, made of ``kernels.cuda``'s launch functions on NumPy arrays (what
    the simulator runs): outputs start as NaN so an entry left unwritten shows, and half the
    launches use a tiny grid, so each thread runs the grid-stride loop many times."""

    def __init__(self):
        from xpnet.kernels import cuda

        self.gpu = cuda
        self.rng = np.random.default_rng(0)

    def grid(self):
        if self.rng.random() < 0.5:
            return {"threads": int(self.rng.integers(1, 9)),
                    "max_blocks": int(self.rng.integers(1, 4))}
        return {"threads": 64}

    def im2col(self, x, fh, fw, stride=1, pad=0):
        x = _contiguous(x)
        oh, ow = out_hw(x.shape, fh, fw, stride, pad)
        col = np.full((x.shape[0] * oh * ow, x.shape[1] * fh * fw), np.nan, x.dtype)
        self.gpu.launch_im2col(x, col, fh, fw, stride, pad, **self.grid())
        return col

    def col2im(self, col, shape, fh, fw, stride=1, pad=0):
        x = np.full(shape, np.nan, col.dtype)
        self.gpu.launch_col2im(_contiguous(col), x, fh, fw, stride, pad, **self.grid())
        return x

    def maxpool_forward(self, x, ph, pw, stride=1, pad=0):
        x = _contiguous(x)
        out = _nan_pooled(x, ph, pw, stride, pad)
        argmax = np.full(out.shape, -7, np.int32)
        self.gpu.launch_maxpool_forward(x, out, argmax, ph, pw, stride, pad, **self.grid())
        return out, argmax

    def maxpool_backward(self, dout, argmax, shape, ph, pw, stride=1, pad=0):
        # as kernels.cuda.maxpool_backward: int32 kept, any other integer widened to int64
        argmax = _contiguous(argmax, np.int32 if argmax.dtype == np.int32 else np.int64)
        dx = np.full(shape, np.nan, dout.dtype)
        self.gpu.launch_maxpool_backward(_contiguous(dout), argmax, dx, ph, pw, stride, pad,
                                         **self.grid())
        return dx

    def avgpool_forward(self, x, ph, pw, stride=1, pad=0):
        x = _contiguous(x)
        out = _nan_pooled(x, ph, pw, stride, pad)
        self.gpu.launch_avgpool_forward(x, out, ph, pw, stride, pad, **self.grid())
        return out

    def avgpool_backward(self, dout, shape, ph, pw, stride=1, pad=0):
        dx = np.full(shape, np.nan, dout.dtype)
        self.gpu.launch_avgpool_backward(_contiguous(dout), dx, ph, pw, stride, pad,
                                         **self.grid())
        return dx


# ----------------------------------------------------------------------------- cases


def random_case(rng, max_hw=9, window_pad_limit=True):
    """A random (shape, filter_h, filter_w, stride, pad) whose window fits the padded input;
    with ``window_pad_limit``, pad < window, as pooling needs."""
    while True:
        N, C = rng.integers(1, 4, size=2)
        H, W = rng.integers(1, max_hw + 1, size=2)
        fh, fw = rng.integers(1, 5, size=2)
        stride = int(rng.integers(1, 4))
        pad = int(rng.integers(0, 3))
        if window_pad_limit and pad >= min(fh, fw):
            continue
        if H + 2 * pad >= fh and W + 2 * pad >= fw:
            return (int(N), int(C), int(H), int(W)), int(fh), int(fw), stride, pad


def out_hw(shape, fh, fw, stride, pad):
    return (ref.conv_output_size(shape[2], fh, stride, pad),
            ref.conv_output_size(shape[3], fw, stride, pad))


def random_view(rng, shape, dtype, values=None):
    """An array of ``shape`` holding ``values`` (default: random normal) whose memory layout
    is random: a strided, permuted, possibly reversed window into a larger C- or
    Fortran-ordered array, read-only now and then -- or, one time in ten, ``values[:1]``
    broadcast along the first axis (zero stride), so oracles read the view's values."""
    if values is None:
        values = rng.standard_normal(shape)
    values = np.asarray(values).astype(dtype)
    ndim = len(shape)
    if rng.random() < 0.1 and ndim and shape[0] > 0:  # a zero-stride broadcast of one row
        values = np.broadcast_to(values[:1], shape)
        return values if rng.random() < 0.5 else np.broadcast_to(values[:1].copy(), shape)
    steps = [int(rng.choice([1, 1, 2, 3])) * int(rng.choice([1, -1])) for _ in range(ndim)]
    extra = [int(rng.integers(0, 3)) for _ in range(ndim)]
    perm = rng.permutation(ndim)
    # base axis perm[i] holds view axis i, |step| apart, with `extra` elements to spare
    base_shape = [0] * ndim
    for i, p in enumerate(perm):
        base_shape[p] = max(shape[i], 1) * abs(steps[i]) + extra[i]
    order = "F" if rng.random() < 0.3 else "C"
    # NaN (or -7) around the view shows a stray read
    fill = np.nan if np.dtype(dtype).kind == "f" else -7
    base = np.full(base_shape, fill, dtype=dtype, order=order)
    view = base.transpose(perm)
    index = []
    for i in range(ndim):
        start = int(rng.integers(0, extra[i] + 1))
        stop = start + (shape[i] - 1) * abs(steps[i]) + 1 if shape[i] else start
        index.append(slice(start, stop, abs(steps[i])))
    for i in range(ndim):
        if steps[i] < 0:
            view = np.flip(view, axis=i)
    view = view[tuple(index)]
    assert view.shape == tuple(shape)
    view[...] = values
    if rng.random() < 0.3:
        view.flags.writeable = False
    return view


def random_view_shape(rng, fits):
    """(N, C, H, W) with size-1 axes often, and a window, stride and pad that ``fits``."""
    while True:
        N, C, H, W = (int(rng.choice([1, 1, 2, 3, 5])) for _ in range(4))
        H, W = H + int(rng.integers(0, 5)), W + int(rng.integers(0, 5))
        fh, fw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        stride, pad = int(rng.integers(1, 3)), int(rng.integers(0, 2))
        if fits(fh, fw, pad) and H + 2 * pad >= fh and W + 2 * pad >= fw:
            return (N, C, H, W), fh, fw, stride, pad


def _agree(backend, op, got, want, dtype):
    """``got`` (a backend array) equals ``want``: exactly, or within ``dtype``'s tolerance."""
    got = backend.asnumpy(got)
    assert got.shape == want.shape and got.dtype == want.dtype
    if op in backend.exact:
        np.testing.assert_array_equal(got, want)
    else:
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def _pool_input(rng, shape, dtype, seed):
    """Few distinct values, so windows have ties: the first maximum must win, as in
    np.argmax; negative values now and then make sure padding is never taken for a zero;
    plain normal values one time in three."""
    if seed % 3 == 0:
        return rng.standard_normal(shape).astype(dtype)
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    return x - 10 if seed % 2 else x


# ----------------------------------------------------------------------------- im2col, col2im


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_im2col_equals_reference(backend, dtype, seed):
    rng = np.random.default_rng(seed)
    shape, fh, fw, stride, pad = random_case(rng, window_pad_limit=False)
    x = rng.standard_normal(shape).astype(dtype)
    col = backend.ops.im2col(backend.asarray(x), fh, fw, stride, pad)
    _agree(backend, "im2col", col, ref.im2col(x, fh, fw, stride, pad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_col2im_equals_reference(backend, dtype, seed):
    rng = np.random.default_rng(100 + seed)
    shape, fh, fw, stride, pad = random_case(rng, window_pad_limit=False)
    oh, ow = out_hw(shape, fh, fw, stride, pad)
    col = rng.standard_normal((shape[0] * oh * ow, shape[1] * fh * fw)).astype(dtype)
    x = backend.ops.col2im(backend.asarray(col), shape, fh, fw, stride, pad)
    _agree(backend, "col2im", x, ref.col2im(col, shape, fh, fw, stride, pad), dtype)


@pytest.mark.parametrize("seed", SEEDS)
def test_col2im_is_the_adjoint_of_im2col(backend, seed):
    """<im2col(x), c> == <x, col2im(c)>: overlapping entries are summed, padding dropped."""
    rng = np.random.default_rng(200 + seed)
    shape, fh, fw, stride, pad = random_case(rng, window_pad_limit=False)
    x = rng.standard_normal(shape)
    col = backend.asnumpy(backend.ops.im2col(backend.asarray(x), fh, fw, stride, pad))
    c = rng.standard_normal(col.shape)
    back = backend.asnumpy(backend.ops.col2im(backend.asarray(c), shape, fh, fw, stride, pad))
    assert np.vdot(col, c) == pytest.approx(np.vdot(x, back), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- max pooling


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_maxpool_equals_reference(backend, dtype, seed):
    rng = np.random.default_rng(300 + seed)
    shape, ph, pw, stride, pad = random_case(rng)
    x = _pool_input(rng, shape, dtype, seed)
    out, argmax = backend.ops.maxpool_forward(backend.asarray(x), ph, pw, stride, pad)
    out0, argmax0 = ref.maxpool_forward(x, ph, pw, stride, pad)
    _agree(backend, "maxpool_forward", out, out0, dtype)
    np.testing.assert_array_equal(backend.asnumpy(argmax), argmax0)
    assert backend.asnumpy(argmax).dtype == np.int32

    dout = rng.standard_normal(out0.shape).astype(dtype)
    dx = backend.ops.maxpool_backward(backend.asarray(dout), argmax, shape, ph, pw, stride, pad)
    _agree(backend, "maxpool_backward", dx,
           ref.maxpool_backward(dout, argmax0, shape, ph, pw, stride, pad), dtype)


def test_maxpool_nan_wins_as_in_argmax(backend):
    x = np.array([[[[1.0, np.nan, 5.0, np.nan],
                    [np.nan, 3.0, 4.0, -1.0]]]], dtype=np.float32)
    # window 1: the first NaN (index 1) wins, the second does not move it; window 2: a NaN
    out, argmax = backend.ops.maxpool_forward(backend.asarray(x), 2, 2, 2, 0)
    out, argmax = backend.asnumpy(out), backend.asnumpy(argmax)
    np.testing.assert_array_equal(argmax, [[[[1, 1]]]])
    assert np.isnan(out).all()
    x[0, 0, 0, 3] = 0.0
    out, argmax = backend.ops.maxpool_forward(backend.asarray(x), 2, 2, 2, 0)
    assert backend.asnumpy(out)[0, 0, 0, 1] == 5.0 and backend.asnumpy(argmax)[0, 0, 0, 1] == 0


def test_overlapping_pool_windows_sum_their_gradients(backend):
    # stride 1 with a 3x3 window: the centre pixel is the maximum of all four windows
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1:3, 1:3] = [[1.0, 2.0], [3.0, 9.0]]
    out, argmax = backend.ops.maxpool_forward(backend.asarray(x), 3, 3, 1, 0)
    assert (backend.asnumpy(out) == 9.0).all()
    dout = backend.asarray(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    dx = backend.asnumpy(backend.ops.maxpool_backward(dout, argmax, x.shape, 3, 3, 1, 0))
    assert dx[0, 0, 2, 2] == 10.0 and dx.sum() == 10.0


# (shape, window, stride, pad): the general kernel, and the CPU's 2x2 one (even H and W)
POOLINGS = [((2, 3, 6, 6), 3, 3, 0), ((2, 3, 7, 7), 3, 2, 1), ((2, 3, 6, 8), 2, 2, 0)]


def _pooled(backend, shape, size, stride, pad, seed=0):
    """x of ``shape``, its pooling's argmax (int64, so any index fits) and a dout of ones."""
    x = np.random.default_rng(seed).standard_normal(shape)
    _, argmax = ref.maxpool_forward(x, size, size, stride, pad)
    return x, argmax.astype(np.int64), np.ones(argmax.shape)


@pytest.mark.parametrize("bad", [9, -1, 10**6, -(10**6), 2**32, 2**32 + 1])
@pytest.mark.parametrize("shape, size, stride, pad", POOLINGS)
def test_maxpool_backward_refuses_an_index_outside_the_window(backend, bad, shape, size,
                                                               stride, pad):
    if not backend.checks_indices:
        pytest.skip(f"{backend.name} trusts its argmax")
    # 2**32 + 1 would wrap to a valid index 1 if argmax were cast to int32
    x, argmax, dout = _pooled(backend, shape, size, stride, pad)
    if abs(bad) == 9:  # read as "one past the window" (size * size), negative too
        bad = bad // 9 * size * size
    argmax[-1, -1, -1, -1] = bad
    with pytest.raises(IndexError, match="outside its pooling window"):
        backend.ops.maxpool_backward(backend.asarray(dout), backend.asarray(argmax), x.shape,
                                     size, size, stride, pad)
        backend.finish()


def test_maxpool_backward_refuses_an_index_into_the_padding(backend):
    if not backend.checks_indices:
        pytest.skip(f"{backend.name} trusts its argmax")
    x, argmax, dout = _pooled(backend, (1, 1, 5, 5), 3, 2, 1)
    argmax[0, 0, 0, 0] = 0  # the corner (-1, -1) of the first window is padding
    with pytest.raises(IndexError, match="padding"):
        backend.ops.maxpool_backward(backend.asarray(dout), backend.asarray(argmax), x.shape,
                                     3, 3, 2, 1)
        backend.finish()


# ----------------------------------------------------------------------------- average pooling


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_avgpool_equals_reference(backend, dtype, seed):
    rng = np.random.default_rng(400 + seed)
    shape, ph, pw, stride, pad = random_case(rng)
    x = rng.standard_normal(shape).astype(dtype)
    out = backend.ops.avgpool_forward(backend.asarray(x), ph, pw, stride, pad)
    out0 = ref.avgpool_forward(x, ph, pw, stride, pad)
    _agree(backend, "avgpool_forward", out, out0, dtype)
    dout = rng.standard_normal(out0.shape).astype(dtype)
    dx = backend.ops.avgpool_backward(backend.asarray(dout), shape, ph, pw, stride, pad)
    _agree(backend, "avgpool_backward", dx,
           ref.avgpool_backward(dout, shape, ph, pw, stride, pad), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (2, 3, 4, 6), (1, 2, 1, 1), (4, 1, 5, 1)])
def test_avgpool_of_the_whole_plane_equals_reference(backend, dtype, shape):
    """Global average pooling (one window covering the plane, any stride): a path of its own
    on the CPU, which must give the general kernel's values."""
    rng = np.random.default_rng(sum(shape))
    N, C, H, W = shape
    x = rng.standard_normal(shape).astype(dtype)
    for stride in (1, 2):
        out = backend.ops.avgpool_forward(backend.asarray(x), H, W, stride, 0)
        _agree(backend, "avgpool_forward", out, ref.avgpool_forward(x, H, W, stride, 0), dtype)
        dout = rng.standard_normal((N, C, 1, 1)).astype(dtype)
        dx = backend.ops.avgpool_backward(backend.asarray(dout), shape, H, W, stride, 0)
        _agree(backend, "avgpool_backward", dx,
               ref.avgpool_backward(dout, shape, H, W, stride, 0), dtype)


def test_avgpool_padding_counts_as_zeros(backend):
    # ones, a 3x3 window, pad 1, stride 2 over 4x4: a corner window holds 4 pixels of 9
    x = np.ones((1, 1, 4, 4))
    out = backend.asnumpy(backend.ops.avgpool_forward(backend.asarray(x), 3, 3, 2, 1))
    np.testing.assert_allclose(out, [[[[4 / 9, 6 / 9], [6 / 9, 9 / 9]]]], rtol=1e-15)
    # backward: each window hands 1/9 of its dout to each of its pixels, padding included;
    # row and column 1 lie in both windows of their axis, the others in one
    dx = backend.asnumpy(backend.ops.avgpool_backward(backend.asarray(np.ones((1, 1, 2, 2))),
                                                      x.shape, 3, 3, 2, 1))
    per_axis = np.array([1.0, 2.0, 1.0, 1.0])
    np.testing.assert_allclose(dx[0, 0], np.outer(per_axis, per_axis) / 9, rtol=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_avgpool_backward_is_the_adjoint_of_forward(backend, seed):
    """<avgpool(x), d> == <x, avgpool_backward(d)>: the backward pass is the exact gradient
    (pixels no window covers get 0)."""
    rng = np.random.default_rng(500 + seed)
    shape, ph, pw, stride, pad = random_case(rng)
    x = rng.standard_normal(shape)
    out = backend.asnumpy(backend.ops.avgpool_forward(backend.asarray(x), ph, pw, stride, pad))
    d = rng.standard_normal(out.shape)
    dx = backend.asnumpy(backend.ops.avgpool_backward(backend.asarray(d), shape, ph, pw,
                                                      stride, pad))
    assert np.vdot(out, d) == pytest.approx(np.vdot(x, dx), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", VIEW_SEEDS)
def test_avgpool_on_views(backend, seed):
    """Size-1 axes, transposes, negative strides, steps, Fortran order, broadcasts."""
    rng = np.random.default_rng(600 + seed)
    shape, ph, pw, stride, pad = random_view_shape(rng, lambda fh, fw, pad: pad < min(fh, fw))
    dtype = [np.float32, np.float64][seed % 2]
    x = random_view(rng, shape, dtype)
    out = backend.ops.avgpool_forward(backend.asarray(x), ph, pw, stride, pad)
    out0 = ref.avgpool_forward(x.copy(), ph, pw, stride, pad)
    _agree(backend, "avgpool_forward", out, out0, dtype)
    dout = random_view(rng, out0.shape, dtype)
    dx = backend.ops.avgpool_backward(backend.asarray(dout), shape, ph, pw, stride, pad)
    _agree(backend, "avgpool_backward", dx,
           ref.avgpool_backward(dout.copy(), shape, ph, pw, stride, pad), dtype)


# ----------------------------------------------------------------------------- float16


def test_float16_is_exact_where_it_can_be(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float16)
    col = backend.asnumpy(backend.ops.im2col(backend.asarray(x), 3, 3, 1, 1))
    assert col.dtype == np.float16
    np.testing.assert_array_equal(col, ref.im2col(x, 3, 3, 1, 1))  # a copy: bit-exact
    out, argmax = backend.ops.maxpool_forward(backend.asarray(x), 2, 2, 2, 0)
    out0, argmax0 = ref.maxpool_forward(x, 2, 2, 2, 0)
    assert backend.asnumpy(out).dtype == np.float16
    np.testing.assert_array_equal(backend.asnumpy(out), out0)
    np.testing.assert_array_equal(backend.asnumpy(argmax), argmax0)
    # sums: the kernels may add in float32 and round once; the reference adds in float16
    x16 = backend.asnumpy(backend.ops.col2im(backend.asarray(col), x.shape, 3, 3, 1, 1))
    assert x16.dtype == np.float16
    np.testing.assert_allclose(
        x16, ref.col2im(col.astype(np.float64), x.shape, 3, 3, 1, 1), rtol=1e-3, atol=1e-2
    )
    avg = backend.asnumpy(backend.ops.avgpool_forward(backend.asarray(x), 3, 3, 1, 1))
    assert avg.dtype == np.float16
    np.testing.assert_allclose(avg, ref.avgpool_forward(x.astype(np.float64), 3, 3, 1, 1),
                               rtol=1e-3, atol=1e-3)
    dx = backend.asnumpy(backend.ops.avgpool_backward(backend.asarray(avg), x.shape, 3, 3, 1, 1))
    assert dx.dtype == np.float16
    np.testing.assert_allclose(
        dx, ref.avgpool_backward(avg.astype(np.float64), x.shape, 3, 3, 1, 1), rtol=1e-3,
        atol=1e-3)

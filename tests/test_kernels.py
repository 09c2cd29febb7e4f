"""The kernels' entry points: the contract of ``tests/kernel_contract.py`` on the CPU
kernels, the reference and (where there is one) the GPU, then what is the CPU's own (its
2x2 pooling kernels, the fused convolution, threads, ReLU) and the argument checks."""

import subprocess
import sys
import time
from pathlib import Path

import numba
import numpy as np
import pytest
from kernel_contract import *  # noqa: F403 - the contract's tests, run on the backends below
from kernel_contract import DTYPES, make_backend, random_case

from xpnet import kernels
from xpnet.kernels import cpu, generic
from xpnet.kernels import reference as ref

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["cpu", "reference", "gpu"])
def backend(request):
    """The kernel set the contract's tests run on (cuda-sim: tests/cuda_sim_cases.py)."""
    return make_backend(request.param)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 8, 6), (2, 3, 7, 7), (2, 2, 6, 5), (1, 1, 2, 2)])
def test_maxpool_2x2_stride_2_equals_reference(dtype, shape):
    """The networks' pooling has its own kernels (one pass each way when H, W are even)."""
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(-3, 3, size=shape).astype(dtype)  # many ties
    out, argmax = kernels.maxpool_forward(x, 2, 2, 2)
    out0, argmax0 = ref.maxpool_forward(x, 2, 2, 2)
    np.testing.assert_array_equal(out, out0)
    np.testing.assert_array_equal(argmax, argmax0)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = kernels.maxpool_backward(dout, argmax, shape, 2, 2, 2)
    np.testing.assert_array_equal(dx, ref.maxpool_backward(dout, argmax0, shape, 2, 2, 2))


def test_maxpool_ties_pick_the_first_in_row_major_order():
    # integers in a small range: every 3x3 window has ties, some several
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, size=(2, 3, 7, 8)).astype(np.float32)
    x[0, 0] = 1.0  # a plane of equal values: the window's first element wins everywhere
    for stride, pad in [(1, 0), (2, 1), (3, 2)]:
        out, argmax = kernels.maxpool_forward(x, 3, 3, stride, pad)
        out0, argmax0 = ref.maxpool_forward(x, 3, 3, stride, pad)
        np.testing.assert_array_equal(argmax, argmax0)
        np.testing.assert_array_equal(out, out0)
    out, argmax = kernels.maxpool_forward(x, 3, 3, 1, 0)
    assert (argmax[0, 0] == 0).all()
    # the networks' 2x2 stride-2 pooling has its own unrolled kernel (odd width: 8 -> 4 dropped)
    out, argmax = kernels.maxpool_forward(x, 2, 2, 2, 0)
    out0, argmax0 = ref.maxpool_forward(x, 2, 2, 2, 0)
    np.testing.assert_array_equal(argmax, argmax0)
    np.testing.assert_array_equal(out, out0)
    assert (argmax[0, 0] == 0).all()


def test_maxpool_never_selects_padding():
    x = -1.0 - np.random.default_rng(0).random((1, 2, 5, 5))  # all negative: a 0 pad would win
    out, argmax = kernels.maxpool_forward(x, 3, 3, 2, 2)
    assert (out < -1.0).all()
    np.testing.assert_array_equal(argmax, ref.maxpool_forward(x, 3, 3, 2, 2)[1])


def test_noncontiguous_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 7, 9, 2)).transpose(0, 3, 1, 2)  # (3, 2, 7, 9) view
    np.testing.assert_array_equal(kernels.im2col(x, 3, 2, 2, 1), ref.im2col(x, 3, 2, 2, 1))
    np.testing.assert_array_equal(
        kernels.maxpool_forward(x, 2, 3, 1, 1)[0], ref.maxpool_forward(x, 2, 3, 1, 1)[0]
    )


def test_float16_is_exact_where_it_can_be():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 7)).astype(np.float16)
    col = kernels.im2col(x, 3, 3, 1, 1)
    assert col.dtype == np.float16
    np.testing.assert_array_equal(col, ref.im2col(x, 3, 3, 1, 1))  # a copy: bit-exact
    out, argmax = kernels.maxpool_forward(x, 2, 2, 2, 0)
    out0, argmax0 = ref.maxpool_forward(x, 2, 2, 2, 0)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, out0)
    np.testing.assert_array_equal(argmax, argmax0)
    x16 = kernels.col2im(col, x.shape, 3, 3, 1, 1)
    assert x16.dtype == np.float16
    np.testing.assert_allclose(
        x16, ref.col2im(col.astype(np.float64), x.shape, 3, 3, 1, 1), rtol=1e-3, atol=1e-2
    )


def test_float16_rounding_equals_numpys():
    """The kernels' float32 -> float16 rounding is astype's (random float32s, every float16
    and the ties next to it, subnormals, overflow, infinities, NaN), and reading float16
    gives its exact value."""
    rng = np.random.default_rng(5)
    bits = np.concatenate([
        rng.integers(0, 1 << 32, 2_000_000, dtype=np.uint64).astype(np.uint32),
        # float16's own values and the ties halfway between neighbours, both signs
        (np.arange(1 << 16, dtype=np.uint32) << 13) | np.uint32(0x1000) * (np.arange(
            1 << 16, dtype=np.uint32) % 2),
        (np.arange(0x33000000, 0x38800000, 997, dtype=np.uint32)),  # subnormal range
        np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001,
                  0x477FEFFF, 0x477FF000, 0x47800000], np.uint32),
    ])
    single = bits.view(np.float32)
    with np.errstate(over="ignore"):
        want = single.astype(np.float16)
    got = cpu.to_half(single)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], want.view(np.uint16)[~nan])
    assert np.isnan(got[nan]).all()
    every_half = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    single = np.empty(every_half.size, np.float32)
    cpu._half_to_single(every_half, single)
    np.testing.assert_array_equal(single, every_half.view(np.float16).astype(np.float32))


@pytest.mark.parametrize("size, stride, pad", [(2, 2, 0), (3, 2, 1)])
def test_float16_maxpool_is_float32s_on_the_same_values(size, stride, pad):
    """Pooling float16 reads each block of planes as float32 (exact): the maxima and argmax
    of the same values in float32, over several blocks and tasks."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 40, 28, 28)).astype(np.float16)
    x.flat[::97] = np.nan
    out, argmax = kernels.maxpool_forward(x, size, size, stride, pad)
    out32, argmax32 = kernels.maxpool_forward(x.astype(np.float32), size, size, stride, pad)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, out32.astype(np.float16))
    np.testing.assert_array_equal(argmax, argmax32)


def test_float16_conv_forward_is_float32s_rounded_once():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 3, 14, 14)).astype(np.float16)  # several chunks
    W = (0.3 * rng.standard_normal((8, 3, 3, 3))).astype(np.float16)
    b = rng.standard_normal(8).astype(np.float16)
    for stride, pad in ((1, 1), (2, 0)):
        out = kernels.conv2d_forward(x, W, b, stride, pad)
        want = kernels.conv2d_forward(x.astype(np.float32), W.astype(np.float32),
                                      b.astype(np.float32), stride, pad).astype(np.float16)
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, want)


def test_float16_without_the_conversion_kernels_gives_the_same_results(monkeypatch):
    """Where the half conversions do not compile, float16 goes through astype: same values."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 3, 10, 10)).astype(np.float16)
    W = (0.3 * rng.standard_normal((4, 3, 3, 3))).astype(np.float16)
    b = rng.standard_normal(4).astype(np.float16)

    def run():
        return (kernels.conv2d_forward(x, W, b, 1, 1), *kernels.maxpool_forward(x, 2, 2, 2),
                cpu.to_half(x.astype(np.float32) / 3))

    fast = run()
    monkeypatch.setattr(cpu, "_half_ok", False)
    for got, want in zip(run(), fast):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def _peak_bytes(fn):
    """The peak of NumPy allocations during fn(), after a first call has made the kernels'
    per-thread scratch buffers."""
    import tracemalloc

    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_float16_inference_kernels_convert_inside_without_float32_copies():
    """float16 stays float16 in memory (book 8.3.4): the kernels read it into float32 a
    block at a time, so no call allocates a float32 copy of its input or output."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((64, 16, 28, 28)).astype(np.float16)
    W = (0.1 * rng.standard_normal((16, 16, 3, 3))).astype(np.float16)
    b = np.zeros(16, np.float16)
    single_copy = x.size * 4
    for fn in (lambda: kernels.conv2d_forward(x, W, b, 1, 1),
               lambda: kernels.maxpool_forward(x, 2, 2, 2),
               lambda: kernels.relu_forward(x)):
        assert _peak_bytes(fn) < single_copy


# ----------------------------------------------------------------------------- convolution


def conv_case(rng):
    shape, fh, fw, stride, pad = random_case(rng, max_hw=11, window_pad_limit=False)
    FN = int(rng.integers(1, 6))
    return shape, (FN, shape[1], fh, fw), stride, pad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(16))
def test_fused_conv_equals_im2col_gemm(dtype, seed):
    """The CPU's fused convolution computes what the book's im2col + dot + col2im does."""
    rng = np.random.default_rng(300 + seed)
    shape, wshape, stride, pad = conv_case(rng)
    x = rng.standard_normal(shape).astype(dtype)
    W = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype)
    out = kernels.conv2d_forward(x, W, b, stride, pad)
    out0 = generic.conv2d_forward(x, W, b, stride, pad)
    assert out.dtype == dtype and out.shape == out0.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, out0, rtol=tol, atol=tol)

    dout = rng.standard_normal(out.shape).astype(dtype)
    for got, want in zip(
        kernels.conv2d_backward(x, W, dout, stride, pad),
        generic.conv2d_backward(x, W, dout, stride, pad),
    ):
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 10)


def test_fused_conv_large_batch_several_chunks():
    # DeepConvNet's second layer: many chunks per worker, the padded-width layout
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 16, 28, 28)).astype(np.float32)
    W = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    out = kernels.conv2d_forward(x, W, b, 1, 1)
    np.testing.assert_allclose(out, generic.conv2d_forward(x, W, b, 1, 1), rtol=1e-4, atol=1e-4)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for got, want in zip(kernels.conv2d_backward(x, W, dout, 1, 1),
                         generic.conv2d_backward(x, W, dout, 1, 1)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_conv_results_do_not_depend_on_the_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs Numba's pool to have at least 2 threads")
    rng = np.random.default_rng(6)
    # DeepConvNet's second layer: many chunks, so the workers share them out
    x = rng.standard_normal((100, 16, 28, 28)).astype(np.float32)
    W = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    dout = rng.standard_normal((100, 16, 28, 28)).astype(np.float32)
    y = rng.standard_normal(1_200_001).astype(np.float32)  # several ReLU pieces and a tail
    x16 = x.astype(np.float16)
    before = numba.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            numba.set_num_threads(n)
            pooled, argmax = kernels.maxpool_forward(x, 2, 2, 2)
            pooled3, _ = kernels.maxpool_forward(x, 3, 3, 2, 1)
            relu = kernels.relu_forward(y)
            results.append((
                *kernels.conv2d_backward(x, W, dout, 1, 1),
                kernels.conv2d_forward(x, W, b, 1, 1),
                pooled, argmax, pooled3,
                kernels.maxpool_backward(pooled, argmax, x.shape, 2, 2, 2),
                relu, kernels.relu_backward(y, relu),
                kernels.conv2d_forward(x16, W, b, 1, 1), *kernels.maxpool_forward(x16, 2, 2, 2),
                kernels.relu_forward(x16), kernels.relu_forward(x[..., :27]),
            ))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)  # bit for bit
    np.testing.assert_array_equal(results[0][-1], np.maximum(x[..., :27], 0))


def test_conv_float16_computes_close_to_float32():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float16)
    W = (0.2 * rng.standard_normal((5, 4, 3, 3))).astype(np.float16)
    b = rng.standard_normal(5).astype(np.float16)
    out = kernels.conv2d_forward(x, W, b, 1, 1)
    assert out.dtype == np.float16
    want = generic.conv2d_forward(x.astype(np.float64), W.astype(np.float64),
                                  b.astype(np.float64), 1, 1)
    np.testing.assert_allclose(out, want, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------- bad input


def test_bad_arguments_are_named():
    x = np.zeros((1, 2, 5, 5))
    with pytest.raises(TypeError, match="numpy.ndarray or a cupy.ndarray"):
        kernels.im2col(x.tolist(), 3, 3)
    with pytest.raises(ValueError, match=r"4-D \(N, C, H, W\)"):
        kernels.im2col(np.zeros((2, 5, 5)), 3, 3)
    with pytest.raises(ValueError, match="does not fit the input"):
        kernels.im2col(x, 6, 3)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        kernels.im2col(x, 3, 3, stride=0)
    with pytest.raises(TypeError, match="pad must be an integer"):
        kernels.im2col(x, 3, 3, pad=1.5)
    with pytest.raises(ValueError, match=r"expected \(9, 18\)"):
        kernels.col2im(np.zeros((8, 18)), x.shape, 3, 3)
    with pytest.raises(ValueError, match="pad must be smaller"):
        kernels.maxpool_forward(x, 2, 2, 2, pad=2)
    out, argmax = kernels.maxpool_forward(x, 2, 2, 2)
    with pytest.raises(ValueError, match="argmax of shape"):
        kernels.maxpool_backward(out, argmax[:, :1], x.shape, 2, 2, 2)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 3, H, W\)"):
        kernels.conv2d_forward(x, np.zeros((4, 3, 3, 3)), np.zeros(4))


def _pooled(shape, size, stride, pad, seed=0):
    """x of ``shape``, its pooling's argmax (int64, so any index fits) and a dout of ones."""
    x = np.random.default_rng(seed).standard_normal(shape)
    out, argmax = kernels.maxpool_forward(x, size, size, stride, pad)
    return x, argmax.astype(np.int64), np.ones_like(out)


def test_avgpool_bad_arguments_are_named():
    x = np.zeros((1, 2, 5, 5))
    with pytest.raises(TypeError, match="avgpool_forward: x must be a floating array"):
        kernels.avgpool_forward(x.astype(np.int64), 2, 2, 2)
    with pytest.raises(ValueError, match="pad must be smaller"):
        kernels.avgpool_forward(x, 2, 2, 2, pad=2)
    with pytest.raises(ValueError, match="does not fit the input"):
        kernels.avgpool_forward(x, 6, 2, 1)
    with pytest.raises(ValueError, match=r"avgpool_backward: dout of shape \(1, 2, 3, 3\).*"
                                         r"expected \(1, 2, 2, 2\)"):
        kernels.avgpool_backward(np.zeros((1, 2, 3, 3)), x.shape, 2, 2, 2)
    with pytest.raises(TypeError, match="pool_h must be an integer"):
        kernels.avgpool_backward(np.zeros((1, 2, 2, 2)), x.shape, 2.5, 2, 2)


def test_dispatch_table_names_a_module_for_every_op_and_backend():
    """One table says where each op runs; the generic fallback is a row of it, not a guess."""
    assert set(kernels.IMPLEMENTATIONS) == {
        name for name in kernels.__all__
        if callable(getattr(kernels, name)) and name not in (
            "check_integer", "conv_output_size", "implementation")
    }
    for op, modules in kernels.IMPLEMENTATIONS.items():
        assert set(modules) == {"numpy", "cupy"}, op
        assert kernels.implementation("numpy", op) is getattr(
            __import__(f"xpnet.kernels.{modules['numpy']}", fromlist=[op]), op)
    assert kernels.IMPLEMENTATIONS["conv2d_forward"]["cupy"] == "generic"


def test_pooling_backward_refuses_a_forged_argmax():
    from xpnet.convolution import Pooling

    pool = Pooling(3, 3, stride=3)
    x = np.random.default_rng(1).standard_normal((2, 2, 6, 6))
    dout = np.ones_like(pool.forward(x))
    pool.arg_max = pool.arg_max.copy()
    pool.arg_max[1, 1, 1, 1] = 9  # one past the window: row 6 of a 6-row image
    with pytest.raises(IndexError, match="outside its pooling window"):
        pool.backward(dout)
    pool.arg_max = pool.arg_max.astype(np.float64)
    with pytest.raises(TypeError, match="argmax must be an integer array"):
        pool.backward(dout)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.uint64])
def test_maxpool_backward_takes_any_integer_argmax(dtype):
    x, argmax, dout = _pooled((2, 3, 7, 7), 3, 2, 1)
    got = kernels.maxpool_backward(dout, argmax.astype(dtype), x.shape, 3, 3, 2, 1)
    np.testing.assert_array_equal(got, ref.maxpool_backward(dout, argmax, x.shape, 3, 3, 2, 1))


def test_maxpool_backward_refuses_a_float_argmax():
    x, argmax, dout = _pooled((1, 1, 4, 4), 2, 2, 0)
    with pytest.raises(TypeError, match="argmax must be an integer array"):
        kernels.maxpool_backward(dout, argmax + 0.7, x.shape, 2, 2, 2)


# ----------------------------------------------------------------------------- threads


def test_set_num_threads_sets_numba_and_blas_together():
    from threadpoolctl import threadpool_info

    from xpnet import threads

    def blas():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = threads.get_num_threads()
    try:
        assert threads.set_num_threads(1, blas_threads=2) == 1
        assert threads.get_num_threads() == numba.get_num_threads() == 1
        assert blas() and all(n == 2 for n in blas())
        threads.ensure_default()  # the user has chosen: nothing changes
        assert numba.get_num_threads() == 1 and all(n == 2 for n in blas())
        threads.set_num_threads(1)  # BLAS single-threaded by default: the kernels' workers
        assert all(n == 1 for n in blas())  # call it, one product per worker
        with threads.num_threads(1, blas_threads=2):
            assert numba.get_num_threads() == 1 and all(n == 2 for n in blas())
        assert all(n == 1 for n in blas())
        assert threads.default_num_threads() >= 1
        with pytest.raises(ValueError, match="positive integer"):
            threads.set_num_threads(0)
        with pytest.raises(ValueError, match="blas_threads must be a positive integer"):
            threads.set_num_threads(1, blas_threads=0)
        with pytest.raises(ValueError, match="NUMBA_NUM_THREADS"):
            threads.set_num_threads(numba.config.NUMBA_NUM_THREADS + 1)
    finally:
        threads.set_num_threads(before)


def test_conv_after_fork():
    """The worker pool does not survive fork(); a child must build its own, not hang."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods() or numba.get_num_threads() < 2:
        pytest.skip("needs fork() and at least 2 threads")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((300, 4, 10, 10)).astype(np.float32)  # several chunks
    W = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    b = np.zeros(4, np.float32)
    want = kernels.conv2d_forward(x, W, b, 1, 1)  # the parent's pool now exists
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(kernels.conv2d_forward, (x, W, b, 1, 1)).get(timeout=60)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------
# ReLU
# ---------------------------------------------------------------------------


def _relu_inputs(rng, dtype):
    """Contiguous, a convolution-like view without its last columns, a transposed view,
    a 1-D array longer than one parallel block; with NaN, infinities and signed zeros."""
    full = rng.standard_normal((3, 4, 5, 9)).astype(dtype)
    long = rng.standard_normal(40_000).astype(dtype)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30], dtype)
    return [full, full[..., :7], full.transpose(0, 3, 1, 2), full[:, ::2], long, special]


@pytest.mark.parametrize("dtype", DTYPES + [np.float16])
def test_relu_forward_equals_maximum(dtype):
    rng = np.random.default_rng(0)
    for x in _relu_inputs(rng, dtype):
        out = kernels.relu_forward(x)
        assert out.dtype == x.dtype and out.shape == x.shape and out.flags.c_contiguous
        np.testing.assert_array_equal(out, np.maximum(x, 0))  # NaN where x is NaN
        assert kernels.relu_forward(x) is not x


@pytest.mark.parametrize("dtype", DTYPES + [np.float16])
def test_relu_backward_zeroes_where_the_input_was_not_positive(dtype):
    rng = np.random.default_rng(1)
    for x in _relu_inputs(rng, dtype):
        out = kernels.relu_forward(x)
        dout = rng.standard_normal(x.shape).astype(dtype)
        dout.flat[:3] = [np.inf, np.nan, -np.inf][: dout.size]
        before = dout.copy()
        dx = kernels.relu_backward(dout, out)
        assert dx.dtype == dout.dtype and dx.shape == x.shape
        # the book: dout[x <= 0] = 0 (a NaN input passes its gradient, as x <= 0 is False)
        np.testing.assert_array_equal(dx, np.where(x <= 0, 0, dout))
        np.testing.assert_array_equal(dout, before)  # dout is not modified


def _best_time(fn, repeats=15):
    fn()  # compilation and first-touch pages out of the way
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_relu_backward_streams_like_forward():
    """Backward reads two arrays where forward reads one, so it may take about twice as
    long -- not ten times: with half the units negative, a branch per element (a load of
    dout under the test) mispredicts every other element. Kernels timed alone, best of 15."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1 << 20).astype(np.float32)
    dout = rng.standard_normal(x.size).astype(np.float32)
    out, dx = np.empty_like(x), np.empty_like(x)
    forward = _best_time(lambda: cpu._relu_forward_flat(x, out, 0, x.size))
    backward = _best_time(lambda: cpu._relu_backward_flat(dout, out, dx, 0, x.size))
    assert backward < 4 * forward, f"backward {backward:.2e} s, forward {forward:.2e} s"


def test_relu_streams_like_a_copy():
    """ReLU forward is a copy with a select: its loop must vectorize (indexed from a start
    the compiler cannot prove non-negative, it did not: 4x-5x slower than a copy)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal(1 << 20).astype(np.float32)
    out, dout, dx = np.empty_like(x), rng.standard_normal(x.size).astype(np.float32), \
        np.empty_like(x)
    copy = _best_time(lambda: np.copyto(out, x))
    forward = _best_time(lambda: cpu._relu_forward_flat(x, out, 0, x.size))
    backward = _best_time(lambda: cpu._relu_backward_flat(dout, out, dx, 0, x.size))
    assert forward < 2.5 * copy, f"forward {forward:.2e} s, copy {copy:.2e} s"
    assert backward < 4 * copy, f"backward {backward:.2e} s, copy {copy:.2e} s"


def test_pooling_streams_like_relu():
    """2x2 pooling reads and writes no more than ReLU does; with ReLU-like input (ties at
    0) its kernels must not fall to a branch per element (measured 7x-10x slower than
    they are, 30x ReLU's time)."""
    rng = np.random.default_rng(4)
    x = np.maximum(rng.standard_normal((64, 16, 32, 32)), 0).astype(np.float32)
    relu_out = np.empty_like(x)
    relu = _best_time(lambda: cpu._relu_forward_flat(x.reshape(-1), relu_out.reshape(-1), 0,
                                                     x.size))
    out, argmax = kernels.maxpool_forward(x, 2, 2, 2)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dx = np.empty_like(x)
    planes = 64 * 16
    forward = _best_time(lambda: cpu._maxpool_forward_2x2(x, out, argmax, 0, planes))
    backward = _best_time(lambda: cpu._maxpool_backward_2x2(
        dout.view(np.uint32), argmax, dx.view(np.uint32), 0, planes))
    assert forward < 10 * relu, f"forward {forward:.2e} s, ReLU {relu:.2e} s"
    assert backward < 10 * relu, f"backward {backward:.2e} s, ReLU {relu:.2e} s"


@pytest.mark.parametrize("dtype", DTYPES + [np.float16])
def test_maxpool_2x2_backward_passes_any_gradient_exactly(dtype):
    """Infinite, NaN and zero gradients land on the argmax unchanged; 0 elsewhere."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 6, 8)).astype(dtype)
    out, argmax = kernels.maxpool_forward(x, 2, 2, 2)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dout.flat[:4] = [np.inf, -np.inf, np.nan, -0.0]
    dx = kernels.maxpool_backward(dout, argmax, x.shape, 2, 2, 2)
    want = ref.maxpool_backward(dout, argmax, x.shape, 2, 2, 2)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, want)  # NaN where the reference has NaN


def test_relu_generic_matches_cpu():
    rng = np.random.default_rng(2)
    for x in _relu_inputs(rng, np.float32):
        out = kernels.relu_forward(x)
        np.testing.assert_array_equal(generic.relu_forward(x), out)
        dout = rng.standard_normal(x.shape).astype(np.float32)
        np.testing.assert_array_equal(
            generic.relu_backward(dout, out), kernels.relu_backward(dout, out)
        )


def test_relu_backward_shape_mismatch_is_named():
    with pytest.raises(ValueError, match=r"relu_backward: dout of shape \(2, 3\).*\(3, 2\)"):
        kernels.relu_backward(np.zeros((2, 3)), np.zeros((3, 2)))


def test_gpu_kernels_build_where_numpy_lacks_row_stack():
    """NumPy 2.5 removed ``np.row_stack``; numba-cuda (<= 0.30) looks it up when it builds its
    first kernel. Importing ``kernels.cuda`` puts the alias back, so the lookup succeeds."""
    pytest.importorskip("numba.cuda")
    code = (
        "import numpy as np\n"
        "if hasattr(np, 'row_stack'): del np.row_stack\n"  # as NumPy 2.5
        "import xpnet.kernels.cuda\n"
        "import numba.cuda.np.arrayobj\n"  # what numba-cuda imports before its first kernel
        "assert np.row_stack is np.vstack\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

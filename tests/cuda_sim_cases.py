"""The GPU kernels of ``kernels.cuda`` under Numba's CUDA simulator, against the reference.

Not collected by a plain ``pytest`` run (the name does not start with ``test_``): the
simulator must be switched on before ``numba.cuda`` is first imported, so
``tests/test_cuda_sim.py`` runs this file in its own process with NUMBA_ENABLE_CUDASIM=1.
Run by hand:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda_sim_cases.py

The simulator runs the very ``@cuda.jit`` kernels and ``launch_*`` functions the GPU runs,
on NumPy arrays, one Python thread per CUDA thread - so shapes are tiny, but every index
computation (strides, padding, odd sizes, the grid-stride loops) is exercised.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("needs NUMBA_ENABLE_CUDASIM=1 set before numba.cuda is imported",
                allow_module_level=True)

from numba import config  # noqa: E402

from xpnet.kernels import cuda as gpu  # noqa: E402
from xpnet.kernels import reference as ref  # noqa: E402

# the atomic col2im lives with the benchmarks that compare it with the gather
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from gpu_col2im_scatter import launch_col2im_scatter  # noqa: E402

DTYPES = [np.float32, np.float64]
SEEDS = range(16)


def test_simulator_is_on():
    # guards against the whole file silently testing nothing on a real device
    assert config.ENABLE_CUDASIM


def _geometry(rng, pool=False):
    """A random (N, C, H, W), window, stride and pad that give at least one output."""
    while True:
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        h, w = int(rng.integers(1, 8)), int(rng.integers(1, 8))
        fh, fw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        stride, pad = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        if pool and pad >= min(fh, fw):
            continue  # the kernels' contract: pooling windows never consist of padding only
        if fh <= h + 2 * pad and fw <= w + 2 * pad:
            return (n, c, h, w), fh, fw, stride, pad


def _out_hw(shape, fh, fw, stride, pad):
    return (ref.conv_output_size(shape[2], fh, stride, pad),
            ref.conv_output_size(shape[3], fw, stride, pad))


def _launch_kwargs(rng):
    # Half the cases use a tiny grid, so each thread runs the grid-stride loop many times.
    if rng.random() < 0.5:
        return {"threads": int(rng.integers(1, 9)), "max_blocks": int(rng.integers(1, 4))}
    return {"threads": 64}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_im2col_equals_reference(seed, dtype):
    rng = np.random.default_rng(seed)
    shape, fh, fw, stride, pad = _geometry(rng)
    x = rng.standard_normal(shape).astype(dtype)
    expected = ref.im2col(x, fh, fw, stride, pad)
    col = np.full(expected.shape, np.nan, dtype=dtype)  # NaN shows any entry left unwritten
    gpu.launch_im2col(x, col, fh, fw, stride, pad, **_launch_kwargs(rng))
    np.testing.assert_array_equal(col, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_col2im_equals_reference_bit_for_bit(seed, dtype):
    # the gather sums the taps in the reference's order, so even float32 matches exactly
    rng = np.random.default_rng(100 + seed)
    shape, fh, fw, stride, pad = _geometry(rng)
    oh, ow = _out_hw(shape, fh, fw, stride, pad)
    col = rng.standard_normal((shape[0] * oh * ow, shape[1] * fh * fw)).astype(dtype)
    x = np.full(shape, np.nan, dtype=dtype)
    gpu.launch_col2im(col, x, fh, fw, stride, pad, **_launch_kwargs(rng))
    np.testing.assert_array_equal(x, ref.col2im(col, shape, fh, fw, stride, pad))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS[:4])
def test_col2im_scatter_equals_reference(seed, dtype):
    rng = np.random.default_rng(200 + seed)
    shape, fh, fw, stride, pad = _geometry(rng)
    oh, ow = _out_hw(shape, fh, fw, stride, pad)
    col = rng.standard_normal((shape[0] * oh * ow, shape[1] * fh * fw)).astype(dtype)
    x = np.zeros(shape, dtype=dtype)
    launch_col2im_scatter(col, x, fh, fw, stride, pad, **_launch_kwargs(rng))
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(x, ref.col2im(col, shape, fh, fw, stride, pad), rtol=rtol,
                               atol=rtol)


def test_col2im_is_the_adjoint_of_im2col():
    rng = np.random.default_rng(7)
    shape, fh, fw, stride, pad = (2, 3, 6, 5), 3, 2, 2, 1
    x = rng.standard_normal(shape)
    oh, ow = _out_hw(shape, fh, fw, stride, pad)
    c = rng.standard_normal((shape[0] * oh * ow, shape[1] * fh * fw))
    col = np.empty_like(c)
    gpu.launch_im2col(x, col, fh, fw, stride, pad)
    back = np.empty_like(x)
    gpu.launch_col2im(c, back, fh, fw, stride, pad)
    assert np.isclose(np.vdot(col, c), np.vdot(x, back), rtol=1e-12)


def _pool_input(rng, shape, dtype):
    # few distinct values, so windows have ties: the first maximum must win, as in np.argmax
    return rng.integers(-3, 4, size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_maxpool_forward_equals_reference(seed, dtype):
    rng = np.random.default_rng(300 + seed)
    shape, ph, pw, stride, pad = _geometry(rng, pool=True)
    x = _pool_input(rng, shape, dtype)
    if seed % 2:  # negative inputs make sure padding is never taken for a zero
        x -= 10
    out_ref, arg_ref = ref.maxpool_forward(x, ph, pw, stride, pad)
    out = np.full(out_ref.shape, np.nan, dtype=dtype)
    arg = np.full(arg_ref.shape, -7, dtype=np.int32)
    gpu.launch_maxpool_forward(x, out, arg, ph, pw, stride, pad, **_launch_kwargs(rng))
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(arg, arg_ref)


def test_maxpool_forward_nan_wins_like_argmax():
    x = np.array([[[[1.0, np.nan, 5.0, np.nan],
                    [2.0, 3.0, 4.0, -1.0]]]], dtype=np.float32)
    out = np.empty((1, 1, 1, 2), np.float32)
    arg = np.empty((1, 1, 1, 2), np.int32)
    gpu.launch_maxpool_forward(x, out, arg, 2, 2, 2, 0)
    out_ref, arg_ref = ref.maxpool_forward(x, 2, 2, 2, 0)
    np.testing.assert_array_equal(arg, arg_ref)
    np.testing.assert_array_equal(arg, [[[[1, 1]]]])
    assert np.isnan(out).all() and np.isnan(out_ref).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_maxpool_backward_equals_reference(seed, dtype):
    rng = np.random.default_rng(400 + seed)
    shape, ph, pw, stride, pad = _geometry(rng, pool=True)
    x = _pool_input(rng, shape, dtype)
    _, argmax = ref.maxpool_forward(x, ph, pw, stride, pad)
    dout = rng.standard_normal(argmax.shape).astype(dtype)
    dx = np.full(shape, np.nan, dtype=dtype)
    gpu.launch_maxpool_backward(dout, argmax, dx, ph, pw, stride, pad, **_launch_kwargs(rng))
    np.testing.assert_array_equal(
        dx, ref.maxpool_backward(dout, argmax, shape, ph, pw, stride, pad)
    )


def test_overlapping_pool_windows_sum_their_gradients():
    # stride 1 with a 3x3 window: the centre pixel is the maximum of all four windows
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 1:3, 1:3] = [[1.0, 2.0], [3.0, 9.0]]
    out = np.empty((1, 1, 2, 2))
    arg = np.empty((1, 1, 2, 2), np.int32)
    gpu.launch_maxpool_forward(x, out, arg, 3, 3, 1, 0)
    assert (out == 9.0).all()
    dx = np.empty_like(x)
    gpu.launch_maxpool_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), arg, dx, 3, 3, 1, 0)
    assert dx[0, 0, 2, 2] == 10.0 and dx.sum() == 10.0


def test_float16_kernels():
    rng = np.random.default_rng(11)
    shape, fh, fw, stride, pad = (1, 2, 5, 4), 3, 2, 1, 1
    x = rng.standard_normal(shape).astype(np.float16)
    expected = ref.im2col(x, fh, fw, stride, pad)
    col = np.empty_like(expected)
    gpu.launch_im2col(x, col, fh, fw, stride, pad)
    np.testing.assert_array_equal(col, expected)
    back = np.empty_like(x)
    gpu.launch_col2im(col, back, fh, fw, stride, pad)
    np.testing.assert_array_equal(back, ref.col2im(col, shape, fh, fw, stride, pad))
    out_ref, arg_ref = ref.maxpool_forward(x, 2, 2, 2, 0)
    out, arg = np.empty_like(out_ref), np.empty_like(arg_ref)
    gpu.launch_maxpool_forward(x, out, arg, 2, 2, 2, 0)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(arg, arg_ref)
    assert out.dtype == np.float16


def test_launch_rejects_mismatched_shapes():
    x = np.zeros((2, 3, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"col has shape \(3, 4\); expected \(8, 27\)"):
        gpu.launch_im2col(x, np.zeros((3, 4), np.float32), 3, 3, 2, 0)
    with pytest.raises(ValueError, match="argmax has shape"):
        gpu.launch_maxpool_forward(x, np.zeros((2, 3, 2, 2), np.float32),
                                   np.zeros((2, 3, 1, 1), np.int32), 2, 2, 2, 0)


def test_launch_refuses_arrays_beyond_32_bit_indexing():
    # zero-stride views: the shapes are huge, the memory is not
    x = np.broadcast_to(np.float32(0), (1, 1, 2**16, 2**15 + 1))
    col = np.broadcast_to(np.float32(0), (2**16 * (2**15 + 1), 1))
    with pytest.raises(ValueError, match="too large for the GPU kernels"):
        gpu.launch_im2col(x, col, 1, 1, 1, 0)


def _pool_case_with_bad_index(bad, pad=0):
    """A 3x3, stride-3 pooling of a 6x6 image whose argmax holds ``bad`` at one window."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 6, 6))
    _, argmax = ref.maxpool_forward(x, 3, 3, 3, pad)
    argmax = argmax.astype(np.int64)
    argmax[1, 1, 0, 0] = bad
    return x, argmax, np.ones(argmax.shape)


@pytest.mark.parametrize("bad", [9, -1, 10**6, -(10**6), 2**32])
def test_maxpool_backward_refuses_an_index_outside_the_window(bad):
    x, argmax, dout = _pool_case_with_bad_index(bad)
    dx = np.zeros_like(x)
    with pytest.raises(IndexError, match="outside its pooling window"):
        gpu.launch_maxpool_backward(dout, argmax, dx, 3, 3, 3, 0, threads=8, max_blocks=2)
    # nothing was written for the bad index, every other window's gradient is in place
    good = argmax.copy()
    good[1, 1, 0, 0] = 0
    expected = ref.maxpool_backward(dout, good, x.shape, 3, 3, 3, 0)
    expected[1, 1, 0, 0] = 0
    np.testing.assert_array_equal(dx, expected)
    # the flag was cleared: a good argmax runs again
    gpu.launch_maxpool_backward(dout, good, dx, 3, 3, 3, 0)
    np.testing.assert_array_equal(dx, ref.maxpool_backward(dout, good, x.shape, 3, 3, 3, 0))


def test_maxpool_backward_refuses_an_index_into_the_padding():
    # with pad 1 the first window's index 0 is the padding corner (-1, -1)
    x, argmax, dout = _pool_case_with_bad_index(4, pad=1)
    argmax[0, 0, 0, 0] = 0
    with pytest.raises(IndexError, match="padding"):
        gpu.launch_maxpool_backward(dout, argmax, np.zeros_like(x), 3, 3, 3, 1)


def test_maxpool_backward_error_flag_is_read_lazily():
    # a flag left set by an earlier launch (on a GPU: a kernel that finished after its
    # call returned) is raised by the next call, before that one launches
    x, argmax, dout = _pool_case_with_bad_index(0)
    gpu._error_flag()[0] = 1
    dx = np.full_like(x, np.nan)
    with pytest.raises(IndexError, match="outside its pooling window"):
        gpu.launch_maxpool_backward(dout, argmax, dx, 3, 3, 3, 0)
    assert np.isnan(dx).all()  # refused before launching
    gpu.raise_pending_error()  # cleared

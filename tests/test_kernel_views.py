"""Every CPU kernel entry point on every kind of view gives what the plain reference gives.

The kernels read their inputs through strides (or copy them once); a layout they misread
returns wrong numbers or reads outside the array. Each case builds random views --
size-1 axes, transposes, negative strides, steps, Fortran order, read-only and broadcast
(zero-stride) arrays -- and compares the kernel with ``kernels.reference`` or NumPy on a
contiguous copy of the same values. (Average pooling's view cases are part of the kernel
contract, ``tests/kernel_contract.py``, run on every backend.)
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from kernel_contract import random_view, random_view_shape

from xpnet import kernels
from xpnet.kernels import reference as ref

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(40)


def any_window(fh, fw, pad):
    return True


def pool_window(fh, fw, pad):
    return pad < min(fh, fw)


def out_hw(shape, fh, fw, stride, pad):
    return (ref.conv_output_size(shape[2], fh, stride, pad),
            ref.conv_output_size(shape[3], fw, stride, pad))


def tolerance(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("seed", SEEDS)
def test_im2col_on_views(seed):
    rng = np.random.default_rng(seed)
    shape, fh, fw, stride, pad = random_view_shape(rng, any_window)
    dtype = rng.choice([np.float16, np.float32, np.float64])
    x = random_view(rng, shape, dtype)
    np.testing.assert_array_equal(kernels.im2col(x, fh, fw, stride, pad),
                                  ref.im2col(x.copy(), fh, fw, stride, pad))


@pytest.mark.parametrize("seed", SEEDS)
def test_col2im_on_views(seed):
    rng = np.random.default_rng(1000 + seed)
    shape, fh, fw, stride, pad = random_view_shape(rng, any_window)
    dtype = rng.choice([np.float32, np.float64])
    oh, ow = out_hw(shape, fh, fw, stride, pad)
    col = random_view(rng, (shape[0] * oh * ow, shape[1] * fh * fw), dtype)
    np.testing.assert_allclose(kernels.col2im(col, shape, fh, fw, stride, pad),
                               ref.col2im(col.copy(), shape, fh, fw, stride, pad),
                               **tolerance(dtype))


def conv_reference(x, W, b, dout, stride, pad):
    """The book's Convolution forward and backward, in float64, on contiguous copies."""
    x, W, b, dout = (np.array(a, dtype=np.float64) for a in (x, W, b, dout))
    FN, _, fh, fw = W.shape
    col = ref.im2col(x, fh, fw, stride, pad)
    Wc = W.reshape(FN, -1)
    N, OH, OW = x.shape[0], dout.shape[2], dout.shape[3]
    out = (col @ Wc.T + b).reshape(N, OH, OW, FN).transpose(0, 3, 1, 2)
    d = dout.transpose(0, 2, 3, 1).reshape(-1, FN)
    dW = (col.T @ d).T.reshape(W.shape)
    dx = ref.col2im(d @ Wc, x.shape, fh, fw, stride, pad)
    return out, (dx, dW, d.sum(axis=0))


@pytest.mark.parametrize("seed", SEEDS)
def test_conv_forward_and_backward_on_views(seed):
    rng = np.random.default_rng(2000 + seed)
    shape, fh, fw, stride, pad = random_view_shape(rng, any_window)
    dtype = rng.choice([np.float32, np.float64])
    FN = int(rng.choice([1, 2, 4]))
    oh, ow = out_hw(shape, fh, fw, stride, pad)
    x = random_view(rng, shape, dtype)
    W = random_view(rng, (FN, shape[1], fh, fw), dtype)
    b = random_view(rng, (FN,), dtype)
    dout = random_view(rng, (shape[0], FN, oh, ow), dtype)
    want_out, want_grads = conv_reference(x, W, b, dout, stride, pad)
    np.testing.assert_allclose(kernels.conv2d_forward(x, W, b, stride, pad), want_out,
                               **tolerance(dtype))
    for got, want in zip(kernels.conv2d_backward(x, W, dout, stride, pad), want_grads):
        np.testing.assert_allclose(got, want, **tolerance(dtype))


@pytest.mark.parametrize("seed", SEEDS)
def test_maxpool_forward_and_backward_on_views(seed):
    rng = np.random.default_rng(3000 + seed)
    shape, ph, pw, stride, pad = random_view_shape(rng, pool_window)
    dtype = rng.choice([np.float16, np.float32, np.float64])
    # few distinct values: ties, where the first maximum in the window must win
    x = random_view(rng, shape, dtype, rng.integers(-3, 4, size=shape))
    out, argmax = kernels.maxpool_forward(x, ph, pw, stride, pad)
    want_out, want_arg = ref.maxpool_forward(x.copy(), ph, pw, stride, pad)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(argmax, want_arg)

    dout = random_view(rng, out.shape, dtype)
    arg_view = random_view(rng, argmax.shape, rng.choice([np.int32, np.int64]), want_arg)
    np.testing.assert_allclose(
        kernels.maxpool_backward(dout, arg_view, shape, ph, pw, stride, pad),
        ref.maxpool_backward(dout.copy(), arg_view.copy(), shape, ph, pw, stride, pad),
        # float16: the reference sums overlapping windows in float16, the kernel in float32
        **({"rtol": 4e-3, "atol": 4e-3} if dtype == np.float16 else tolerance(dtype)),
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_forward_and_backward_on_views(seed):
    rng = np.random.default_rng(4000 + seed)
    ndim = int(rng.integers(1, 5))
    shape = tuple(int(rng.choice([1, 1, 2, 3, 7])) for _ in range(ndim))
    dtype = rng.choice([np.float16, np.float32, np.float64])
    x = random_view(rng, shape, dtype)
    out = kernels.relu_forward(x)
    assert out.shape == shape and out.dtype == dtype
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    dout = random_view(rng, shape, dtype)
    out_view = random_view(rng, shape, dtype, out)
    np.testing.assert_array_equal(kernels.relu_backward(dout, out_view),
                                  np.where(out_view <= 0, 0, dout))


def test_relu_reads_the_rows_of_a_view_with_size_one_axes():
    # the size-1 axes' strides are not those of the rows: reading by them gave zeros
    b = np.arange(1.0, 25.0).reshape(3, 1, 2, 4)
    view = b[:, :, :1, :]
    np.testing.assert_array_equal(kernels.relu_forward(view), view)


def test_relu_on_a_transposed_view_stays_inside_the_array():
    # a size-1 axis with the batch's stride gave a row pitch 2000 times too long: the
    # kernel read far outside the array (a crash), so run it in a child process
    code = textwrap.dedent("""
        import numpy as np
        from xpnet import kernels
        base = np.random.default_rng(0).standard_normal((2, 2000, 1, 1030)).astype(np.float32)
        view = base.transpose(1, 2, 0, 3)[:, :, :1, :1024]
        assert np.array_equal(kernels.relu_forward(view), np.maximum(view, 0))
        print("ok")
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]

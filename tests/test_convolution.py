"""Convolution and the pooling layers: the book's semantics, gradient checks, dtypes, bad input."""

import numpy as np
import pytest
from kernel_contract import random_view

from xpnet.convolution import AvgPooling, Convolution, GlobalAvgPooling, Pooling
from xpnet.gradient import numerical_gradient, relative_error
from xpnet.kernels import reference as ref


def book_forward(x, W, b, stride, pad):
    """The book's Convolution.forward, on the reference im2col."""
    FN, C, FH, FW = W.shape
    N, _, H, Wd = x.shape
    out_h = (H + 2 * pad - FH) // stride + 1
    out_w = (Wd + 2 * pad - FW) // stride + 1
    col = ref.im2col(x, FH, FW, stride, pad)
    out = col @ W.reshape(FN, -1).T + b
    return out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)


CONV_CASES = [
    # x shape, W shape, stride, pad
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 0),
    ((2, 2, 6, 8), (3, 2, 3, 2), 1, 1),  # non-square filter, non-square input
    ((3, 1, 9, 7), (2, 1, 3, 3), 2, 1),  # stride 2
    ((1, 2, 5, 5), (2, 2, 5, 5), 1, 2),  # filter as large as the input
    ((2, 3, 4, 4), (5, 3, 1, 1), 1, 0),  # 1x1 convolution
]


@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES)
def test_convolution_forward_is_the_books(xs, ws, stride, pad):
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    conv = Convolution(W, b, stride=stride, pad=pad)
    out = conv.forward(x)
    np.testing.assert_allclose(out, book_forward(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)
    # the book's attributes
    assert conv.x is x
    np.testing.assert_array_equal(conv.col, ref.im2col(x, ws[2], ws[3], stride, pad))
    assert conv.col_W.shape == (ws[1] * ws[2] * ws[3], ws[0])


@pytest.mark.parametrize("xs, ws, stride, pad", CONV_CASES)
def test_convolution_gradients(xs, ws, stride, pad):
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    conv = Convolution(W, b, stride=stride, pad=pad)
    dout = rng.standard_normal(conv.forward(x).shape)
    dx = conv.backward(dout)
    assert dx.shape == x.shape and conv.dW.shape == W.shape and conv.db.shape == b.shape

    def loss(_):
        return float(np.sum(conv.forward(x) * dout))

    assert relative_error(numerical_gradient(loss, x), dx) < 1e-6
    assert relative_error(numerical_gradient(loss, W), conv.dW) < 1e-6
    assert relative_error(numerical_gradient(loss, b), conv.db) < 1e-6


POOL_CASES = [
    ((2, 3, 8, 8), 2, 2, 2, 0),
    ((2, 2, 7, 9), 3, 2, 1, 1),  # overlapping windows, padding, odd sizes
    ((1, 2, 9, 9), 3, 3, 2, 1),
    ((2, 1, 5, 7), 2, 2, 2, 0),  # the last row/column of windows does not fit: dropped
]


@pytest.mark.parametrize("xs, ph, pw, stride, pad", POOL_CASES)
def test_pooling_gradients(xs, ph, pw, stride, pad):
    rng = np.random.default_rng(2)
    # distinct values far apart (relative to h = 1e-4), so no perturbation moves an argmax
    x = rng.permutation(np.prod(xs)).reshape(xs) * 0.01
    pool = Pooling(ph, pw, stride=stride, pad=pad)
    out = pool.forward(x)
    np.testing.assert_array_equal(out, ref.maxpool_forward(x, ph, pw, stride, pad)[0])
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)

    def loss(_):
        return float(np.sum(pool.forward(x) * dout))

    assert relative_error(numerical_gradient(loss, x), dx) < 1e-6


def test_pooling_default_stride_and_attributes():
    pool = Pooling(2, 2)
    x = np.random.default_rng(3).standard_normal((2, 3, 6, 6))
    assert pool.forward(x).shape == (2, 3, 3, 3)  # stride 2 by default
    assert pool.x is x and pool.arg_max.shape == (2, 3, 3, 3)
    assert pool.arg_max.dtype == np.int32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_compute_in_the_dtype_given(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 6, 6)).astype(dtype)
    W = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    conv, pool = Convolution(W, b, pad=1), Pooling(2, 2, stride=2)
    out = pool.forward(conv.forward(x))
    assert out.dtype == dtype  # input and parameters agree: no promotion
    dx = conv.backward(pool.backward(np.ones_like(out)))
    assert dx.dtype == dtype and conv.dW.dtype == dtype and conv.db.dtype == dtype


def test_float16_inference_is_close_to_float32():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 10, 10))
    W, b = 0.2 * rng.standard_normal((6, 3, 3, 3)), 0.1 * rng.standard_normal(6)
    y32 = Pooling(2, 2).forward(Convolution(W.astype(np.float32), b.astype(np.float32),
                                            pad=1).forward(x.astype(np.float32)))
    y16 = Pooling(2, 2).forward(Convolution(W.astype(np.float16), b.astype(np.float16),
                                            pad=1).forward(x.astype(np.float16)))
    assert y16.dtype == np.float16
    np.testing.assert_allclose(y16, y32, rtol=1e-2, atol=1e-2)


def test_weights_are_held_by_reference():
    """An optimizer updating params in place is seen by the layer (the book relies on it)."""
    rng = np.random.default_rng(6)
    W, b = rng.standard_normal((2, 1, 3, 3)), np.zeros(2)
    conv = Convolution(W, b)
    x = rng.standard_normal((1, 1, 5, 5))
    before = conv.forward(x)
    W *= 2.0
    b += 1.0
    np.testing.assert_allclose(conv.forward(x), 2.0 * before + 1.0, rtol=1e-12)


@pytest.mark.parametrize("make", [
    lambda rng: Convolution(rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), pad=1),
    lambda rng: Pooling(2, 2, stride=2),
    lambda rng: AvgPooling(3, 3, stride=2, pad=1),
    lambda rng: GlobalAvgPooling(),
], ids=["Convolution", "Pooling", "AvgPooling", "GlobalAvgPooling"])
def test_a_nested_list_is_taken_as_its_array(make):
    """As Relu and Affine take Python lists (xpnet.layers.check_input), so do the 4-D
    layers: the same output and gradient as for the array, not an error about shape ()."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((2, 3, 5, 5))
    from_list, from_array = make(np.random.default_rng(1)), make(np.random.default_rng(1))
    out = from_list.forward(x.tolist())
    np.testing.assert_array_equal(out, from_array.forward(x))
    dout = rng.standard_normal(out.shape)
    np.testing.assert_array_equal(from_list.backward(dout), from_array.backward(dout))
    with pytest.raises(ValueError, match=r"a 4-D input \(N, C, H, W\), got shape \(2, 3\)"):
        make(np.random.default_rng(1)).forward([[1.0] * 3] * 2)


def test_convolution_bad_input():
    conv = Convolution(np.zeros((4, 3, 3, 3)), np.zeros(4), stride=2, pad=0)
    with pytest.raises(ValueError, match=r"Convolution: expected a 4-D input \(N, C, H, W\)"):
        conv.forward(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="has 2 channels, but the filters expect C=3"):
        conv.forward(np.zeros((1, 2, 9, 9)))
    with pytest.raises(ValueError, match="filter height 3 is larger than the padded input"):
        conv.forward(np.zeros((1, 3, 2, 9)))
    with pytest.raises(TypeError, match="expected a floating input.*got int64"):
        conv.forward(np.zeros((1, 3, 9, 9), dtype=np.int64))
    with pytest.raises(ValueError, match="input batch is empty"):
        conv.forward(np.zeros((0, 3, 9, 9)))
    with pytest.raises(ValueError, match=r"W must be 4-D \(FN, C, FH, FW\)"):
        Convolution(np.zeros((4, 27)), np.zeros(4))
    with pytest.raises(ValueError, match=r"b must have shape \(4,\)"):
        Convolution(np.zeros((4, 3, 3, 3)), np.zeros(3))
    with pytest.raises(RuntimeError, match="before forward"):
        Convolution(np.zeros((4, 3, 3, 3)), np.zeros(4)).backward(np.zeros((1, 4, 1, 1)))


def test_pooling_bad_input():
    pool = Pooling(3, 3, stride=1)
    with pytest.raises(ValueError, match=r"Pooling: expected a 4-D input"):
        pool.forward(np.zeros((2, 9)))
    with pytest.raises(ValueError, match="window is larger than the padded input height 2"):
        pool.forward(np.zeros((1, 1, 2, 5)))
    with pytest.raises(TypeError, match="Pooling: expected a floating input"):
        pool.forward(np.zeros((1, 1, 5, 5), dtype=np.int32))


# ----------------------------------------------------------------------------- average pooling


@pytest.mark.parametrize("xs, ph, pw, stride, pad", POOL_CASES)
def test_avg_pooling_gradients(xs, ph, pw, stride, pad):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xs)
    pool = AvgPooling(ph, pw, stride=stride, pad=pad)
    out = pool.forward(x)
    np.testing.assert_array_equal(out, ref.avgpool_forward(x, ph, pw, stride, pad))
    dout = rng.standard_normal(out.shape)
    dx = pool.backward(dout)
    assert dx.shape == x.shape and dx.dtype == np.float64

    def loss(_):
        return float(np.sum(pool.forward(x) * dout))

    assert relative_error(numerical_gradient(loss, x), dx) < 1e-6


@pytest.mark.parametrize("seed", range(12))
def test_avg_pooling_on_random_shapes_and_views(seed):
    """Size-1 axes, transposes, negative strides, Fortran order: forward, and the gradient
    checked numerically (float64) on the view itself."""
    rng = np.random.default_rng(600 + seed)
    N, C = (int(rng.choice([1, 1, 2, 3])) for _ in range(2))
    H, W = (int(rng.integers(1, 8)) for _ in range(2))
    ph, pw = int(rng.integers(1, min(H, 3) + 1)), int(rng.integers(1, min(W, 3) + 1))
    stride, pad = int(rng.integers(1, 3)), int(rng.integers(0, min(ph, pw)))
    x = random_view(rng, (N, C, H, W), np.float64)
    pool = AvgPooling(ph, pw, stride=stride, pad=pad)
    out = pool.forward(x)
    np.testing.assert_array_equal(out, ref.avgpool_forward(x.copy(), ph, pw, stride, pad))
    dout = random_view(rng, out.shape, np.float64)
    dx = pool.backward(dout)
    xc = x.copy()  # numerical_gradient perturbs its argument: a writable copy

    def loss(_):
        return float(np.sum(pool.forward(xc) * dout))

    assert relative_error(numerical_gradient(loss, xc), dx) < 1e-6


@pytest.mark.parametrize("xs", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 7, 1)])
def test_global_avg_pooling_reduces_each_plane_to_its_mean(xs):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(xs)
    gap = GlobalAvgPooling()
    out = gap.forward(x)
    assert out.shape == xs[:2]
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)), rtol=1e-13, atol=1e-15)
    dout = rng.standard_normal(out.shape)
    dx = gap.backward(dout)
    np.testing.assert_allclose(dx, np.broadcast_to(dout[:, :, None, None] / (xs[2] * xs[3]), xs),
                               rtol=1e-15)

    def loss(_):
        return float(np.sum(gap.forward(x) * dout))

    assert relative_error(numerical_gradient(loss, x), dx) < 1e-6


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_avg_pooling_layers_keep_the_dtype(dtype):
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6)).astype(dtype)
    for layer, dout_shape in ((AvgPooling(2, 2), (2, 3, 3, 3)), (GlobalAvgPooling(), (2, 3))):
        assert layer.forward(x).dtype == dtype
        assert layer.backward(np.ones(dout_shape, dtype)).dtype == dtype


def test_avg_pooling_bad_input():
    with pytest.raises(ValueError, match="AvgPooling: stride must be >= 1"):
        AvgPooling(2, 2, stride=0)
    with pytest.raises(TypeError, match="AvgPooling: pool_h must be an integer"):
        AvgPooling(2.5, 2)
    with pytest.raises(RuntimeError, match="before forward"):
        AvgPooling(2, 2).backward(np.zeros((1, 1, 1, 1)))
    with pytest.raises(RuntimeError, match="before forward"):
        GlobalAvgPooling().backward(np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"AvgPooling: expected a 4-D input"):
        AvgPooling(2, 2).forward(np.zeros((2, 9)))
    with pytest.raises(TypeError, match="GlobalAvgPooling: expected a floating input"):
        GlobalAvgPooling().forward(np.zeros((1, 1, 2, 2), np.int64))
    gap = GlobalAvgPooling()
    gap.forward(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"dout of shape \(3, 2\) .*expected \(2, 3\)"):
        gap.backward(np.zeros((3, 2)))

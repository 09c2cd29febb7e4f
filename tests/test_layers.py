"""Chapters 5-6: the layers, gradient-checked in float64 against numerical_gradient."""

import numpy as np
import pytest

import xpnet
from xpnet.functions import softmax
from xpnet.gradient import numerical_gradient, relative_error
from xpnet.layers import (
    AddLayer,
    Affine,
    BatchNormalization,
    Dropout,
    MulLayer,
    Relu,
    Sigmoid,
    SoftmaxWithLoss,
)

SEEDS = [0, 1, 2]
TOL = 1e-6


def grad_check(layer, x, params=(), forward=None, seed=0):
    """Compare backward() with numerical gradients of sum(forward(x) * dout).

    Returns the relative errors {'x': ..., 'W': ...} for x and each named parameter.
    """
    forward = forward or (lambda: layer.forward(x))
    dout = np.random.default_rng(seed + 100).standard_normal(forward().shape)

    def f(_):
        return np.sum(forward() * dout)

    numeric = {"x": numerical_gradient(f, x)}
    for name in params:
        numeric[name] = numerical_gradient(f, getattr(layer, name))
    forward()
    analytic = {"x": layer.backward(dout)}
    for name in params:
        analytic[name] = getattr(layer, "d" + name)
        assert analytic[name].shape == getattr(layer, name).shape
    assert analytic["x"].shape == x.shape
    return {k: relative_error(numeric[k], analytic[k]) for k in numeric}


def assert_small(errors):
    assert max(errors.values()) < TOL, errors


def random_shape(rng, ndim):
    return tuple(int(n) for n in rng.integers(2, 5, size=ndim))


# ---------------------------------------------------------------------------
# Chapter 5.4: the book's shopping examples
# ---------------------------------------------------------------------------


def test_buy_apple_book_example():
    apple, apple_num, tax = 100, 2, 1.1
    mul_apple_layer, mul_tax_layer = MulLayer(), MulLayer()
    apple_price = mul_apple_layer.forward(apple, apple_num)
    price = mul_tax_layer.forward(apple_price, tax)
    dapple_price, dtax = mul_tax_layer.backward(1)
    dapple, dapple_num = mul_apple_layer.backward(dapple_price)
    assert price == pytest.approx(220.0)
    assert dapple == pytest.approx(2.2)
    assert dapple_num == pytest.approx(110.0)
    assert dtax == 200


def test_buy_apple_orange_book_example():
    apple, apple_num, orange, orange_num, tax = 100, 2, 150, 3, 1.1
    mul_apple, mul_orange, add, mul_tax = MulLayer(), MulLayer(), AddLayer(), MulLayer()
    apple_price = mul_apple.forward(apple, apple_num)
    orange_price = mul_orange.forward(orange, orange_num)
    all_price = add.forward(apple_price, orange_price)
    price = mul_tax.forward(all_price, tax)
    dall_price, dtax = mul_tax.backward(1)
    dapple_price, dorange_price = add.backward(dall_price)
    dorange, dorange_num = mul_orange.backward(dorange_price)
    dapple, dapple_num = mul_apple.backward(dapple_price)
    assert price == pytest.approx(715.0)
    assert (dapple_num, dapple) == (pytest.approx(110.0), pytest.approx(2.2))
    assert (dorange, dorange_num) == (pytest.approx(3.3), pytest.approx(165.0))
    assert dtax == 650


@pytest.mark.parametrize("seed", SEEDS)
def test_mul_add_layers_gradients_with_broadcasting(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4))
    y = rng.standard_normal(4)  # broadcast over rows: its gradient is summed over them
    dout = rng.standard_normal((3, 4))
    for layer in (MulLayer(), AddLayer()):
        layer.forward(x, y)
        dx, dy = layer.backward(dout)
        fx = numerical_gradient(lambda _, lay=layer: np.sum(lay.forward(x, y) * dout), x)
        fy = numerical_gradient(lambda _, lay=layer: np.sum(lay.forward(x, y) * dout), y)
        assert dx.shape == x.shape and dy.shape == y.shape
        assert relative_error(dx, fx) < TOL and relative_error(dy, fy) < TOL


# ---------------------------------------------------------------------------
# Gradient checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_gradient(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(random_shape(rng, 3))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink, where h=1e-4 straddles 0
    assert_small(grad_check(Relu(), x, seed=seed))


def test_relu_does_not_modify_dout():
    layer = Relu()
    layer.forward(np.array([-1.0, 2.0]))
    dout = np.array([5.0, 6.0])
    np.testing.assert_array_equal(layer.backward(dout), [0.0, 6.0])
    np.testing.assert_array_equal(dout, [5.0, 6.0])


@pytest.mark.parametrize("seed", SEEDS)
def test_sigmoid_gradient(seed):
    rng = np.random.default_rng(seed)
    x = 2 * rng.standard_normal(random_shape(rng, 2))
    assert_small(grad_check(Sigmoid(), x, seed=seed))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ndim", [1, 2, 4])
def test_affine_gradient_any_rank(seed, ndim):
    rng = np.random.default_rng(seed)
    in_shape = random_shape(rng, ndim)  # (D,), (N, D) or (N, C, H, W)
    D = in_shape[0] if ndim == 1 else int(np.prod(in_shape[1:]))
    M = int(rng.integers(2, 6))
    layer = Affine(rng.standard_normal((D, M)), rng.standard_normal(M))
    x = rng.standard_normal(in_shape)
    out = layer.forward(x)
    assert out.shape == ((M,) if ndim == 1 else (in_shape[0], M))
    assert_small(grad_check(layer, x, params=("W", "b"), seed=seed))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("targets", ["labels", "onehot"])
def test_softmax_with_loss_gradient(seed, targets):
    rng = np.random.default_rng(seed)
    N, C = (int(n) for n in rng.integers(2, 7, size=2))
    x = 3 * rng.standard_normal((N, C))
    labels = rng.integers(0, C, size=N)
    t = labels if targets == "labels" else np.eye(C)[labels]
    layer = SoftmaxWithLoss()
    loss = layer.forward(x, t)
    assert loss == pytest.approx(-np.mean(np.log(softmax(x)[np.arange(N), labels])), rel=1e-12)
    num = numerical_gradient(lambda _: layer.forward(x, t), x)
    layer.forward(x, t)
    dx = layer.backward()
    assert relative_error(dx, num) < TOL
    np.testing.assert_allclose(layer.backward(2.5), 2.5 * dx)


def test_softmax_with_loss_single_sample():
    x = np.array([0.3, 2.9, 4.0])
    for t in (2, np.array([0.0, 0.0, 1.0])):
        layer = SoftmaxWithLoss()
        num = numerical_gradient(lambda _, lay=layer, t=t: lay.forward(x, t), x)
        layer.forward(x, t)
        dx = layer.backward()
        assert dx.shape == (3,) and relative_error(dx, num) < TOL


@pytest.mark.parametrize("seed", SEEDS)
def test_dropout_gradient_with_fixed_mask(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(random_shape(rng, 2))
    layer = Dropout(0.4)

    def forward():
        xpnet.seed(1234)  # the same mask on every call
        return layer.forward(x, train_flg=True)

    assert_small(grad_check(layer, x, forward=forward, seed=seed))
    assert 0 < layer.mask.sum() < layer.mask.size


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("layout", ["2d", "4d-per-channel", "4d-book"])
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_gradient(seed, layout, train):
    rng = np.random.default_rng(seed)
    if layout == "2d":
        x_shape, D = (5, 4), 4
    else:
        x_shape = (3, 2, 3, 2)
        D = 2 if layout == "4d-per-channel" else 12
    x = 1.5 + 2 * rng.standard_normal(x_shape)
    layer = BatchNormalization(
        1 + 0.1 * rng.standard_normal(D),
        rng.standard_normal(D),
        running_mean=rng.standard_normal(D),
        running_var=rng.random(D) + 0.5,
    )
    errors = grad_check(
        layer, x, params=("gamma", "beta"), forward=lambda: layer.forward(x, train), seed=seed
    )
    assert_small(errors)


def test_batchnorm_statistics_per_channel_and_book_style():
    rng = np.random.default_rng(5)
    x = 3 + 2 * rng.standard_normal((8, 3, 4, 4))
    per_channel = BatchNormalization(np.ones(3), np.zeros(3))
    y = per_channel.forward(x)
    assert y.shape == x.shape and y.flags.c_contiguous
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, atol=1e-4)
    assert per_channel.running_mean.shape == (3,)
    np.testing.assert_allclose(per_channel.running_mean, 0.1 * x.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(per_channel.running_var, 0.1 * x.var(axis=(0, 2, 3)))

    book = BatchNormalization(np.ones(48), np.zeros(48))
    yb = book.forward(x)
    np.testing.assert_allclose(yb.reshape(8, -1).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(yb.reshape(8, -1).var(axis=0), 1, atol=1e-4)
    assert book.running_mean.shape == (48,)


def test_batchnorm_running_statistics_and_eval_mode():
    rng = np.random.default_rng(6)
    running_mean, running_var = np.zeros(3), np.ones(3)
    layer = BatchNormalization(np.ones(3), np.zeros(3), 0.8, running_mean, running_var)
    x = rng.standard_normal((10, 3))
    layer.forward(x, train_flg=True)
    # updated in place, so a model holding these arrays sees the new values
    assert layer.running_mean is running_mean
    np.testing.assert_allclose(running_mean, 0.2 * x.mean(axis=0))
    np.testing.assert_allclose(running_var, 0.8 + 0.2 * x.var(axis=0))
    y = layer.forward(x, train_flg=False)
    np.testing.assert_allclose(y, (x - running_mean) / np.sqrt(running_var + 1e-6))
    np.testing.assert_allclose(running_mean, 0.2 * x.mean(axis=0))  # eval leaves them


def test_dropout_train_and_test_modes():
    x = np.ones((200, 50))
    layer = Dropout(0.3)
    y = layer.forward(x, train_flg=True)
    kept = layer.mask.mean()
    assert 0.65 < kept < 0.75
    np.testing.assert_array_equal(y, layer.mask.astype(float))
    np.testing.assert_array_equal(layer.backward(2 * x), 2 * layer.mask)
    np.testing.assert_allclose(layer.forward(x, train_flg=False), 0.7)
    np.testing.assert_allclose(layer.backward(x), 0.7)
    # the mask comes from xpnet's seeded source
    xpnet.seed(7)
    a = Dropout().forward(x)
    xpnet.seed(7)
    b = Dropout().forward(x)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_layers_keep_their_input_dtype(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 3, 3)).astype(dtype)
    W = rng.standard_normal((18, 5)).astype(dtype)
    b = np.zeros(5, dtype=dtype)
    g2, b2 = np.ones(2, dtype=dtype), np.zeros(2, dtype=dtype)
    layers = [
        (Relu(), lambda lay: lay.forward(x)),
        (Sigmoid(), lambda lay: lay.forward(x)),
        (Dropout(), lambda lay: lay.forward(x)),
        (BatchNormalization(g2, b2), lambda lay: lay.forward(x)),
        (Affine(W, b), lambda lay: lay.forward(x)),
    ]
    for layer, fwd in layers:
        out = fwd(layer)
        assert out.dtype == dtype, type(layer).__name__
        assert layer.backward(np.ones_like(out)).dtype == dtype, type(layer).__name__
    aff = layers[-1][0]
    assert aff.dW.dtype == dtype and aff.db.dtype == dtype
    bn = layers[3][0]
    assert bn.dgamma.dtype == dtype and bn.running_mean.dtype == dtype
    assert BatchNormalization(g2, b2).forward(x, train_flg=False).dtype == dtype
    sm = SoftmaxWithLoss()
    assert sm.forward(x[:, 0, 0], np.array([0, 1, 2, 0])).dtype == dtype
    assert sm.backward().dtype == dtype


def test_float16_affine_is_the_float32_product_rounded_once():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 300)).astype(np.float16)
    W = (0.05 * rng.standard_normal((300, 7))).astype(np.float16)
    b = rng.standard_normal(7).astype(np.float16)
    layer = Affine(W, b)
    out = layer.forward(x)
    x32, W32 = x.astype(np.float32), W.astype(np.float32)
    np.testing.assert_array_equal(out, (x32 @ W32).astype(np.float16) + b)
    dout = rng.standard_normal((8, 7)).astype(np.float16)
    dx = layer.backward(dout)
    np.testing.assert_array_equal(dx, (dout.astype(np.float32) @ W32.T).astype(np.float16))
    np.testing.assert_array_equal(layer.dW, (x32.T @ dout.astype(np.float32)).astype(np.float16))


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


def test_affine_feature_mismatch_names_both_shapes():
    layer = Affine(np.zeros((784, 50)), np.zeros(50))
    with pytest.raises(ValueError, match=r"\(100, 783\).*783.*\(784, 50\).*784"):
        layer.forward(np.zeros((100, 783)))
    with pytest.raises(ValueError, match=r"b of shape \(49,\).*\(784, 50\)"):
        Affine(np.zeros((784, 50)), np.zeros(49)).forward(np.zeros((1, 784)))
    with pytest.raises(ValueError, match="W must be 2-D"):
        Affine(np.zeros(784), np.zeros(1)).forward(np.zeros((1, 784)))


@pytest.mark.parametrize(
    "name, make",
    [
        ("Relu", lambda: Relu()),
        ("Sigmoid", lambda: Sigmoid()),
        ("Affine", lambda: Affine(np.zeros((3, 2)), np.zeros(2))),
        ("Dropout", lambda: Dropout()),
        ("BatchNormalization", lambda: BatchNormalization(np.ones(3), np.zeros(3))),
    ],
)
def test_integer_and_empty_input(name, make):
    with pytest.raises(TypeError, match=rf"{name}: x must be a floating array.*int64"):
        make().forward(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=rf"{name}: x of shape \(0, 3\) is empty"):
        make().forward(np.ones((0, 3)))
    with pytest.raises(RuntimeError, match=rf"{name}: backward\(\) was called before forward"):
        make().backward(np.ones((2, 2)))


def test_backward_rejects_dout_of_the_wrong_shape():
    layer = Relu()
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"Relu: dout of shape \(3, 2\).*\(2, 3\)"):
        layer.backward(np.ones((3, 2)))
    aff = Affine(np.zeros((3, 2)), np.zeros(2))
    aff.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"Affine: dout of shape \(4, 3\).*\(4, 2\)"):
        aff.backward(np.ones((4, 3)))


def test_softmax_with_loss_bad_targets():
    layer = SoftmaxWithLoss()
    x = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"SoftmaxWithLoss.*\[0, 4\).*from 0 to 7"):
        layer.forward(x, np.array([0, 1, 7]))
    with pytest.raises(ValueError, match=r"SoftmaxWithLoss: t of shape \(2,\).*\(3, 4\)"):
        layer.forward(x, np.array([0, 1]))
    with pytest.raises(TypeError, match="SoftmaxWithLoss: x must be a floating array"):
        layer.forward(np.zeros((3, 4), dtype=np.int32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="empty"):
        layer.forward(np.zeros((0, 4)), np.zeros(0, dtype=int))


def test_batchnorm_and_dropout_bad_configuration():
    with pytest.raises(ValueError, match=r"x of shape \(2, 5\).*gamma with 4 entries.*\(N, 4\)"):
        BatchNormalization(np.ones(4), np.zeros(4)).forward(np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*5 entries.*per-channel"):
        BatchNormalization(np.ones(5), np.zeros(5)).forward(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="gamma of shape \\(4,\\) and beta of shape \\(3,\\)"):
        BatchNormalization(np.ones(4), np.zeros(3)).forward(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"running_mean of shape \(3,\).*4 entries"):
        BatchNormalization(np.ones(4), np.zeros(4), 0.9, np.zeros(3), np.ones(3)).forward(
            np.ones((2, 4))
        )
    with pytest.raises(ValueError, match=r"dropout_ratio must be in \[0, 1\), got 1.5"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="momentum"):
        BatchNormalization(np.ones(4), np.zeros(4), momentum=2)


def test_convolution_and_pooling_are_re_exported():
    import xpnet.convolution
    import xpnet.layers

    assert xpnet.layers.Convolution is xpnet.convolution.Convolution
    assert xpnet.layers.Pooling is xpnet.convolution.Pooling
    assert {"Convolution", "Pooling", "Affine", "BatchNormalization"} <= set(xpnet.layers.__all__)
    assert {"AvgPooling", "GlobalAvgPooling"} <= set(xpnet.layers.__all__)
    assert xpnet.layers.AvgPooling is xpnet.convolution.AvgPooling


def test_affine_non_contiguous_input_and_in_place_parameter_updates():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 4, 5, 2)).transpose(0, 3, 2, 1)  # (3, 2, 5, 4), a view
    assert not x.flags.c_contiguous
    W, b = rng.standard_normal((40, 6)), rng.standard_normal(6)
    layer = Affine(W, b)
    np.testing.assert_allclose(layer.forward(x), x.reshape(3, -1) @ W + b)
    assert_small(grad_check(layer, x, params=("W", "b")))
    W -= 1.0  # an optimizer's in-place update is seen by the layer
    np.testing.assert_allclose(layer.forward(x), x.reshape(3, -1) @ W + b)


def test_relu_keeps_the_book_mask_and_a_scalar_dout_broadcasts():
    x = np.array([[-1.0, 0.0, 2.0], [np.nan, -0.0, 3.0]], dtype=np.float32)
    layer = Relu()
    out = layer.forward(x)
    np.testing.assert_array_equal(layer.mask, x <= 0)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    np.testing.assert_array_equal(layer.backward(1.0), np.where(x <= 0, 0, 1).astype(np.float32))
    assert layer.backward(np.float32(2)).dtype == np.float32
    scalar = Relu()
    assert scalar.forward(np.array(-2.0)).shape == ()
    assert scalar.backward(1.0).shape == () and scalar.backward(1.0) == 0


# ---------------------------------------------------------------------------
# What the book's scripts pass: label columns, scalar biases, strides that do not tile,
# float32 images with float64 weights
# ---------------------------------------------------------------------------


def test_softmax_with_loss_takes_a_column_of_labels():
    """The book's ch. 7 gradient check passes t of shape (N, 1)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 5))
    labels = np.array([3, 0, 4, 1])
    flat, column = SoftmaxWithLoss(), SoftmaxWithLoss()
    assert column.forward(x, labels.reshape(4, 1)) == flat.forward(x, labels)
    np.testing.assert_array_equal(column.backward(), flat.backward())
    one = SoftmaxWithLoss()
    assert one.forward(x[:1], np.array([[3]])) == pytest.approx(-np.log(softmax(x[0])[3]))
    from xpnet.functions import cross_entropy_error

    y = softmax(x)
    assert cross_entropy_error(y, labels.reshape(4, 1)) == cross_entropy_error(y, labels)


def test_label_shapes_that_fit_nothing_are_still_refused():
    x = np.zeros((4, 5))
    for t in (np.zeros((4, 2), dtype=int), np.zeros((1, 4), dtype=int), np.zeros((4, 1, 1), int)):
        with pytest.raises(ValueError, match=r"SoftmaxWithLoss: t of shape"):
            SoftmaxWithLoss().forward(x, t)
    with pytest.raises(ValueError, match=r"t of shape \(4, 1\)"):  # float: not labels
        SoftmaxWithLoss().forward(x, np.zeros((4, 1)))


def _book_conv(x, W, b, stride, pad):
    """The book's Convolution.forward on the reference (slicing) im2col, floored sizes."""
    from xpnet.kernels import reference

    FN, C, FH, FW = W.shape
    N, _, H, Wd = x.shape
    out_h, out_w = 1 + (H + 2 * pad - FH) // stride, 1 + (Wd + 2 * pad - FW) // stride
    out = np.dot(reference.im2col(x, FH, FW, stride, pad), W.reshape(FN, -1).T) + b
    return out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)


def test_convolution_takes_a_scalar_bias():
    """The book's ch. 7 apply_filter.py builds Convolution(W, 0)."""
    from xpnet.layers import Convolution

    rng = np.random.default_rng(12)
    x, W = rng.standard_normal((1, 1, 6, 6)), rng.standard_normal((3, 1, 3, 3))
    for b in (0, 0.5, np.float64(-1.0), np.array(2.0)):
        conv = Convolution(W, b)
        np.testing.assert_allclose(conv.forward(x), _book_conv(x, W, b, 1, 0), rtol=1e-12)
        conv.backward(np.ones((1, 3, 4, 4)))
        np.testing.assert_allclose(conv.db, np.full(3, 16.0))  # per filter, as the book's
    with pytest.raises(ValueError, match=r"Convolution: b must have shape \(3,\).*or be a scalar"):
        Convolution(W, np.zeros(2))


@pytest.mark.parametrize("size, stride, pad", [(8, 2, 0), (7, 3, 1), (9, 4, 0)])
def test_convolution_floors_strides_that_do_not_tile(size, stride, pad):
    from xpnet.layers import Convolution

    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 2, size, size + 1))
    W, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    conv = Convolution(W, b, stride=stride, pad=pad)
    out = conv.forward(x)
    np.testing.assert_allclose(out, _book_conv(x, W, b, stride, pad), rtol=1e-12, atol=1e-12)
    assert_small(grad_check(conv, x, params=("W", "b")))


def test_window_arguments_name_the_layer_and_argument():
    from xpnet.layers import Convolution, Pooling

    W, b = np.zeros((2, 1, 3, 3)), np.zeros(2)
    with pytest.raises(TypeError, match=r"Convolution: stride must be an integer, got 1\.5"):
        Convolution(W, b, stride=1.5)
    with pytest.raises(TypeError, match=r"Convolution: pad must be an integer, got 0\.5"):
        Convolution(W, b, pad=0.5)
    with pytest.raises(TypeError, match=r"Convolution: stride must be one integer.*\(1, 2\)"):
        Convolution(W, b, stride=(1, 2))
    with pytest.raises(ValueError, match=r"Convolution: stride must be >= 1, got 0"):
        Convolution(W, b, stride=0)
    with pytest.raises(ValueError, match=r"Convolution: pad must be >= 0, got -1"):
        Convolution(W, b, pad=-1)
    assert Convolution(W, b, stride=np.int64(2)).stride == 2
    with pytest.raises(TypeError, match=r"Pooling: pool_h must be an integer, got 2\.5"):
        Pooling(2.5, 2)
    with pytest.raises(ValueError, match=r"Pooling: pool_w must be >= 1, got 0"):
        Pooling(2, 0)
    with pytest.raises(TypeError, match=r"Pooling: stride must be one integer.*\[2, 2\]"):
        Pooling(2, 2, stride=[2, 2])
    with pytest.raises(ValueError, match=r"Pooling: pad must be >= 0, got -2"):
        Pooling(2, 2, pad=-2)


def test_convolution_promotes_input_and_parameters_like_numpy():
    """float32 images with the book's float64 weights compute in float64, as the book's
    layers (and xpnet's Affine) do."""
    from xpnet.layers import Convolution

    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    W, b = rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    conv = Convolution(W, b, pad=1)
    out = conv.forward(x)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, _book_conv(x.astype(np.float64), W, b, 1, 1), rtol=1e-13)
    dx = conv.backward(np.ones_like(out))
    assert dx.dtype == np.float64 and conv.dW.dtype == np.float64
    half = Convolution(W.astype(np.float32), b.astype(np.float32), pad=1)
    assert half.forward(x).dtype == np.float32  # matching dtypes: no promotion

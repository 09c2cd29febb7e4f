"""The representative CNNs (book 7.7, 8.2): SpatialBatchNormalization, ResidualBlock and
InceptionBlock gradient-checked in float64; the 1x1 convolution's fast path against
im2col; LeNet, VGGNet, MiniGoogLeNet and ResNet gradient-checked on tiny inputs, their
shapes, their files and checkpoints (nested blocks, running statistics), the CLI builds
them by name, a short training run lowers the loss; on the GPU, the float32 forward pass
against the CPU (their gradients are compared in float64 in ``tests/test_gpu.py``), and
here on the CPU the ``xpnet.parity`` harness run on the nested networks."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

import xpnet
from xpnet import backend, convolution, models
from xpnet.cli import _model_builder, build_parser
from xpnet.gradient import numerical_gradient
from xpnet.layers import (
    Convolution,
    InceptionBlock,
    Pooling,
    Relu,
    ResidualBlock,
    SpatialBatchNormalization,
)
from xpnet.optimizers import Adam
from xpnet.parity import _max_rel, same_dropout_masks, step_parity
from xpnet.trainer import CHECKPOINT_NAME, Trainer
from xpnet.util import col2im, im2col

RNG = np.random.default_rng(18)


def rand(*shape):
    return RNG.standard_normal(shape)


def check_layer(layer, x, params, train_flg=True, atol=1e-7):
    """backward's dx and d<name> against central differences of sum(forward(x) * dout)."""
    takes = getattr(layer, "takes_train_flg", False)

    def forward():
        return layer.forward(x, train_flg) if takes else layer.forward(x)

    dout = rand(*forward().shape)
    dx = layer.backward(dout)
    grads = {name: getattr(owner, "d" + attr) for name, (owner, attr) in params.items()}

    def f(_):
        return float((forward() * dout).sum())

    np.testing.assert_allclose(dx, numerical_gradient(f, x), atol=atol, err_msg="dx")
    for name, (owner, attr) in params.items():
        np.testing.assert_allclose(grads[name], numerical_gradient(f, getattr(owner, attr)),
                                   atol=atol, err_msg=name)


def conv(cin, cout, size, stride=1, bias=False):
    b = rand(cout) if bias else 0
    return Convolution(0.5 * rand(cout, cin, size, size), b, stride, size // 2)


def bn(channels):
    return SpatialBatchNormalization(1 + 0.1 * rand(channels), rand(channels))


# ---------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("train_flg", [True, False])
def test_spatial_batchnorm_gradient(train_flg):
    layer = bn(3)
    layer.running_var[...] = 0.5 + RNG.random(3)
    check_layer(layer, rand(2, 3, 4, 5), {"gamma": (layer, "gamma"), "beta": (layer, "beta")},
                train_flg)


def test_spatial_batchnorm_training_normalizes_each_channel_and_updates_running_stats():
    layer = bn(3)
    x = 3 + 2 * rand(4, 3, 5, 5)
    out = layer.forward(x, train_flg=True)
    per_channel = out.transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(per_channel.mean(axis=1), layer.beta, atol=1e-12)
    np.testing.assert_allclose(per_channel.std(axis=1), np.abs(layer.gamma), rtol=1e-5)
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(layer.running_mean, 0.1 * mean)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * var)


def test_spatial_batchnorm_inference_uses_running_stats():
    layer = bn(2)
    layer.running_mean[...] = [1.0, -2.0]
    layer.running_var[...] = [4.0, 0.25]
    before = (layer.running_mean.copy(), layer.running_var.copy())
    x = rand(3, 2, 4, 4)
    out = layer.forward(x, train_flg=False)
    m, v = before[0].reshape(1, 2, 1, 1), before[1].reshape(1, 2, 1, 1)
    expected = layer.gamma.reshape(1, 2, 1, 1) * (x - m) / np.sqrt(v + layer.eps)
    np.testing.assert_allclose(out, expected + layer.beta.reshape(1, 2, 1, 1), rtol=1e-12)
    np.testing.assert_array_equal(layer.running_mean, before[0])  # untouched
    np.testing.assert_array_equal(layer.running_var, before[1])


def test_spatial_batchnorm_refuses_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        bn(3).forward(rand(2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        bn(3).forward(rand(2, 3))


@pytest.mark.parametrize("train_flg", [True, False])
def test_spatial_batchnorm_of_one_channel_takes_python_floats(train_flg):
    """As the book's layers take Python floats as parameters: gamma=1.5, beta=0.25 for one
    channel gives the results of the one-entry arrays, forward and backward."""
    floats = SpatialBatchNormalization(1.5, 0.25)
    arrays = SpatialBatchNormalization(np.array([1.5]), np.array([0.25]))
    x, dout = rand(3, 1, 4, 4), rand(3, 1, 4, 4)
    np.testing.assert_array_equal(floats.forward(x, train_flg), arrays.forward(x, train_flg))
    np.testing.assert_array_equal(floats.backward(dout), arrays.backward(dout))
    for name in ("dgamma", "dbeta", "running_mean", "running_var"):
        np.testing.assert_array_equal(np.reshape(getattr(floats, name), 1),
                                      getattr(arrays, name), err_msg=name)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\) for gamma of 1 entries"):
        floats.forward(rand(2, 3, 4, 4))


@pytest.mark.parametrize("make", [
    lambda: ResidualBlock(conv(3, 3, 3), bn(3), conv(3, 3, 3), bn(3)),
    lambda: inception(3),
], ids=["ResidualBlock", "InceptionBlock"])
def test_blocks_take_a_nested_list_and_refuse_integers(make):
    """A nested list is its array (the identity shortcut adds x itself, so it must be an
    array by then); an integer array is the layers' one clear TypeError."""
    block = make()
    x = rand(2, 3, 5, 5)
    np.testing.assert_array_equal(block.forward(x.tolist()), copy.deepcopy(block).forward(x))
    name = type(block).__name__
    with pytest.raises(TypeError, match=f"{name}: x must be a floating array"):
        block.forward(np.ones((2, 3, 5, 5), dtype=np.int64))


def _block_params(block):
    return {f"{name}.{attr}": (layer, attr) for name, layer in block.sublayers().items()
            for attr in getattr(layer, "param_names", ()) if not np.isscalar(getattr(layer, attr))}


def test_residual_block_identity_gradient():
    block = ResidualBlock(conv(3, 3, 3), bn(3), conv(3, 3, 3), bn(3))
    check_layer(block, rand(2, 3, 5, 5), _block_params(block))


def test_residual_block_projection_gradient_reaches_both_branches():
    shortcut = [conv(3, 4, 1, stride=2), bn(4)]
    block = ResidualBlock(conv(3, 4, 3, stride=2), bn(4), conv(4, 4, 3), bn(4), shortcut)
    x = rand(2, 3, 6, 6)
    assert block.forward(x).shape == (2, 4, 3, 3) and block.output_shape((3, 6, 6)) == (4, 3, 3)
    check_layer(block, x, _block_params(block), atol=1e-6)
    assert np.abs(shortcut[0].dW).max() > 0 and np.abs(block.main[0].dW).max() > 0


def test_residual_block_without_projection_refuses_a_shape_change():
    block = ResidualBlock(conv(3, 4, 3, stride=2), bn(4), conv(4, 4, 3), bn(4))
    with pytest.raises(ValueError, match="projection shortcut"):
        block.forward(rand(2, 3, 6, 6))


def inception(cin=3):
    return InceptionBlock([
        [conv(cin, 2, 1, bias=True), Relu()],
        [conv(cin, 2, 1), bn(2), Relu(), conv(2, 3, 3), bn(3), Relu()],
        [conv(cin, 1, 1), bn(1), Relu(), conv(1, 2, 5), bn(2), Relu()],
        [Pooling(3, 3, stride=1, pad=1), conv(cin, 2, 1, bias=True)],
    ])


def test_inception_block_concatenates_branches_and_its_gradient_is_checked():
    block = inception()
    x = rand(2, 3, 5, 5)
    out = block.forward(x)
    assert out.shape == (2, 2 + 3 + 2 + 2, 5, 5) and block.output_shape((3, 5, 5)) == (9, 5, 5)
    first = block.branches[0]
    np.testing.assert_allclose(out[:, :2], first[1].forward(first[0].forward(x)))
    check_layer(block, x, _block_params(block), atol=1e-6)


def test_blocks_pass_train_flg_as_a_network_does():
    """Inner layers get ``train_flg`` when they declare it or, undeclared (the book's
    style), when their forward names it."""

    class Probe:
        def forward(self, x, train_flg=True):
            self.seen = train_flg
            return x

        def backward(self, dout):
            return dout

    probe = Probe()
    block = InceptionBlock([[probe], [bn(3)]])
    block.forward(rand(2, 3, 4, 4), train_flg=False)
    assert probe.seen is False


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_pointwise_convolution_path_equals_im2col(stride):
    """The 1x1 path (a GEMM per image, no im2col; taken on the GPU) against the book's
    im2col formulation, on NumPy; and Convolution's output, whichever path it takes."""
    W, b = rand(5, 4, 1, 1), rand(5)
    x = rand(3, 4, 7, 6)
    out = convolution._pointwise_forward(x, W.reshape(5, 4), b, stride)
    col = im2col(x, 1, 1, stride, 0)  # the book's path, written out
    oh, ow = (7 - 1) // stride + 1, (6 - 1) // stride + 1
    expected = (col @ W.reshape(5, -1).T + b).reshape(3, oh, ow, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(Convolution(W, b, stride).forward(x), expected, atol=1e-12)
    dout = rand(*out.shape)
    dx, dW, db = convolution._pointwise_backward(x, W.reshape(5, 4), dout, stride)
    dout2 = dout.transpose(0, 2, 3, 1).reshape(-1, 5)
    np.testing.assert_allclose(dW, (col.T @ dout2).T.reshape(5, 4), atol=1e-12)
    np.testing.assert_allclose(db, dout2.sum(axis=0), atol=1e-12)
    np.testing.assert_allclose(dx, col2im(dout2 @ W.reshape(5, -1), x.shape, 1, 1, stride, 0),
                               atol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        convolution._pointwise_backward(x, W.reshape(5, 4), dout[:, :, :1], stride)


def test_pointwise_convolution_path_keeps_float32():
    W2 = rand(4, 3).astype(np.float32)
    x = rand(2, 3, 5, 5).astype(np.float32)
    out = convolution._pointwise_forward(x, W2, np.zeros(4, np.float32), 2)
    dx, dW, db = convolution._pointwise_backward(x, W2, np.ones_like(out), 2)
    assert out.dtype == dx.dtype == dW.dtype == db.dtype == np.float32


# ---------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------

TINY = {
    "LeNet": dict(input_dim=(1, 12, 12), filter_nums=(2, 3), hidden_sizes=(5, 4)),
    "LeNet-sigmoid": dict(input_dim=(1, 12, 12), filter_nums=(2, 3), hidden_sizes=(5, 4),
                          activation="sigmoid"),
    "VGGNet": dict(input_dim=(1, 8, 8), width=2, depth=2, stages=2, hidden_size=5),
    "MiniGoogLeNet": dict(input_dim=(1, 8, 8), width=1),
    "ResNet": dict(input_dim=(1, 8, 8), width=2, blocks_per_stage=1),
}


def tiny(name, dtype="float64", seed=0):
    xpnet.seed(seed)
    return getattr(models, name.split("-")[0])(dtype=dtype, **TINY[name])


# A kink (ReLU at 0, two near-equal maxima of a pooling window) within the numerical step
# of a parameter spoils its central difference: these seeds draw weights and inputs
# that keep clear of them (MiniGoogLeNet's narrow branches meet them most often).
GRADIENT_SEEDS = {"MiniGoogLeNet": 3}


@pytest.mark.parametrize("name", sorted(TINY))
def test_network_gradient_matches_numerical_gradient(name):
    seed = GRADIENT_SEEDS.get(name, 0)
    net = tiny(name, seed=seed)
    x = np.random.default_rng(seed).random((2, *net.input_shape))
    t = np.array([1, 7])
    before = {k: v.copy() for k, v in {**net.params, **net.named_buffers()}.items()}
    xpnet.seed(seed)  # VGGNet's Dropout draws the same masks in both
    numerical = net.numerical_gradient(x, t)
    after = {**net.params, **net.named_buffers()}
    for key, value in before.items():  # the check leaves the network as it was
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    xpnet.seed(seed)
    grads = net.gradient(x, t)
    assert list(grads) == list(net.params)
    for key in net.params:
        np.testing.assert_allclose(grads[key], numerical[key], rtol=1e-5, atol=1e-6,
                                   err_msg=key)


@pytest.mark.parametrize("name", ["LeNet", "VGGNet", "MiniGoogLeNet", "ResNet"])
def test_default_networks_take_28x28_and_stay_float32(name):
    net = getattr(models, name)()
    x = RNG.random((2, 1, 28, 28)).astype(np.float32)
    assert net.predict(x).shape == (2, 10)
    grads = net.gradient(x, np.array([0, 9]))
    assert all(g.dtype == np.float32 for g in grads.values())
    assert name in models.__all__


def test_resnet_depth_and_layout():
    net = models.ResNet()
    assert net.depth == 20
    assert sum(isinstance(layer, ResidualBlock) for layer in net.layers.values()) == 9
    # 19 convolutions (3 projections aside) + 1 affine: the 20 of ResNet-20, plus 2
    # projection shortcuts (stages 2 and 3)
    weights = [k for k in net.params if k.startswith("W")]
    assert len(weights) == 20 + 2
    assert models.ResNet(depth=8).depth == 8
    with pytest.raises(ValueError, match="6n \\+ 2"):
        models.ResNet(depth=10)


@pytest.mark.parametrize("build, message", [
    (lambda: models.ResNet(depth=8, width=2.5), "ResNet: width must be an integer, got 2.5"),
    (lambda: models.ResNet(depth=20.0), "ResNet: depth must be an integer"),
    (lambda: models.ResNet(blocks_per_stage=0), "ResNet: blocks_per_stage must be >= 1"),
    (lambda: models.ResNet(width=0), "ResNet: width must be >= 1, got 0"),
    (lambda: models.MiniGoogLeNet(width=1.5), "MiniGoogLeNet: width must be an integer"),
    (lambda: models.VGGNet(depth=0), "VGGNet: depth must be >= 1, got 0"),
    (lambda: models.VGGNet(stages=2.0), "VGGNet: stages must be an integer"),
    (lambda: models.LeNet(filter_nums=(6, 16, 32)), "the filters of its 2 convolutions"),
    (lambda: models.LeNet(filter_nums=(6.5, 16)), "LeNet: filter_nums must be an integer"),
    (lambda: models.LeNet(filter_nums=(0, 16)), "LeNet: filter_nums must be >= 1"),
    (lambda: models.LeNet(hidden_sizes=(0, 84)), "LeNet: hidden_sizes must be >= 1"),
])
def test_a_size_keyword_that_is_no_count_is_one_clear_error(build, message):
    """Sizes are counts: 2.5 filters is an error, never truncated to 2 (as strides are)."""
    error = TypeError if "integer" in message else ValueError
    with pytest.raises(error, match=re.escape(message)):
        build()
    assert models.LeNet(hidden_sizes=()).params["W3"].shape == (16 * 5 * 5, 10)  # no hidden


def test_nested_buffers_are_named_and_filed():
    net = tiny("ResNet")
    buffers = net.named_buffers()
    assert "Block1.bn1.running_mean" in buffers and "Block2.shortcut2.running_var" in buffers
    gammas = [k for k in net.params if k.startswith("gamma")]
    files = net.state_arrays()
    for key in gammas:
        assert "running_mean" + key[5:] in files and "running_var" + key[5:] in files


def _train_steps(net, steps=3):
    opt = Adam(lr=0.01)
    x = RNG.random((4, *net.input_shape))
    t = np.array([0, 1, 2, 3])
    for _ in range(steps):
        opt.update(net.params, net.gradient(x, t))
    return x


@pytest.mark.parametrize("name", ["ResNet", "MiniGoogLeNet"])
def test_save_and_load_params_round_trip_with_running_stats(name, tmp_path):
    net = tiny(name)
    x = _train_steps(net)
    path = net.save_params(tmp_path / "params.npz")
    other = tiny(name, seed=1)
    inner = next(iter(other.registry().buffers.values())).get()
    other.load_params(path)
    for key, value in net.params.items():
        np.testing.assert_array_equal(other.params[key], value, err_msg=key)
    for key, value in net.named_buffers().items():
        np.testing.assert_array_equal(other.named_buffers()[key], value, err_msg=key)
    assert next(iter(other.registry().buffers.values())).get() is inner  # loaded in place
    np.testing.assert_array_equal(other.predict(x), net.predict(x))


def test_checkpoint_resume_restores_nested_running_stats(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8))
    t = rng.integers(0, 10, 40)
    opts = dict(epochs=1, mini_batch_size=10, optimizer="Adam", seed=3, verbose=False)
    trained = Trainer(tiny("ResNet"), x, t, x, t, checkpoint_dir=tmp_path, **opts)
    trained.train()
    assert (tmp_path / CHECKPOINT_NAME).exists()
    resumed = Trainer(tiny("ResNet", seed=5), x, t, x, t, checkpoint_dir=tmp_path,
                      resume=True, **opts)
    for key, value in trained.network.named_buffers().items():
        np.testing.assert_array_equal(resumed.network.named_buffers()[key], value, err_msg=key)
    for key, value in trained.network.params.items():
        np.testing.assert_array_equal(resumed.network.params[key], value, err_msg=key)


def test_arrays_inside_blocks_are_cast_and_moved_with_the_network():
    """What ``to(device)`` and ``numerical_gradient``'s float64 copy do to every array of
    the network reaches the layers inside the blocks, and is undone on exit."""
    net = tiny("ResNet", dtype="float32")
    conv1, bn1 = net.layers["Block1"].main[:2]
    assert conv1.W is net.params["W2"] and bn1.gamma is net.params["gamma2"]
    original = bn1.running_mean
    with net._working_copy(np.float64):
        assert conv1.W is net.params["W2"] and conv1.W.dtype == np.float64
        assert bn1.running_mean.dtype == np.float64
    assert conv1.W is net.params["W2"] and conv1.W.dtype == np.float32
    assert bn1.running_mean is original


def test_a_short_training_run_lowers_the_loss():
    """Two classes told apart by where the bright square is: a tiny ResNet learns it."""
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, 64)
    x = 0.1 * rng.random((64, 1, 8, 8))
    for i, label in enumerate(t):
        rows = slice(0, 4) if label else slice(4, 8)
        x[i, 0, rows, 2:6] += 1.0
    xpnet.seed(0)
    net = models.ResNet(input_dim=(1, 8, 8), width=4, blocks_per_stage=1, output_size=2)
    opt = Adam(lr=0.01)
    first = float(net.loss(x, t))
    for _ in range(15):
        opt.update(net.params, net.gradient(x, t))
    assert float(net.loss(x, t, train_flg=False)) < 0.5 * first
    assert net.accuracy(x, t) > 0.9


# ---------------------------------------------------------------------------
# One training step on two devices (xpnet.parity)
# ---------------------------------------------------------------------------

FULL_SIZE = ["LeNet", "VGGNet", "MiniGoogLeNet", "ResNet"]


def _parity_batch(n):
    rng = np.random.default_rng(21)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("name", FULL_SIZE)
def test_step_parity_copies_the_nested_networks_whole_and_leaves_them_as_they_were(name):
    """The harness the GPU case below relies on: its float64 reference reaches every array
    inside the blocks (the float32 CPU step is near it but not equal), and the network it
    is given keeps its parameters and its running statistics."""
    xpnet.seed(0)
    net = getattr(models, name)()
    before = {k: v.copy() for k, v in {**net.params, **net.named_buffers()}.items()}
    x, t = _parity_batch(8)
    report = step_parity(net, x, t, device="cpu")
    assert report["passed"]
    assert report["grad_max_rel"] == report["adam_max_rel"] == 0.0
    assert report["grad_cpu_vs_float64_max_rel"] > 0  # the reference did compute in float64
    assert abs(report["loss_float64"] - report["loss_cpu"]) < 1e-5 * report["loss_float64"]
    after = {**net.params, **net.named_buffers()}
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.gpu_available(), reason="no usable GPU")
@pytest.mark.parametrize("name", FULL_SIZE)
def test_gpu_float32_forward_pass_matches_the_cpu(name):
    """Each network at full size in float32, the GPU beside the CPU from the same parameters,
    batch and Dropout masks: scores in training and in inference mode, the loss and the
    running statistics the training-mode pass moved agree to 1e-5. A forward pass is
    continuous (a ReLU input or a pooling tie at the edge of rounding changes a slope, not a
    value), so this holds in float32 for any batch; the gradients, which jump at such kinks,
    are compared in float64 (``tests/test_gpu.py``) and reported in float32 by
    ``benchmarks/gpu_bench.py`` (``xpnet.parity`` says why)."""
    cp = backend.require_gpu()
    xpnet.seed(0)
    net = getattr(models, name)()
    gnet = copy.deepcopy(net).to("gpu")
    x, t = _parity_batch(32)
    gx, gt = cp.asarray(x), cp.asarray(t)

    with same_dropout_masks(net, gnet):
        for train_flg in (True, False):
            y = net.predict(x, train_flg=train_flg)
            gy = gnet.predict(gx, train_flg=train_flg)
            assert isinstance(gy, cp.ndarray) and gy.dtype == np.float32
            assert _max_rel(gy, y) < 1e-5, train_flg
        loss, gloss = float(net.loss(x, t)), float(gnet.loss(gx, gt))
    assert abs(gloss - loss) < 1e-5 * loss
    gbuffers = gnet.named_buffers()
    for key, value in net.named_buffers().items():
        assert _max_rel(gbuffers[key], value) < 1e-5, key


# ---------------------------------------------------------------------------
# The CLI builds them by name
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv, cls, attrs", [
    (["--model", "resnet", "--depth", "8", "--width", "4"], "ResNet", {"depth": 8, "width": 4}),
    (["--model", "VGGNet", "--depth", "1", "--width", "4", "--hidden", "20"], "VGGNet",
     {"depth": 1, "width": 4}),
    (["--model", "MiniGoogLeNet", "--width", "2"], "MiniGoogLeNet", {"width": 2}),
    (["--model", "LeNet", "--activation", "sigmoid"], "LeNet", {"activation": "sigmoid"}),
])
def test_cli_builds_the_networks_by_name(argv, cls, attrs):
    args = build_parser().parse_args(["train", *argv])
    net = _model_builder(args, (1, 28, 28))()
    assert type(net).__name__ == cls
    for key, value in attrs.items():
        assert getattr(net, key) == value


@pytest.mark.parametrize("argv, message", [
    (["--model", "LeNet", "--depth", "3"], "--depth does not apply to LeNet"),
    (["--model", "ResNet", "--hidden", "10"], "--hidden does not apply to ResNet"),
])
def test_cli_refuses_options_a_network_does_not_take(argv, message):
    args = build_parser().parse_args(["train", *argv])
    with pytest.raises(ValueError, match=message):
        _model_builder(args, (1, 28, 28))

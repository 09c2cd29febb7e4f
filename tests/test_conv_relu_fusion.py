"""A Convolution followed by a Relu makes the ReLU's output in its own pass
(``kernels.conv2d_forward(..., relu=True)``): the network's results must be those of the
two layers run one after the other, bit for bit, forward and backward."""

import numpy as np
import pytest

from xpnet import kernels
from xpnet.convolution import Convolution
from xpnet.layers import Relu
from xpnet.models import DeepConvNet, LeNet, SimpleConvNet, VGGNet, _fuse_conv_relu


def _unfused(network, x, t):
    """Loss and gradients with every layer run on its own (the fused plan turned off)."""
    registry = network.registry()
    saved = registry.plan
    registry.plan = [(layer, flg, None) for layer, flg in registry.forward]
    try:
        return network.loss(x, t), network.gradient(x, t)
    finally:
        registry.plan = saved


@pytest.mark.parametrize("make", [
    lambda: DeepConvNet(),
    lambda: SimpleConvNet(dtype=np.float64),
    lambda: LeNet(),
    lambda: VGGNet(),
    lambda: DeepConvNet(dtype=np.float16),
], ids=["DeepConvNet", "SimpleConvNet-float64", "LeNet", "VGGNet", "DeepConvNet-float16"])
def test_fused_network_equals_the_layers_one_by_one(make):
    rng = np.random.default_rng(0)
    network = make()
    x = rng.standard_normal((5, 1, 28, 28)).astype(network.dtype)
    t = rng.integers(0, 10, 5)
    fused = [entry for entry in network.registry().plan if entry[2] is not None]
    assert fused, "the network has Convolution -> Relu pairs to fuse"
    with np.errstate(over="ignore"):  # float16 Dropout scaling may overflow harmlessly
        from xpnet import backend

        backend.seed(3)
        loss, grads = network.loss(x, t), network.gradient(x, t)
        backend.seed(3)
        loss_ref, grads_ref = _unfused(network, x, t)
    np.testing.assert_array_equal(loss, loss_ref)
    for key in grads:
        np.testing.assert_array_equal(grads[key], grads_ref[key], err_msg=key)
    network.predict(x)  # the fused ReLU layers hold their outputs, as after their forward
    for _conv, _flg, relu in fused:
        assert relu.out is not None and (relu.out >= 0).all()


def test_only_exact_convolution_relu_pairs_are_fused():
    class MyRelu(Relu):
        def forward(self, x):
            return super().forward(x) * 2  # does more than a Relu: must run itself

    conv = Convolution(np.ones((1, 1, 3, 3)), np.zeros(1))
    relu, mine = Relu(), MyRelu()
    plan = _fuse_conv_relu([(conv, False), (relu, False), (Relu(), False)])
    assert plan[0] == (conv, False, relu) and len(plan) == 2 and plan[1][2] is None
    assert _fuse_conv_relu([(conv, False), (mine, False)]) == [(conv, False, None),
                                                                (mine, False, None)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_conv2d_forward_relu_is_relu_of_the_products(dtype):
    rng = np.random.default_rng(1)
    for shape, f, stride, pad in [((3, 4, 9, 9), 3, 1, 1), ((2, 3, 8, 7), 3, 2, 0),
                                  ((100, 16, 28, 28), 3, 1, 1)]:
        x = rng.standard_normal(shape).astype(dtype)
        W = rng.standard_normal((5, shape[1], f, f)).astype(dtype)
        b = rng.standard_normal(5).astype(dtype)
        x[0, 0, 0, 0] = np.nan  # a NaN stays NaN, as in relu_forward
        got = kernels.conv2d_forward(x, W, b, stride, pad, relu=True)
        want = kernels.relu_forward(kernels.conv2d_forward(x, W, b, stride, pad))
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))

"""``xpnet.parity``: the comparison of one training step on two devices, checked on the CPU
(the GPU side runs in ``tests/test_gpu.py``)."""

import numpy as np
import pytest

import xpnet
from xpnet import layers
from xpnet.models import DeepConvNet, MultiLayerNetExtend
from xpnet.parity import same_dropout_masks, step_parity


def _batch(n, shape, classes=10, seed=1):
    rng = np.random.default_rng(seed)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, classes, size=n)


def test_a_device_compared_with_itself_agrees_exactly_and_float64_is_the_reference():
    xpnet.seed(0)
    net = DeepConvNet(dtype=np.float32)
    before = {k: v.copy() for k, v in net.params.items()}
    x, t = _batch(100, (1, 28, 28))
    report = step_parity(net, x, t, device="cpu")
    assert report["passed"]
    assert report["grad_max_rel"] == report["sgd_max_rel"] == report["adam_max_rel"] == 0.0
    assert report["loss_cpu"] == report["loss_gpu"]
    # float32 against float64: the gradients' rounding, magnified by Adam's first step on
    # the biases whose gradient nearly cancels, but nowhere near a wrong computation
    assert 0 < report["adam_cpu_vs_float64_max_rel"] < 1e-3
    assert abs(report["loss_float64"] - report["loss_cpu"]) < 1e-6
    for k, v in net.params.items():  # the network itself is not stepped
        np.testing.assert_array_equal(v, before[k])


def test_a_wrong_gradient_fails_the_comparison(monkeypatch):
    xpnet.seed(0)
    net = MultiLayerNetExtend(12, [10], 3, use_dropout=True, dtype=np.float32)
    x, t = _batch(16, (12,), classes=3)
    original = layers.Affine.backward
    calls = []

    def off_by_a_bit_the_second_time(self, dout):  # the "device" copy computes it wrong
        dx = original(self, dout)
        if 2 <= len(calls) < 4:  # two Affine layers a gradient: CPU, "device", float64
            self.dW = self.dW * (1 + 1e-3)
        calls.append(1)
        return dx

    monkeypatch.setattr(layers.Affine, "backward", off_by_a_bit_the_second_time)
    report = step_parity(net, x, t, device="cpu")
    assert not report["passed"]
    assert report["grad_max_rel"] > 1e-4


def test_same_dropout_masks_gives_each_network_the_same_masks():
    xpnet.seed(0)
    net = MultiLayerNetExtend(12, [10, 10], 3, use_dropout=True, dropout_ration=0.5,
                              dtype=np.float64)
    x, _ = _batch(8, (12,), classes=3)
    with same_dropout_masks(net):
        a = net.predict(x, train_flg=True)
    with same_dropout_masks(net):
        b = net.predict(x, train_flg=True)
    c = net.predict(x, train_flg=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_step_parity_wants_a_float32_network_on_the_cpu():
    with pytest.raises(ValueError, match="float32 network on the CPU"):
        step_parity(MultiLayerNetExtend(4, [3], 2, dtype=np.float64), np.zeros((2, 4)),
                    np.zeros(2, int), device="cpu")


def test_dropout_draws_its_masks_from_the_generator_it_is_given():
    x = np.ones((4, 6))
    a = layers.Dropout(0.5, rng=np.random.default_rng(3))
    b = layers.Dropout(0.5, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    uniforms = np.random.default_rng(3).random((4, 6), dtype=np.float32)
    np.testing.assert_array_equal(a.mask, uniforms > 0.5)


def test_same_dropout_masks_touches_only_the_networks_it_is_given():
    net = MultiLayerNetExtend(12, [10], 3, use_dropout=True, dtype=np.float64)
    other = layers.Dropout(0.5)
    x, _ = _batch(8, (12,), classes=3)
    with same_dropout_masks(net):
        assert layers.get_rng is xpnet.backend.get_rng  # nothing patched
        xpnet.seed(5)
        inside = other.forward(x)
    xpnet.seed(5)
    np.testing.assert_array_equal(other.forward(x), inside)  # still xpnet's generator
    assert all(layer.rng is None for layer in net._all_layers()
               if isinstance(layer, layers.Dropout))  # the network's own generators are back


def test_same_dropout_masks_wants_the_networks():
    with pytest.raises(TypeError, match="takes the networks"):
        with same_dropout_masks():
            pass

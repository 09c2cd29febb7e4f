"""``xpnet.parity``: the comparison of one training step on two devices, checked on the CPU
(the GPU side runs in ``tests/test_gpu.py``)."""

import numpy as np
import pytest

import xpnet
from xpnet import layers, parity
from xpnet.models import DeepConvNet, MultiLayerNetExtend
from xpnet.parity import same_dropout_masks, step_parity

NUDGE_THAT_FLIPS = 4  # a nudge (drawn from this seed) that makes hidden unit 0 pass


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


def test_a_device_nearer_float64_than_the_cpu_passes_where_it_differs_from_the_cpu(
        monkeypatch):
    """The float64 criterion: a "device" that computes dW more exactly than the CPU (in
    float64, then rounded) differs from the CPU by the CPU's own rounding. Under a tolerance
    far below that rounding the direct comparison fails, yet the device is no further from
    float64 than the CPU, so the step passes; a wrong dW fails under the same tolerance."""
    xpnet.seed(0)
    net = MultiLayerNetExtend(64, [48], 5, dtype=np.float32)
    x, t = _batch(32, (64,), classes=5)
    original = layers.Affine.backward
    calls = []

    def exact_on_the_device(scale):
        def backward(self, dout):
            dx = original(self, dout)
            if 2 <= len(calls) < 4:  # the device's two Affine layers
                exact = self.x.astype(np.float64).T @ dout.astype(np.float64)
                self.dW = (exact * scale).astype(np.float32)
            calls.append(1)
            return dx
        return backward

    monkeypatch.setattr(layers.Affine, "backward", exact_on_the_device(1.0))
    report = step_parity(net, x, t, device="cpu", tol=1e-12)
    assert report["grad_max_rel"] > 1e-12  # not the CPU's result ...
    assert report["grad_cpu_vs_float64_max_rel"] > 0
    for part in ("grad", "sgd", "adam"):  # ... but at least as near float64
        for key, gpu in report[f"{part}_gpu_vs_float64"].items():
            assert gpu <= 2 * report[f"{part}_cpu_vs_float64"][key], (part, key)
    assert report["passed"], report

    calls.clear()
    monkeypatch.setattr(layers.Affine, "backward", exact_on_the_device(1 + 1e-4))
    report = step_parity(net, x, t, device="cpu", tol=1e-12)
    assert not report["passed"]
    assert report["grad_gpu_vs_float64_max_rel"] > 1e-5


def _on_a_kink():
    """A float32 net with a ReLU input exactly at 0 for the first sample: hidden unit 0 sees
    ``0.5 * sum(x[0]) - 0.5 * sum(x[0])``, so a nudge of x by one ulp decides whether the
    unit passes its gradient, and W1's gradient jumps by a whole sample's contribution."""
    xpnet.seed(0)
    net = MultiLayerNetExtend(6, [4], 3, dtype=np.float32)
    x, t = _batch(5, (6,), classes=3, seed=4)
    x = np.round(x * 4) / 4 + 1  # quarters: every sum below is exact in float32
    net.params["W1"][:, 0] = 0.5
    net.params["b1"][0] = -0.5 * x[0].sum()
    return net, x, t


def _device_input_nudged(monkeypatch, seed):
    """The "device" computes its gradient on x nudged by -1, 0 or +1 ulp per entry (as
    another float32 summation order might round it); the others on x itself."""
    original = parity._gradient
    calls = []

    def gradient(network, x, t, mask_seed):
        calls.append(1)
        if len(calls) == 2:
            step = np.random.default_rng(seed).integers(-1, 2, size=x.shape)
            x = np.where(step == 0, x, np.nextafter(
                x, np.where(step > 0, np.float32(np.inf), np.float32(-np.inf))))
        return original(network, x, t, mask_seed)

    monkeypatch.setattr(parity, "_gradient", gradient)


def test_a_difference_no_larger_than_the_cpus_own_float32_noise_passes_with_noise_probes(
        monkeypatch):
    net, x, t = _on_a_kink()
    _device_input_nudged(monkeypatch, seed=NUDGE_THAT_FLIPS)
    strict = step_parity(net, x, t, device="cpu")
    assert strict["grad"]["W1"] > 1e-2 and not strict["passed"]  # the unit flipped
    probed = step_parity(net, x, t, device="cpu", noise_probes=4)
    noise = probed["grad_float32_noise"]
    assert noise["W1"] > 1e-2  # the CPU's own nudges flip it too ...
    assert noise["W2"] < 1e-5  # ... and move a smooth tensor only by rounding
    assert probed["passed"], probed


def test_noise_probes_leave_a_smooth_network_held_to_the_tolerance(monkeypatch):
    """Where no kink is near, the nudges move nothing beyond rounding: a gradient 1e-3 off
    still fails with probes."""
    xpnet.seed(0)
    net = MultiLayerNetExtend(12, [10], 3, dtype=np.float32)
    x, t = _batch(16, (12,), classes=3)
    original = layers.Affine.backward
    calls = []

    def off_on_the_device(self, dout):
        dx = original(self, dout)
        if 2 <= len(calls) < 4:
            self.dW = self.dW * (1 + 1e-3)
        calls.append(1)
        return dx

    monkeypatch.setattr(layers.Affine, "backward", off_on_the_device)
    report = step_parity(net, x, t, device="cpu", noise_probes=3)
    assert report["grad_float32_noise_max_rel"] < 1e-5
    assert not report["passed"]


def test_without_noise_probes_there_is_no_noise_entry():
    xpnet.seed(0)
    net = MultiLayerNetExtend(6, [4], 3, dtype=np.float32)
    x, t = _batch(4, (6,), classes=3)
    report = step_parity(net, x, t, device="cpu")
    assert report["noise_probes"] == 0 and "grad_float32_noise" not in report


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

"""The book's networks: gradient checks, dtypes, files, devices and bad input."""

import numpy as np
import pytest

import xpnet
from xpnet.backend import DeviceError, gpu_available
from xpnet.gradient import relative_error
from xpnet.layers import Affine, BatchNormalization, Convolution, Dropout, Pooling
from xpnet.models import (
    DeepConvNet,
    MultiLayerNet,
    MultiLayerNetExtend,
    SimpleConvNet,
    ThreeLayerNet,
    TwoLayerNet,
    init_network,
    predict,
)
from xpnet.threads import num_threads

F64 = np.float64


def _batch(rng, n, shape, classes, one_hot=False):
    x = rng.standard_normal((n, *shape))
    t = rng.integers(0, classes, size=n)
    if one_hot:
        t = np.eye(classes)[t]
    return x, t


def _check_gradients(net, x, t, seed=None, tol=1e-6, zero=()):
    """Backprop against central differences, parameter by parameter (relative error).

    Biases are moved off zero first: with zero biases a sample whose units all died reaches
    the next ReLU at exactly 0, its kink, where central differences are not the gradient.
    Keys in ``zero`` have an exactly zero gradient (a bias followed by BatchNormalization):
    both estimates must be zero to rounding, as a relative error of two zeros means nothing.
    """
    rng = np.random.default_rng(99)
    for key, value in net.params.items():
        if key.startswith("b"):
            value[...] = rng.uniform(-0.2, 0.2, value.shape)
    # One thread: on these tiny shapes, waking a pool of threads for every kernel and
    # product costs far more than the work, and a check makes thousands of passes.
    with num_threads(1):
        if seed is not None:
            xpnet.seed(seed)
        backprop = net.gradient(x, t)
        if seed is not None:
            xpnet.seed(seed)
        numerical = net.numerical_gradient(x, t)
    assert list(backprop) == list(net.params) == list(numerical)
    for key in zero:
        assert np.abs(backprop[key]).max() < 1e-12 and np.abs(numerical[key]).max() < 1e-8, key
    errors = {key: relative_error(numerical[key], backprop[key]) for key in net.params
              if key not in zero}
    for key, err in errors.items():
        assert err < tol, f"{key}: relative error {err:.2e} (all: {errors})"
        # a gradient check of an all-zero gradient would prove nothing
        assert np.abs(backprop[key]).max() > 0, key
    return errors


# ---------------------------------------------------------------------------
# Gradient checks in float64
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("one_hot", [False, True])
def test_two_layer_net_gradient(seed, one_hot):
    rng = np.random.default_rng(seed)
    d, h, c = rng.integers(3, 9, size=3)
    xpnet.seed(seed)
    net = TwoLayerNet(int(d), int(h), int(c), weight_init_std=0.5, dtype=F64)
    x, t = _batch(rng, 4, (int(d),), int(c), one_hot)
    _check_gradients(net, x, t)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_multi_layer_net_gradient_with_weight_decay(activation):
    rng = np.random.default_rng(3)
    net = MultiLayerNet(6, [5, 4, 3], 4, activation=activation, weight_decay_lambda=0.1, dtype=F64)
    x, t = _batch(rng, 5, (6,), 4)
    _check_gradients(net, x, t)
    # the penalty is in the loss and in the gradient
    plain = MultiLayerNet(6, [5, 4, 3], 4, activation=activation, dtype=F64)
    for key in plain.params:
        plain.params[key][...] = net.params[key]
    penalty = 0.5 * 0.1 * sum(float(np.sum(net.params[f"W{i}"] ** 2)) for i in range(1, 5))
    assert float(net.loss(x, t)) == pytest.approx(float(plain.loss(x, t)) + penalty, rel=1e-12)
    gw, gp = net.gradient(x, t), plain.gradient(x, t)
    np.testing.assert_allclose(gw["W2"], gp["W2"] + 0.1 * net.params["W2"], rtol=1e-12)
    np.testing.assert_array_equal(gw["b2"], gp["b2"])


def test_multi_layer_net_extend_gradient_all_options():
    rng = np.random.default_rng(4)
    net = MultiLayerNetExtend(
        5, [6, 6], 3, weight_decay_lambda=0.05, use_dropout=True, dropout_ration=0.3,
        use_batchnorm=True, dtype=F64,
    )
    # the book's order, layer by layer (its batch_norm_gradient_check.py prints them so)
    assert list(net.params) == ["W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2",
                                "W3", "b3"]
    assert list(net.layers) == [
        "Affine1", "BatchNorm1", "Activation_function1", "Dropout1",
        "Affine2", "BatchNorm2", "Activation_function2", "Dropout2", "Affine3",
    ]
    # BatchNorm's gamma/beta must matter to the check: move them off 1 and 0
    for i in (1, 2):
        net.params[f"gamma{i}"][...] = rng.uniform(0.5, 1.5, 6)
        net.params[f"beta{i}"][...] = rng.uniform(-0.5, 0.5, 6)
    x, t = _batch(rng, 6, (5,), 3)
    # BatchNormalization subtracts the batch mean: b1 and b2 have no effect on the loss
    _check_gradients(net, x, t, seed=11, zero=("b1", "b2"))
    # dropout was really active in that pass: some units were dropped, not all
    mask = np.asarray(net.layers["Dropout1"].mask)
    assert 0 < mask.sum() < mask.size


def test_multi_layer_net_extend_loss_is_in_inference_mode_by_default():
    """The book's MultiLayerNetExtend.loss(x, t, train_flg=False): no dropped units, the
    running statistics of BatchNormalization; gradients still come from training mode."""
    rng = np.random.default_rng(16)
    net = MultiLayerNetExtend(4, [8], 3, use_dropout=True, use_batchnorm=True, dtype=F64)
    x, t = _batch(rng, 5, (4,), 3)
    net.gradient(x, t)  # moves the running statistics off their start
    bn = net.layers["BatchNorm1"]
    saved = bn.running_mean.copy()
    default = net.loss(x, t)
    assert default == net.loss(x, t, train_flg=False) == net.loss(x, t)
    np.testing.assert_array_equal(bn.running_mean, saved)  # inference: statistics unchanged
    assert net.loss(x, t, train_flg=True) != default
    assert list(net.gradient(x, t)) == ["W1", "b1", "gamma1", "beta1", "W2", "b2"]


def test_numerical_gradient_of_dropout_net_repeats_the_mask():
    """Without holding the mask fixed, finite differences of a dropout net are noise."""
    rng = np.random.default_rng(5)
    net = MultiLayerNetExtend(4, [8], 3, use_dropout=True, dtype=F64)
    x, t = _batch(rng, 4, (4,), 3)
    xpnet.seed(1)
    g1 = net.numerical_gradient(x, t)
    xpnet.seed(1)
    g2 = net.numerical_gradient(x, t)
    xpnet.seed(2)
    g3 = net.numerical_gradient(x, t)
    np.testing.assert_array_equal(g1["W1"], g2["W1"])
    assert not np.array_equal(g1["W1"], g3["W1"])


def test_simple_conv_net_gradient():
    rng = np.random.default_rng(6)
    net = SimpleConvNet(
        input_dim=(2, 10, 10),
        conv_param={"filter_num": 3, "filter_size": 3, "pad": 1, "stride": 1},
        hidden_size=7, output_size=4, weight_init_std=0.3, dtype=F64,
    )
    assert net.params["W2"].shape == (3 * 5 * 5, 7)
    assert list(net.layers) == ["Conv1", "Relu1", "Pool1", "Affine1", "Relu2", "Affine2"]
    x, t = _batch(rng, 3, (2, 10, 10), 4)
    _check_gradients(net, x, t)


def test_deep_conv_net_gradient():
    """The book's architecture (pads 1, 1, 1, 2, 1, 1; three poolings; two dropouts) with
    fewer channels on a 12x12 input, so that every parameter can be checked."""
    rng = np.random.default_rng(7)
    nums = [2, 2, 3, 3, 4, 4]
    pads = [1, 1, 1, 2, 1, 1]
    convs = [{"filter_num": n, "filter_size": 3, "pad": p, "stride": 1}
             for n, p in zip(nums, pads)]
    net = DeepConvNet((1, 12, 12), *convs, hidden_size=6, output_size=4, dtype=F64)
    # 12 -> pool 6 -> pad 2: 8 -> pool 4 -> pool 2
    assert net.params["W7"].shape == (4 * 2 * 2, 6)
    x, t = _batch(rng, 3, (1, 12, 12), 4)
    _check_gradients(net, x, t, seed=3)


# ---------------------------------------------------------------------------
# The book's architectures
# ---------------------------------------------------------------------------


def test_deep_conv_net_matches_the_book():
    net = DeepConvNet()
    shapes = {
        "W1": (16, 1, 3, 3), "W2": (16, 16, 3, 3), "W3": (32, 16, 3, 3), "W4": (32, 32, 3, 3),
        "W5": (64, 32, 3, 3), "W6": (64, 64, 3, 3), "W7": (1024, 50), "W8": (50, 10),
    }
    for i in range(1, 9):
        assert net.params[f"W{i}"].shape == shapes[f"W{i}"]
        assert net.params[f"b{i}"].shape == (shapes[f"W{i}"][0 if i < 7 else 1],)
    # the book's list of 20 layers; its gradient() reads these indices
    assert isinstance(net.layers, list) and len(net.layers) == 20
    for i, idx in enumerate((0, 2, 5, 7, 10, 12, 15, 18), start=1):
        assert net.layers[idx].W is net.params[f"W{i}"]
        assert net.layers[idx].b is net.params[f"b{i}"]
    kinds = [type(layer) for layer in net.layers]
    assert kinds.count(Convolution) == 6 and kinds.count(Pooling) == 3
    assert kinds.count(Affine) == 2 and kinds.count(Dropout) == 2
    assert [net.layers[i].pad for i in (0, 2, 5, 7, 10, 12)] == [1, 1, 1, 2, 1, 1]
    # He initialization with the book's pre_node_nums
    pre = [1 * 9, 16 * 9, 16 * 9, 32 * 9, 32 * 9, 64 * 9, 64 * 16, 50]
    for i, fan_in in enumerate(pre, start=1):
        std = float(np.std(net.params[f"W{i}"]))
        assert std == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.35 if i == 1 else 0.1)


def test_two_layer_net_matches_the_book():
    net = TwoLayerNet(784, 50, 10)
    assert list(net.layers) == ["Affine1", "Relu1", "Affine2"]
    assert net.lastLayer is net.last_layer
    assert net.layers["Affine1"].W is net.params["W1"]
    assert float(np.std(net.params["W1"])) == pytest.approx(0.01, rel=0.05)
    assert not net.params["b1"].any()


@pytest.mark.parametrize(("spec", "scale"), [("relu", 2.0), ("He", 2.0), ("sigmoid", 1.0),
                                            ("xavier", 1.0)])
def test_weight_init_std_strings(spec, scale):
    net = MultiLayerNet(400, [300], 10, weight_init_std=spec)
    assert float(np.std(net.params["W1"])) == pytest.approx(np.sqrt(scale / 400), rel=0.05)
    assert float(np.std(net.params["W2"])) == pytest.approx(np.sqrt(scale / 300), rel=0.05)
    net = MultiLayerNet(400, [300], 10, weight_init_std=0.05)
    assert float(np.std(net.params["W2"])) == pytest.approx(0.05, rel=0.05)


def test_unknown_activation():
    with pytest.raises(ValueError, match="tanh"):
        MultiLayerNet(4, [3], 2, activation="tanh")


def test_three_layer_net_and_book_functions(tmp_path):
    net = ThreeLayerNet(weight_init_std=0.3, dtype=F64)
    net.save_params(tmp_path / "w.npz")
    weights = init_network(tmp_path / "w.npz")
    x = np.random.default_rng(0).random((5, 784))
    probs = predict(weights, x)
    scores = net.predict(x)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(predict(weights, x[0]), probs[0], rtol=1e-12)


# ---------------------------------------------------------------------------
# dtype
# ---------------------------------------------------------------------------


def test_float32_numerical_gradient_is_accurate():
    """The book's gradient_check.py on a float32 network: mean |difference| below 1e-6."""
    rng = np.random.default_rng(8)
    net = TwoLayerNet(100, 20, 10)
    assert net.dtype == np.float32
    x = rng.random((3, 100))  # float64, as the book's batches
    t = np.eye(10)[rng.integers(0, 10, 3)]
    before = {k: v.copy() for k, v in net.params.items()}
    ids = {k: id(v) for k, v in net.params.items()}
    numerical = net.numerical_gradient(x, t)
    backprop = net.gradient(x, t)
    for key in net.params:
        assert numerical[key].dtype == backprop[key].dtype == np.float32
        diff = float(np.mean(np.abs(backprop[key] - numerical[key])))
        assert diff < 1e-6, (key, diff)
        assert relative_error(numerical[key], backprop[key]) < 1e-4, key
    # the network is left exactly as it was: same arrays, same values, same dtype
    for key, value in net.params.items():
        assert id(value) == ids[key] and value.dtype == np.float32
        np.testing.assert_array_equal(value, before[key])
    assert net.layers["Affine1"].W is net.params["W1"]
    assert net.dtype == np.float32


def test_numerical_gradient_leaves_batchnorm_state_alone():
    rng = np.random.default_rng(15)
    net = MultiLayerNetExtend(4, [5], 3, use_batchnorm=True)
    x, t = _batch(rng, 6, (4,), 3)
    net.gradient(x, t)
    bn = net.layers["BatchNorm1"]
    mean, var = bn.running_mean, bn.running_var
    saved = mean.copy(), var.copy()
    net.numerical_gradient(x, t)  # dozens of training-mode passes, on float64 copies
    assert bn.running_mean is mean and bn.running_var is var
    np.testing.assert_array_equal(mean, saved[0])
    np.testing.assert_array_equal(var, saved[1])
    assert mean.dtype == np.float32


def test_float32_in_float32_out():
    rng = np.random.default_rng(9)
    net = MultiLayerNetExtend(6, [5], 3, use_batchnorm=True, use_dropout=True)
    x, t = _batch(rng, 4, (6,), 3, one_hot=True)  # float64 x and t: cast to float32
    assert net.predict(x).dtype == np.float32
    assert net.loss(x, t).dtype == np.float32
    grads = net.gradient(x, t)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert all(p.dtype == np.float32 for p in net.params.values())
    assert isinstance(net.last_loss, np.ndarray) and net.last_loss.shape == ()
    assert net.last_loss.dtype == np.float32
    bn = net.layers["BatchNorm1"]
    assert bn.running_mean.dtype == bn.running_var.dtype == np.float32


def test_dtype_argument_and_default():
    assert TwoLayerNet(4, 3, 2, dtype=np.float64).params["W1"].dtype == np.float64
    xpnet.set_default_dtype(np.float64)
    net = SimpleConvNet((1, 8, 8), {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1})
    assert net.dtype == np.float64 and net.params["W1"].dtype == np.float64
    with pytest.raises(TypeError, match="int32"):
        TwoLayerNet(4, 3, 2, dtype=np.int32)


def test_float16_inference():
    rng = np.random.default_rng(10)
    net = TwoLayerNet(6, 5, 3, weight_init_std=0.5, dtype=np.float16)
    x, t = _batch(rng, 8, (6,), 3)
    y = net.predict(x)
    assert y.dtype == np.float16
    ref = TwoLayerNet(6, 5, 3, dtype=F64)
    for key in ref.params:
        ref.params[key][...] = net.params[key]
    np.testing.assert_allclose(y, ref.predict(x), atol=2e-2)


def test_last_loss_is_the_loss_of_that_pass():
    rng = np.random.default_rng(11)
    net = MultiLayerNet(5, [4], 3, weight_decay_lambda=0.2)
    x, t = _batch(rng, 6, (5,), 3)
    net.gradient(x, t)
    assert float(net.last_loss) == float(net.loss(x, t))


# ---------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------


def test_accuracy_in_batches():
    rng = np.random.default_rng(12)
    net = TwoLayerNet(5, 6, 4, weight_init_std=1.0, dtype=F64)
    x, t = _batch(rng, 23, (5,), 4)
    expected = float(np.mean(np.argmax(net.predict(x), axis=1) == t))
    assert 0 < expected < 1
    for batch_size in (1, 5, 7, 23, 100):
        assert net.accuracy(x, t, batch_size=batch_size) == expected
    assert net.accuracy(x, np.eye(4)[t], batch_size=10) == expected
    with pytest.raises(ValueError, match="batch_size"):
        net.accuracy(x, t, batch_size=0)
    with pytest.raises(ValueError, match="rows"):
        net.accuracy(x, t[:5])


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(13)
    src = SimpleConvNet((1, 8, 8), {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1},
                        hidden_size=5, output_size=3)
    path = src.save_params(tmp_path / "simple.npz")
    dst = SimpleConvNet((1, 8, 8), {"filter_num": 2, "filter_size": 3, "pad": 1, "stride": 1},
                        hidden_size=5, output_size=3, dtype=F64)
    arrays = {k: v for k, v in dst.params.items()}
    dst.load_params(path)
    for key, value in dst.params.items():
        assert value is arrays[key] and value.dtype == F64  # written in place, cast
        np.testing.assert_array_equal(value, src.params[key])
    assert dst.layers["Conv1"].W is dst.params["W1"]
    x = rng.random((2, 1, 8, 8))
    np.testing.assert_allclose(dst.predict(x), src.predict(x), rtol=1e-5)


def test_save_load_keeps_batchnorm_statistics(tmp_path):
    rng = np.random.default_rng(14)
    src = MultiLayerNetExtend(5, [4], 3, use_batchnorm=True, dtype=F64)
    x, t = _batch(rng, 8, (5,), 3)
    src.gradient(x * 3 + 1, t)  # a training pass moves the running statistics
    src.save_params(tmp_path / "bn.npz")
    dst = MultiLayerNetExtend(5, [4], 3, use_batchnorm=True, dtype=F64)
    dst.load_params(tmp_path / "bn.npz")
    np.testing.assert_array_equal(dst.predict(x), src.predict(x))


def test_load_errors_name_the_key(tmp_path):
    net = TwoLayerNet(4, 3, 2)
    before = {k: v.copy() for k, v in net.params.items()}
    other = TwoLayerNet(4, 5, 2)
    other.save_params(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"'W1'.*\(4, 5\).*\(4, 3\)"):
        net.load_params(tmp_path / "other.npz")
    xpnet.io.save_params({"W1": before["W1"], "b1": before["b1"]}, tmp_path / "part.npz")
    with pytest.raises(KeyError, match="W2, b2"):
        net.load_params(tmp_path / "part.npz")
    extra = dict(before, W9=before["W1"])
    xpnet.io.save_params(extra, tmp_path / "extra.npz")
    with pytest.raises(KeyError, match="W9"):
        net.load_params(tmp_path / "extra.npz")
    with pytest.raises(FileNotFoundError):
        net.load_params(tmp_path / "missing.npz")
    for key, value in net.params.items():  # nothing was written by the failed loads
        np.testing.assert_array_equal(value, before[key])


def test_load_refuses_values_beyond_float16(tmp_path):
    big = TwoLayerNet(4, 3, 2, dtype=F64)
    big.params["W2"][0, 1] = 1e6
    big.save_params(tmp_path / "big.npz")
    half = TwoLayerNet(4, 3, 2, dtype=np.float16)
    with pytest.raises(ValueError, match=r"'W2'.*float16"):
        half.load_params(tmp_path / "big.npz")


def test_load_the_books_pickle_format(tmp_path):
    """The book's save_params writes a pickled dict; load_params reads it (safely)."""
    import pickle

    src = TwoLayerNet(4, 3, 2, dtype=F64)
    with open(tmp_path / "params.pkl", "wb") as f:
        pickle.dump({k: v.copy() for k, v in src.params.items()}, f)
    dst = TwoLayerNet(4, 3, 2)
    dst.load_params(tmp_path / "params.pkl")
    for key in src.params:
        np.testing.assert_array_equal(dst.params[key], src.params[key].astype(np.float32))


# ---------------------------------------------------------------------------
# Devices and bad input
# ---------------------------------------------------------------------------


def test_to_cpu_is_a_no_op():
    net = TwoLayerNet(4, 3, 2)
    arrays = dict(net.params)
    assert net.to("cpu") is net and net.device == "cpu"
    assert all(net.params[k] is arrays[k] for k in arrays)


@pytest.mark.skipif(gpu_available(), reason="a GPU is present")
def test_to_gpu_without_gpu_raises():
    net = TwoLayerNet(4, 3, 2)
    with pytest.raises(DeviceError, match="gpu"):
        net.to("gpu")
    assert net.device == "cpu"
    with pytest.raises(DeviceError):
        TwoLayerNet(4, 3, 2, device="gpu")
    with pytest.raises(ValueError, match="tpu"):
        net.to("tpu")


def test_bad_input_is_named():
    net = TwoLayerNet(4, 3, 2)
    with pytest.raises(ValueError, match=r"\(N, 4\).*\(2, 5\)"):
        net.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="empty"):
        net.predict(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="batch"):
        net.predict(np.zeros(4))
    with pytest.raises(ValueError, match="N = 2"):
        net.loss(np.zeros((2, 4)), np.array([0, 1, 1]))
    conv = SimpleConvNet((1, 8, 8), {"filter_num": 2, "filter_size": 3, "pad": 0, "stride": 1})
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\).*\(2, 64\)"):
        conv.predict(np.zeros((2, 64)))
    # the book feeds flattened or image-shaped batches to its dense nets alike
    assert net.predict(np.zeros((2, 1, 2, 2))).shape == (2, 2)


def test_input_dim_too_small():
    with pytest.raises(ValueError, match=r"DeepConvNet.*\(1, 3, 3\)"):
        DeepConvNet((1, 3, 3))
    with pytest.raises(ValueError, match="SimpleConvNet"):
        SimpleConvNet((1, 4, 4))


def test_batchnorm_layer_types():
    net = MultiLayerNetExtend(4, [3], 2, use_batchnorm=True)
    assert isinstance(net.layers["BatchNorm1"], BatchNormalization)
    assert net.layers["BatchNorm1"].gamma is net.params["gamma1"]


# ---------------------------------------------------------------------------
# The layer contract: param_names, buffer_names, takes_train_flg, output_shape
# ---------------------------------------------------------------------------


class _Centered:
    """A user's layer with a parameter, a buffer and a train_flg: ``x - mean + shift``,
    the mean a running one (updated in training, used in evaluation). x: (N, D)."""

    param_names = ("shift",)
    buffer_names = ("running_mean",)
    takes_train_flg = True

    def __init__(self, shift):
        self.shift = shift
        self.running_mean = None
        self.flags = []

    def forward(self, x, train_flg=True):
        self.flags.append(train_flg)
        if self.running_mean is None:
            self.running_mean = np.zeros(x.shape[1], x.dtype)
        if train_flg:
            self.running_mean[...] = 0.5 * self.running_mean + 0.5 * x.mean(axis=0)
        return x - self.running_mean + self.shift

    def backward(self, dout):
        self.dshift = dout.sum(axis=0)
        return dout


def _net_with_centered(seed=0):
    xpnet.seed(seed)
    net = MultiLayerNet(4, [5], 3, dtype="float64")
    net.params["shift1"] = np.zeros(5)
    net.layers["Centered1"] = _Centered(net.params["shift1"])
    net.layers.move_to_end("Centered1", last=False)  # any position will do: after Affine1
    net.layers.move_to_end("Affine1", last=False)
    return net


def test_a_declared_layer_joins_the_registry_without_a_private_call(tmp_path):
    net = _net_with_centered()
    assert list(net.layers)[:2] == ["Affine1", "Centered1"]
    assert list(net.named_params()) == ["W1", "b1", "W2", "b2", "shift1"]
    assert net.named_buffers() == {}  # created at the first forward pass
    x, t = _batch(np.random.default_rng(0), 6, (4,), 3)
    grads = net.gradient(x, t)
    assert net.layers["Centered1"].flags == [True]  # train_flg reached it
    net.predict(x)
    assert net.layers["Centered1"].flags == [True, False]
    np.testing.assert_allclose(grads["shift1"], net.layers["Centered1"].dshift)
    assert list(net.named_buffers()) == ["Centered1.running_mean"]
    # saved with the parameters under the parameter-file key, and loaded back in place
    path = net.save_params(tmp_path / "p.npz")
    saved = np.load(path)
    assert "running_mean1" in saved.files
    other = _net_with_centered(seed=1)
    other.predict(x)
    held = other.layers["Centered1"].running_mean
    other.load_params(path)
    assert other.layers["Centered1"].running_mean is held
    np.testing.assert_array_equal(held, net.layers["Centered1"].running_mean)


def test_the_books_batchnorm_statistics_have_one_name_in_the_registry():
    xpnet.seed(0)
    net = MultiLayerNetExtend(4, [5, 5], 3, use_batchnorm=True)
    net.gradient(*_batch(np.random.default_rng(0), 6, (4,), 3))
    buffers = net.named_buffers()
    assert set(buffers) == {f"BatchNorm{i}.{a}" for i in (1, 2)
                            for a in ("running_mean", "running_var")}
    assert buffers["BatchNorm2.running_var"] is net.layers["BatchNorm2"].running_var
    assert set(net.state_arrays()) - set(net.params) == {
        "running_mean1", "running_var1", "running_mean2", "running_var2"}  # as on disk


class _BookStyleAffine:
    """A layer as the book writes one: W and b, no declarations, forward(x)."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def forward(self, x):
        self.x = x
        return x @ self.W + self.b

    def backward(self, dout):
        self.dW, self.db = self.x.T @ dout, dout.sum(axis=0)
        return dout @ self.W.T


class _BookStyleScale:
    """The book's way of taking train_flg: in forward's signature, nothing declared."""

    def __init__(self):
        self.seen = []

    def forward(self, x, train_flg=True):
        self.seen.append(train_flg)
        return x * (2.0 if train_flg else 1.0)

    def backward(self, dout):
        return 2.0 * dout


def test_undeclared_layers_are_read_as_the_book_wrote_them():
    xpnet.seed(0)
    net = TwoLayerNet(4, 5, 3, dtype="float64")
    net.layers["Affine2"] = _BookStyleAffine(net.params["W2"], net.params["b2"])
    net.layers["Scale"] = _BookStyleScale()
    x, t = _batch(np.random.default_rng(1), 6, (4,), 3)
    _check_gradients(net, x, t)
    assert set(net.layers["Scale"].seen) == {True}
    net.predict(x)
    assert net.layers["Scale"].seen[-1] is False


def test_a_parameter_no_layer_holds_is_named():
    net = TwoLayerNet(4, 5, 3)
    net.params["W9"] = np.zeros((2, 2), np.float32)
    with pytest.raises(RuntimeError, match=r"\['W9'\] are in no layer.*param_names"):
        net.named_params()


def test_the_flop_model_follows_a_layers_output_shape():
    from xpnet.flops import forward_gemms

    class FirstThree:
        """Keeps the first three features: (N, D) -> (N, 3)."""

        def forward(self, x):
            return x[:, :3]

        def backward(self, dout):
            raise NotImplementedError

        def output_shape(self, input_shape):
            return (3,)

    xpnet.seed(0)
    net = MultiLayerNet(4, [5], 2)
    net.params["W2"] = np.zeros((3, 2), np.float32)
    net.layers["Affine2"] = Affine(net.params["W2"], net.params["b2"])
    net.layers["First3"] = FirstThree()
    net.layers.move_to_end("Affine2")
    gemms = forward_gemms(net, batch_size=10)
    assert [(g.m, g.n, g.k) for g in gemms] == [(10, 5, 4), (10, 2, 3)]

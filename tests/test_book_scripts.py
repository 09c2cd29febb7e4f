"""The book's own code, run against xpnet with only its imports changed.

Each class and loop below is the book's (``ch03``-``ch05``), written as the book
writes it -- ``np.random.randn`` weights, ``OrderedDict`` layers, ``lambda W:
net.loss(x, t)`` -- with ``common.*`` imports replaced by ``xpnet.*``.
"""

from collections import OrderedDict

import numpy as np
import pytest

from xpnet.functions import cross_entropy_error, identity_function, sigmoid, sigmoid_grad, softmax
from xpnet.gradient import numerical_gradient, relative_error
from xpnet.layers import Affine, Relu, SoftmaxWithLoss

# ---------------------------------------------------------------------------
# ch03/neuralnet: a hand-made three-layer forward pass
# ---------------------------------------------------------------------------


def init_network():
    network = {}
    network["W1"] = np.array([[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]])
    network["b1"] = np.array([0.1, 0.2, 0.3])
    network["W2"] = np.array([[0.1, 0.4], [0.2, 0.5], [0.3, 0.6]])
    network["b2"] = np.array([0.1, 0.2])
    network["W3"] = np.array([[0.1, 0.3], [0.2, 0.4]])
    network["b3"] = np.array([0.1, 0.2])
    return network


def forward(network, x):
    W1, W2, W3 = network["W1"], network["W2"], network["W3"]
    b1, b2, b3 = network["b1"], network["b2"], network["b3"]
    a1 = np.dot(x, W1) + b1
    z1 = sigmoid(a1)
    a2 = np.dot(z1, W2) + b2
    z2 = sigmoid(a2)
    a3 = np.dot(z2, W3) + b3
    return identity_function(a3)


def test_ch03_three_layer_forward():
    y = forward(init_network(), np.array([1.0, 0.5]))
    np.testing.assert_allclose(y, [0.31682708, 0.69627909], rtol=1e-7)


# ---------------------------------------------------------------------------
# ch04/gradient_simplenet.py
# ---------------------------------------------------------------------------


class simpleNet:  # noqa: N801 - the book's name
    def __init__(self):
        self.W = np.random.randn(2, 3)  # noqa: NPY002 - the book's call

    def predict(self, x):
        return np.dot(x, self.W)

    def loss(self, x, t):
        z = self.predict(x)
        y = softmax(z)
        loss = cross_entropy_error(y, t)
        return loss


def test_ch04_simple_net_book_numbers():
    net = simpleNet()
    # The weights the book prints in 4.4.2, so its printed results can be compared.
    net.W = np.array([[0.47355232, 0.9977393, 0.84668094], [0.85557411, 0.03563661, 0.69422093]])
    x = np.array([0.6, 0.9])
    p = net.predict(x)
    np.testing.assert_allclose(p, [1.05414809, 0.63071653, 1.1328074], rtol=1e-7)
    assert np.argmax(p) == 2
    t = np.array([0, 0, 1])
    assert net.loss(x, t) == pytest.approx(0.92806853663411326, rel=1e-6)

    def f(W):
        return net.loss(x, t)

    dW = numerical_gradient(f, net.W)
    np.testing.assert_allclose(
        dW, [[0.21924763, 0.14356247, -0.36281009], [0.32887144, 0.2153437, -0.54421514]],
        rtol=1e-6,
    )


# ---------------------------------------------------------------------------
# ch04/two_layer_net.py: functions, numerical and analytic gradients
# ---------------------------------------------------------------------------


class TwoLayerNetCh04:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        self.params = {}
        self.params["W1"] = weight_init_std * np.random.randn(input_size, hidden_size)  # noqa: NPY002
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * np.random.randn(hidden_size, output_size)  # noqa: NPY002
        self.params["b2"] = np.zeros(output_size)

    def predict(self, x):
        W1, W2 = self.params["W1"], self.params["W2"]
        b1, b2 = self.params["b1"], self.params["b2"]
        a1 = np.dot(x, W1) + b1
        z1 = sigmoid(a1)
        a2 = np.dot(z1, W2) + b2
        y = softmax(a2)
        return y

    def loss(self, x, t):
        y = self.predict(x)
        return cross_entropy_error(y, t)

    def numerical_gradient(self, x, t):
        loss_W = lambda W: self.loss(x, t)  # noqa: E731 - the book's
        grads = {}
        grads["W1"] = numerical_gradient(loss_W, self.params["W1"])
        grads["b1"] = numerical_gradient(loss_W, self.params["b1"])
        grads["W2"] = numerical_gradient(loss_W, self.params["W2"])
        grads["b2"] = numerical_gradient(loss_W, self.params["b2"])
        return grads

    def gradient(self, x, t):
        W1, W2 = self.params["W1"], self.params["W2"]
        b1, b2 = self.params["b1"], self.params["b2"]
        grads = {}
        batch_num = x.shape[0]
        a1 = np.dot(x, W1) + b1
        z1 = sigmoid(a1)
        a2 = np.dot(z1, W2) + b2
        y = softmax(a2)
        dy = (y - t) / batch_num
        grads["W2"] = np.dot(z1.T, dy)
        grads["b2"] = np.sum(dy, axis=0)
        da1 = np.dot(dy, W2.T)
        dz1 = sigmoid_grad(a1) * da1
        grads["W1"] = np.dot(x.T, dz1)
        grads["b1"] = np.sum(dz1, axis=0)
        return grads


def test_ch04_two_layer_net_numerical_vs_analytic():
    net = TwoLayerNetCh04(input_size=12, hidden_size=6, output_size=3, weight_init_std=0.5)
    x = np.random.rand(5, 12)  # noqa: NPY002
    t = np.eye(3)[[0, 2, 1, 1, 0]]
    num = net.numerical_gradient(x, t)
    ana = net.gradient(x, t)
    for key in ("W1", "b1", "W2", "b2"):
        # The book's loss adds 1e-7 inside the log, which its analytic gradient ignores;
        # with ~1/3 probabilities that is a relative difference of about 3e-7.
        assert relative_error(num[key], ana[key]) < 1e-6, key


# ---------------------------------------------------------------------------
# ch05/two_layer_net.py: a layer-by-layer network from xpnet.layers
# ---------------------------------------------------------------------------


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        # 初始化权重
        self.params = {}
        self.params["W1"] = weight_init_std * np.random.randn(input_size, hidden_size)  # noqa: NPY002
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * np.random.randn(hidden_size, output_size)  # noqa: NPY002
        self.params["b2"] = np.zeros(output_size)

        # 生成层
        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])

        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        y = self.predict(x)
        return self.lastLayer.forward(y, t)

    def accuracy(self, x, t):
        y = self.predict(x)
        y = np.argmax(y, axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        accuracy = np.sum(y == t) / float(x.shape[0])
        return accuracy

    def numerical_gradient(self, x, t):
        loss_W = lambda W: self.loss(x, t)  # noqa: E731 - the book's
        grads = {}
        grads["W1"] = numerical_gradient(loss_W, self.params["W1"])
        grads["b1"] = numerical_gradient(loss_W, self.params["b1"])
        grads["W2"] = numerical_gradient(loss_W, self.params["W2"])
        grads["b2"] = numerical_gradient(loss_W, self.params["b2"])
        return grads

    def gradient(self, x, t):
        # forward
        self.loss(x, t)
        # backward
        dout = 1
        dout = self.lastLayer.backward(dout)
        layers = list(self.layers.values())
        layers.reverse()
        for layer in layers:
            dout = layer.backward(dout)
        grads = {}
        grads["W1"], grads["b1"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
        grads["W2"], grads["b2"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
        return grads


def _gradient_check(network, x_batch, t_batch):
    """ch05/gradient_check.py: returns {key: (mean |diff|, relative error)}."""
    grad_numerical = network.numerical_gradient(x_batch, t_batch)
    grad_backprop = network.gradient(x_batch, t_batch)
    result = {}
    for key in grad_numerical.keys():
        diff = np.average(np.abs(grad_backprop[key] - grad_numerical[key]))
        result[key] = (diff, relative_error(grad_backprop[key], grad_numerical[key]))
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("targets", ["onehot", "labels"])
def test_ch05_layer_network_gradient_check(seed, targets):
    np.random.seed(seed)  # noqa: NPY002 - the book seeds NumPy's global generator
    input_size, hidden, classes, batch = 20, 8, 4, 3
    network = TwoLayerNet(input_size=input_size, hidden_size=hidden, output_size=classes,
                          weight_init_std=0.5)
    x_batch = np.random.rand(batch, input_size)  # noqa: NPY002
    labels = np.random.randint(0, classes, size=batch)  # noqa: NPY002
    t_batch = np.eye(classes)[labels] if targets == "onehot" else labels
    for key, (diff, rel) in _gradient_check(network, x_batch, t_batch).items():
        assert rel < 1e-6 and diff < 1e-9, (key, diff, rel)
    # numerical_gradient restored every weight exactly: backprop again gives the same loss
    assert network.layers["Affine1"].W is network.params["W1"]


def test_ch05_gradient_check_float32_images_float64_weights():
    # The book's gradient_check.py feeds float32 images (load_mnist) to float64 weights
    # (np.random.randn); the layers compute in the promoted float64, so the book's tiny
    # differences come out (a float32 numerical gradient with h=1e-4 could not).
    np.random.seed(3)  # noqa: NPY002
    network = TwoLayerNet(input_size=30, hidden_size=10, output_size=10)
    x_batch = np.random.rand(3, 30).astype(np.float32)  # noqa: NPY002
    t_batch = np.eye(10)[[1, 7, 3]]
    assert network.predict(x_batch).dtype == np.float64
    for key, (diff, rel) in _gradient_check(network, x_batch, t_batch).items():
        assert rel < 1e-6 and diff < 1e-9, (key, diff, rel)


@pytest.mark.slow
def test_ch05_train_neuralnet_on_real_digits(mnist10k_dir):
    from xpnet.datasets import load_idx_pair

    x, t = load_idx_pair(
        mnist10k_dir / "images-idx3-ubyte.gz", mnist10k_dir / "labels-idx1-ubyte.gz",
        normalize=True, one_hot_label=True,
    )
    x_train, t_train, x_test, t_test = x[:8000], t[:8000], x[8000:], t[8000:]
    np.random.seed(0)  # noqa: NPY002
    network = TwoLayerNet(input_size=784, hidden_size=50, output_size=10)

    # ch05/train_neuralnet.py, shortened from 10,000 to 400 iterations
    iters_num, train_size, batch_size, learning_rate = 400, x_train.shape[0], 100, 0.1
    train_loss_list = []
    for _ in range(iters_num):
        batch_mask = np.random.choice(train_size, batch_size)  # noqa: NPY002
        x_batch = x_train[batch_mask]
        t_batch = t_train[batch_mask]
        grad = network.gradient(x_batch, t_batch)
        for key in ("W1", "b1", "W2", "b2"):
            network.params[key] -= learning_rate * grad[key]
        train_loss_list.append(float(network.lastLayer.loss))  # the loss gradient() computed

    assert np.mean(train_loss_list[:5]) > 2.0  # starts near ln(10) = 2.30
    assert np.mean(train_loss_list[-50:]) < 0.6
    test_acc = network.accuracy(x_test, t_test)
    print(f"test accuracy after {iters_num} iterations: {test_acc:.4f}")
    assert test_acc > 0.85, test_acc


@pytest.mark.parametrize("dtype", [None, np.float64])
def test_ch05_gradient_check_script_on_xpnet_two_layer_net(dtype):
    # ch05/gradient_check.py with the network imported from xpnet.models instead
    from xpnet.models import TwoLayerNet as XpnetTwoLayerNet

    kwargs = {} if dtype is None else {"dtype": dtype}  # None: xpnet's default, float32
    network = XpnetTwoLayerNet(input_size=20, hidden_size=8, output_size=10, **kwargs)
    x_batch = np.random.default_rng(4).random((3, 20)).astype(np.float32)
    t_batch = np.eye(10)[[1, 7, 3]]
    # float32 backprop itself is only good to ~1e-8 absolute; the book's threshold is 1e-6
    max_diff = 1e-9 if dtype == np.float64 else 1e-6
    for key, (diff, rel) in _gradient_check(network, x_batch, t_batch).items():
        assert rel < 1e-6 and diff < max_diff, (key, diff, rel)

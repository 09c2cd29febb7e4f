"""The book's pretrained weights give the book's accuracies on 10,000 real MNIST digits.

The figures are those of the book's own (float64 NumPy) implementation on the same digits:
93.74% (ch. 3 sample weights), 96.00% (SimpleConvNet), 97.58% (DeepConvNet). They are
checked to the digit -- the same number of correct answers out of 10,000 -- so a single
prediction that differs from the book's would fail the test. xpnet's networks run in
float32 here (their default): with these weights float32 changes none of the predictions
of the float64 computation.
"""

import numpy as np
import pytest

from xpnet.datasets import load_idx_pair
from xpnet.models import DeepConvNet, SimpleConvNet, ThreeLayerNet, init_network, predict


def _mnist10k(directory, flatten):
    return load_idx_pair(
        directory / "images-idx3-ubyte.gz", directory / "labels-idx1-ubyte.gz", flatten=flatten
    )


def _correct(accuracy, n):
    """The number of right answers behind an accuracy over n samples."""
    return int(round(accuracy * n))


def test_ch03_sample_weights(book_fixture, mnist10k_dir):
    x, t = _mnist10k(mnist10k_dir, flatten=True)  # float32 in [0, 1]: the book's /255
    assert x.dtype == np.float32 and x.shape == (10000, 784)
    path = book_fixture("ch03_sample_weight.pkl")

    # the book's neuralnet_mnist.py, function by function
    network = init_network(path)
    y = np.concatenate([predict(network, x[i : i + 100]) for i in range(0, len(x), 100)])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    assert int(np.sum(np.argmax(y, axis=1) == t)) == 9374

    # the same weights in the layered network
    net = ThreeLayerNet()
    net.load_params(path)
    assert net.params["W1"].dtype == np.float32
    assert _correct(net.accuracy(x, t), len(t)) == 9374


def test_simple_conv_net(book_fixture, mnist10k_dir):
    x, t = _mnist10k(mnist10k_dir, flatten=False)
    net = SimpleConvNet()
    net.load_params(book_fixture("ch07_simple_convnet_params.pkl"))  # float64 pickle
    assert net.params["W1"].dtype == np.float32
    assert _correct(net.accuracy(x, t), len(t)) == 9600


@pytest.mark.slow
def test_deep_conv_net(book_fixture, mnist10k_dir):
    x, t = _mnist10k(mnist10k_dir, flatten=False)
    net = DeepConvNet()
    net.load_params(book_fixture("ch08_deep_convnet_params.pkl"))
    assert _correct(net.accuracy(x, t), len(t)) == 9758


@pytest.mark.slow
def test_deep_conv_net_float16(book_fixture, mnist10k_dir):
    """Book 8.3.4: half precision keeps the accuracy (within 0.1 points of 97.58%)."""
    x, t = _mnist10k(mnist10k_dir, flatten=False)
    net = DeepConvNet(dtype=np.float16)
    net.load_params(book_fixture("ch08_deep_convnet_params.pkl"))
    assert all(p.dtype == np.float16 for p in net.params.values())
    assert net.predict(x[:2]).dtype == np.float16  # float16 all the way, not upcast
    acc16 = net.accuracy(x, t)
    print(f"\nDeepConvNet in float16 on mnist-10k: {acc16:.2%} (float64: 97.58%)")
    assert abs(acc16 - 0.9758) <= 0.001

"""TwoLayerNet learns Fashion-MNIST by backpropagation, as the book trains it on MNIST.

The book's ch05/train_neuralnet.py, with its settings: SGD with learning rate 0.1,
mini-batches of 100 drawn at random each step, 10,000 iterations. A plain loop and the
book's update ``params[key] -= lr * grads[key]``, so that only the network is under test.
Run with ``-s`` to see the figure.
"""

import numpy as np
import pytest

from xpnet.datasets import load_mnist
from xpnet.models import TwoLayerNet
from xpnet.threads import num_threads

ITERS_NUM = 10000
BATCH_SIZE = 100
LEARNING_RATE = 0.1


def _train(network, x_train, t_train, rng):
    """The book's training loop; returns the loss of every step."""
    losses = np.empty(ITERS_NUM)
    for i in range(ITERS_NUM):
        batch_mask = rng.choice(x_train.shape[0], BATCH_SIZE)  # with replacement, as the book
        grads = network.gradient(x_train[batch_mask], t_train[batch_mask])
        for key in ("W1", "b1", "W2", "b2"):
            network.params[key] -= LEARNING_RATE * grads[key]
        losses[i] = float(network.last_loss)  # the loss of that step's forward pass
    return losses


@pytest.mark.slow
def test_two_layer_net_learns_fashion_mnist(fashion_dir):
    (x_train, t_train), (x_test, t_test) = load_mnist(
        normalize=True, one_hot_label=True, dataset="fashion-mnist", data_dir=fashion_dir,
        download=False,
    )
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)

    network = TwoLayerNet(input_size=784, hidden_size=50, output_size=10)
    # One thread: products of a 100-row batch are too small to pay for BLAS threads, whose
    # hand-offs cost more than the work (far more when other processes share the cores).
    with num_threads(1):
        losses = _train(network, x_train, t_train, np.random.default_rng(0))
        train_acc = network.accuracy(x_train, t_train)
        test_acc = network.accuracy(x_test, t_test)
    print(
        f"\nTwoLayerNet(784, 50, 10) on Fashion-MNIST after {ITERS_NUM} SGD steps: "
        f"train {train_acc:.2%}, test {test_acc:.2%}; mean loss of the first 100 steps "
        f"{losses[:100].mean():.3f}, of the last 100 {losses[-100:].mean():.3f}"
    )
    assert network.params["W1"].dtype == np.float32  # trained in xpnet's default dtype
    assert losses[-100:].mean() < 0.5 * losses[:100].mean()
    assert test_acc >= 0.84

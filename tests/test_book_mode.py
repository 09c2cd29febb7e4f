"""``xpnet book``: scripts written in the book's style, run unchanged, print the book's numbers.

Each script below uses the book's imports and calls (``from common.trainer import
Trainer``, ``np.random.randn`` weights in a local module, ...) -- written for these tests,
not copied from the book. What they print is compared with the same computation done
here in plain NumPy with the book's formulas and the book's random draws, after the same
``np.random.seed``: accuracies equal, losses within 1e-4 relative, gradient-check
differences no larger than the book's.
"""

# ruff: noqa: NPY002 - the book's random source is NumPy's global state; the reference uses it

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_cli import write_idx

import xpnet
from xpnet import backend, book
from xpnet.datasets import load_mnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    """Standard MNIST IDX files of a small learnable problem (300 train, 100 test)."""
    return write_idx(tmp_path_factory.mktemp("mnist"))


def write_script(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def run_cli(*argv, module="xpnet"):
    """Run ``python -m <module> book ...`` (or ``python -m xpnet.book ...``) in a fresh
    process, with this checkout first on the path; return its stdout."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", module, *([] if module == "xpnet.book" else ["book"])]
    done = subprocess.run(
        [*cmd, *map(str, argv)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def run_here(capsys, script, seed, data_dir):
    """The same run in this process (cheaper than a new interpreter); its stdout."""
    capsys.readouterr()
    book.run_script(script, seed=seed, data_dir=data_dir)
    return capsys.readouterr().out


# ---------------------------------------------------------------------------
# The plain NumPy reference: the book's formulas, the book's draws
# ---------------------------------------------------------------------------


def softmax(a):
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(y, t):
    """The book's cross_entropy_error for labels t (with its 1e-7 inside the log)."""
    return -np.sum(np.log(y[np.arange(len(t)), t] + 1e-7)) / len(t)


class ReferenceMLP:
    """Affine-ReLU-Affine-softmax with He weights drawn as the book's MultiLayerNet does."""

    def __init__(self, sizes, init_std="he"):
        self.W, self.b = [], []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            std = np.sqrt(2.0 / n_in) if init_std == "he" else init_std
            self.W.append(std * np.random.randn(n_in, n_out))
            self.b.append(np.zeros(n_out))

    def scores(self, x):
        a = x @ self.W[0] + self.b[0]
        return a, np.maximum(a, 0), np.maximum(a, 0) @ self.W[1] + self.b[1]

    def loss(self, x, t):
        return cross_entropy(softmax(self.scores(x)[2]), t)

    def accuracy(self, x, t):
        return np.sum(self.scores(x)[2].argmax(axis=1) == t) / float(len(x))

    def gradient(self, x, t):
        a, h, s = self.scores(x)
        ds = softmax(s)
        ds[np.arange(len(t)), t] -= 1
        ds /= len(t)
        dh = ds @ self.W[1].T
        dh[a <= 0] = 0
        return {"W1": x.T @ dh, "b1": dh.sum(axis=0), "W2": h.T @ ds, "b2": ds.sum(axis=0)}

    def params(self):
        return {"W1": self.W[0], "b1": self.b[0], "W2": self.W[1], "b2": self.b[1]}


def numerical_gradient(f, x):
    """Central differences, h = 1e-4, as the book's."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        keep = x[idx]
        x[idx] = keep + 1e-4
        up = f()
        x[idx] = keep - 1e-4
        down = f()
        x[idx] = keep
        grad[idx] = (up - down) / 2e-4
    return grad


# ---------------------------------------------------------------------------
# The Trainer: the book's mini-batches, schedule, evaluation and printing
# ---------------------------------------------------------------------------

TRAINER_SCRIPT = """
    # coding: utf-8
    import sys, os
    sys.path.append(os.pardir)
    import numpy as np
    from dataset.mnist import load_mnist
    from common.multi_layer_net import MultiLayerNet
    from common.trainer import Trainer

    (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True)
    x_train, t_train = x_train[:200], t_train[:200]

    network = MultiLayerNet(input_size=784, hidden_size_list=[20], output_size=10)
    trainer = Trainer(network, x_train, t_train, x_test, t_test, epochs=3,
                      mini_batch_size=50, optimizer='sgd', optimizer_param={'lr': 0.1})
    trainer.train()
"""


def reference_training(mnist_dir, seed, epochs=3, batch=50, lr=0.1):
    (x_train, t_train), (x_test, t_test) = load_mnist(data_dir=mnist_dir, download=False)
    x_train, t_train = x_train[:200].astype(np.float64), t_train[:200]
    x_test = x_test.astype(np.float64)
    np.random.seed(seed)
    net = ReferenceMLP([784, 20, 10])
    iter_per_epoch = max(len(x_train) / batch, 1)
    losses, epochs_seen = [], []
    for step in range(int(epochs * iter_per_epoch)):
        mask = np.random.choice(len(x_train), batch)
        x, t = x_train[mask], t_train[mask]
        grads = net.gradient(x, t)
        for key, p in net.params().items():
            p -= lr * grads[key]
        losses.append(net.loss(x, t))  # the updated network, on the same batch
        if step % iter_per_epoch == 0:  # after the first step of each epoch
            epochs_seen.append((net.accuracy(x_train, t_train), net.accuracy(x_test, t_test)))
    return losses, epochs_seen, net.accuracy(x_test, t_test)


def parse_trainer_output(out):
    losses, epochs, final = [], [], None
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("train loss:"):
            losses.append(float(line.split(":")[1]))
        elif line.startswith("=== epoch:"):
            fields = dict(f.split(":") for f in line.strip("= ").split(", "))
            epochs.append((float(fields["train acc"]), float(fields["test acc"])))
        elif line.startswith("=============== Final Test Accuracy"):
            final = float(lines[i + 1].split(":")[1])
    return losses, epochs, final


@pytest.mark.parametrize("seed", [0, 7])
def test_trainer_script_prints_the_books_numbers(tmp_path, mnist_dir, seed, capsys):
    script = write_script(tmp_path, "train_mlp.py", TRAINER_SCRIPT)
    if seed == 0:  # through the command line once
        out = run_cli("--seed", seed, "--data-dir", mnist_dir, script)
    else:
        out = run_here(capsys, script, seed, mnist_dir)
    losses, epochs, final = parse_trainer_output(out)
    ref_losses, ref_epochs, ref_final = reference_training(mnist_dir, seed)
    assert len(losses) == len(ref_losses) == 12  # int(3 epochs * 200 / 50) steps
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)
    assert epochs == ref_epochs  # evaluated after steps 0, 4 and 8, as the book does
    assert final == ref_final
    assert len(set(losses)) > 1 and ref_final > 0.1  # it trained on something


def test_same_seed_same_run_through_python_m_xpnet_book(tmp_path, mnist_dir):
    # both in fresh processes: this one's BLAS threads may have been changed by other tests,
    # and a product summed on another number of threads can differ in its last digit
    script = write_script(tmp_path, "train_mlp.py", TRAINER_SCRIPT)
    first = run_cli("--seed", 3, "--data-dir", mnist_dir, script, module="xpnet.book")
    second = run_cli("--seed", 3, "--data-dir", mnist_dir, script)
    assert first == second and "test acc:" in first


# ---------------------------------------------------------------------------
# A local module of the script's folder, built on the served layers: a gradient check
# ---------------------------------------------------------------------------

LOCAL_NET = """
    # coding: utf-8
    import sys, os
    sys.path.append(os.pardir)
    import numpy as np
    from common.layers import *
    from common.gradient import numerical_gradient
    from collections import OrderedDict


    class TwoLayerNet:

        def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
            self.params = {}
            self.params['W1'] = weight_init_std * np.random.randn(input_size, hidden_size)
            self.params['b1'] = np.zeros(hidden_size)
            self.params['W2'] = weight_init_std * np.random.randn(hidden_size, output_size)
            self.params['b2'] = np.zeros(output_size)
            self.layers = OrderedDict()
            self.layers['Affine1'] = Affine(self.params['W1'], self.params['b1'])
            self.layers['Relu1'] = Relu()
            self.layers['Affine2'] = Affine(self.params['W2'], self.params['b2'])
            self.lastLayer = SoftmaxWithLoss()

        def predict(self, x):
            for layer in self.layers.values():
                x = layer.forward(x)
            return x

        def loss(self, x, t):
            return self.lastLayer.forward(self.predict(x), t)

        def numerical_gradient(self, x, t):
            loss_W = lambda W: self.loss(x, t)
            return {key: numerical_gradient(loss_W, self.params[key])
                    for key in ('W1', 'b1', 'W2', 'b2')}

        def gradient(self, x, t):
            self.loss(x, t)
            dout = self.lastLayer.backward(1)
            for layer in reversed(list(self.layers.values())):
                dout = layer.backward(dout)
            return {'W1': self.layers['Affine1'].dW, 'b1': self.layers['Affine1'].db,
                    'W2': self.layers['Affine2'].dW, 'b2': self.layers['Affine2'].db}
"""

GRADIENT_CHECK_SCRIPT = """
    # coding: utf-8
    import sys, os
    sys.path.append(os.pardir)
    import numpy as np
    from dataset.mnist import load_mnist
    from two_layer_net import TwoLayerNet

    (x_train, t_train), (x_test, t_test) = load_mnist(normalize=True, one_hot_label=True)
    network = TwoLayerNet(input_size=784, hidden_size=3, output_size=10, weight_init_std=0.1)
    x_batch = x_train[:3]
    t_batch = t_train[:3]

    grad_numerical = network.numerical_gradient(x_batch, t_batch)
    grad_backprop = network.gradient(x_batch, t_batch)

    for key in grad_numerical.keys():
        diff = np.average(np.abs(grad_backprop[key] - grad_numerical[key]))
        print(key + ":" + str(diff))
"""


def test_gradient_check_with_the_scripts_own_module(tmp_path, mnist_dir, capsys):
    write_script(tmp_path, "two_layer_net.py", LOCAL_NET)
    script = write_script(tmp_path, "gradient_check.py", GRADIENT_CHECK_SCRIPT)
    out = run_here(capsys, script, 1, mnist_dir)
    diffs = {k: float(v) for k, v in (line.split(":") for line in out.splitlines())}
    assert list(diffs) == ["W1", "b1", "W2", "b2"]

    (x_train, t_train), _ = load_mnist(data_dir=mnist_dir, download=False)
    x, t = x_train[:3].astype(np.float64), t_train[:3]
    np.random.seed(1)
    net = ReferenceMLP([784, 3, 10], init_std=0.1)
    analytic = net.gradient(x, t)
    for key, p in net.params().items():
        numeric = numerical_gradient(lambda: net.loss(x, t), p)
        book_diff = np.average(np.abs(analytic[key] - numeric))
        # xpnet's exact log-softmax loss: no 1e-7 bias in the numerical gradient
        assert diffs[key] <= book_diff, (key, diffs[key], book_diff)
        assert diffs[key] < 1e-6


# ---------------------------------------------------------------------------
# Draws in the book's order: shuffle_dataset, weights, Dropout masks
# ---------------------------------------------------------------------------

DROPOUT_SCRIPT = """
    import numpy as np
    from common.util import shuffle_dataset
    from common.multi_layer_net_extend import MultiLayerNetExtend

    x = np.arange(24, dtype=np.float64).reshape(6, 4) / 24
    t = np.array([0, 1, 2, 0, 1, 2])
    x, t = shuffle_dataset(x, t)
    network = MultiLayerNetExtend(4, [5], 3, use_dropout=True, dropout_ration=0.5)
    grads = network.gradient(x, t)
    mask = network.layers['Dropout1'].mask
"""


def test_shuffle_weights_and_dropout_masks_are_the_books_draws(tmp_path):
    script = write_script(tmp_path, "dropout.py", DROPOUT_SCRIPT)
    run = book.run_script(script, seed=11)

    np.random.seed(11)
    permutation = np.random.permutation(6)
    W1 = np.sqrt(2.0 / 4) * np.random.randn(4, 5)
    W2 = np.sqrt(2.0 / 5) * np.random.randn(5, 3)
    mask = np.random.rand(6, 5) > 0.5
    np.testing.assert_array_equal(run["t"], np.array([0, 1, 2, 0, 1, 2])[permutation])
    net = run["network"]
    np.testing.assert_array_equal(net.params["W1"], W1)
    np.testing.assert_array_equal(net.params["W2"], W2)
    assert all(p.dtype == np.float64 for p in net.params.values())
    np.testing.assert_array_equal(run["mask"], mask)


# ---------------------------------------------------------------------------
# Module semantics and the run's surroundings
# ---------------------------------------------------------------------------

NAMES_SCRIPT = """
    import sys
    from common.optimizer import *
    from common.layers import *
    import common.util
    args, name = sys.argv, __name__
    served = np, Convolution, cross_entropy_error, im2col, Adam
    util_names = sorted(n for n in vars(common.util) if not n.startswith('_'))
"""


def test_star_imports_bring_the_books_names_and_argv_is_the_scripts(tmp_path):
    script = write_script(tmp_path, "names.py", NAMES_SCRIPT)
    run = book.run_script(script, ["--lr", "0.1"])
    assert run["args"] == [str(script), "--lr", "0.1"] and run["name"] == "__main__"
    np_, conv, cee, im2col, adam = run["served"]
    import xpnet.layers
    import xpnet.optimizers

    assert np_ is np and conv is xpnet.layers.Convolution and adam is xpnet.optimizers.Adam
    assert run["util_names"] == sorted(
        ["np", "smooth_curve", "shuffle_dataset", "conv_output_size", "im2col", "col2im"]
    )


def test_a_run_leaves_everything_as_it_was(tmp_path):
    write_script(tmp_path, "helper.py", "VALUE = 1\n")
    script = write_script(tmp_path, "uses_helper.py", "import helper\nimport common.layers\n")
    dtype = xpnet.get_default_dtype()
    xpnet.seed(5)
    expected = np.random.default_rng(5).random(3)
    book.run_script(script)
    assert not any(n == "common" or n.startswith(("common.", "dataset")) for n in sys.modules)
    assert "helper" not in sys.modules and str(tmp_path) not in sys.path
    assert not any(isinstance(f, book.BookImporter) for f in sys.meta_path)
    assert xpnet.get_default_dtype() == dtype
    np.testing.assert_array_equal(backend.get_rng(np).random(3), expected)


def test_missing_script_and_script_errors(tmp_path, capsys):
    from xpnet import cli

    assert cli.main(["book", str(tmp_path / "nope.py")]) == 2
    assert "no such script" in capsys.readouterr().err
    script = write_script(tmp_path, "fails.py", "raise KeyError('W9')\n")
    assert cli.main(["book", str(script)]) == 1
    assert "KeyError: 'W9'" in capsys.readouterr().err

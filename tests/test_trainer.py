"""Trainer: the book's loop and lists, one forward pass per step, batched evaluation,
seeding, bad input, and NaN detection."""

import numpy as np
import pytest
from trainer_nets import TinyNet, toy_data

import xpnet
from xpnet.trainer import Trainer, TrainingDivergedError


@pytest.fixture
def data():
    x, t = toy_data()
    return x[:200], t[:200], x[200:], t[200:]


def make(data, net=None, **kw):
    kw.setdefault("verbose", False)
    return Trainer(net or TinyNet(), *data, **kw)


def test_training_reduces_loss_and_fills_the_lists(data):
    tr = make(data, epochs=5, mini_batch_size=20, optimizer="adam", optimizer_param={"lr": 0.05})
    first_acc = tr.accuracy(tr.x_test, tr.t_test)
    history = tr.train()
    assert tr.iter_per_epoch == 10 and tr.max_iter == 50 and tr.current_epoch == 5
    assert len(tr.train_loss_list) == 50
    assert all(isinstance(v, float) for v in tr.train_loss_list)
    assert len(tr.train_acc_list) == len(tr.test_acc_list) == 5
    assert np.mean(tr.train_loss_list[-10:]) < 0.6 * np.mean(tr.train_loss_list[:10])
    assert tr.test_acc_list[-1] > max(first_acc, 0.8)
    assert tr.final_test_acc == pytest.approx(tr.test_acc_list[-1])
    assert history["train_loss_list"] == tr.train_loss_list
    assert history["optimizer"] == "Adam" and history["optimizer_param"]["lr"] == 0.05
    assert len(history["epoch_seconds"]) == 5 and all(s > 0 for s in history["epoch_seconds"])


def test_an_epoch_covers_the_training_set(data):
    x, t, xt, tt = data
    tr = Trainer(TinyNet(), x[:105], t[:105], xt, tt, epochs=2, mini_batch_size=20, verbose=False)
    assert tr.iter_per_epoch == 6  # ceil(105 / 20)
    tr.train()
    assert len(tr.train_loss_list) == 12 and len(tr.test_acc_list) == 2


def test_the_books_default_optimizer_param(data):
    assert make(data).optimizer.lr == 0.01
    # as in the book, optimizer_param defaults to {'lr': 0.01} whichever optimizer is named
    assert make(data, optimizer="Adam").optimizer.lr == 0.01
    assert make(data, optimizer="momentum", optimizer_param={"lr": 0.1}).optimizer.momentum == 0.9


def test_loss_comes_from_gradient_without_a_second_forward_pass(data):
    net = TinyNet()
    make(data, net, epochs=1, mini_batch_size=50).train()
    assert net.calls["gradient"] == 4
    assert net.calls["loss"] == 0


def test_network_without_last_loss_falls_back_to_loss(data):
    net = TinyNet(report_loss=False)
    tr = make(data, net, epochs=1, mini_batch_size=50)
    tr.train()
    assert net.calls["loss"] == 4 and len(tr.train_loss_list) == 4


def test_evaluation_runs_in_batches(data):
    net = TinyNet()
    tr = make(data, net, epochs=1, mini_batch_size=10)
    tr.train()
    # 200 train + 40 test samples, scored at most eval_batch_size (100) at a time
    assert tr.eval_batch_size == 100
    assert max(net.calls["accuracy"]) <= 100
    # the epoch's evaluation (train, test); the final test accuracy is that same number
    assert sum(net.calls["accuracy"]) == 200 + 40
    assert tr.final_test_acc == tr.test_acc_list[-1]


def test_evaluate_sample_num_per_epoch(data):
    net = TinyNet()
    tr = make(data, net, epochs=3, mini_batch_size=50, evaluate_sample_num_per_epoch=30)
    tr.train()
    # per epoch: the first 30 of train and of test; at the end: the whole test set
    assert net.calls["accuracy"] == [30, 30] * 3 + [40]
    x30, t30 = tr.x_train[:30], tr.t_train[:30]
    assert tr.train_acc_list[-1] == pytest.approx(float((net.predict(x30).argmax(1) == t30).mean()))


def test_same_seed_same_run_other_seed_other_run(data):
    def run(seed):
        xpnet.seed(7)  # same initial parameters for all three
        tr = make(data, TinyNet(dropout=0.3), epochs=2, mini_batch_size=16, seed=seed)
        tr.train()
        return tr.network.params["W1"], tr.train_loss_list

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]
    assert not np.array_equal(a[0], c[0])


def test_xpnet_seed_governs_an_unseeded_trainer(data):
    def run():
        xpnet.seed(5)
        tr = make(data, TinyNet(dropout=0.3), epochs=1, mini_batch_size=16)
        tr.train()
        return tr.network.params["W1"]

    np.testing.assert_array_equal(run(), run())


def test_data_takes_the_models_dtype(data):
    tr = make(data, TinyNet(dtype=np.float32), epochs=1, mini_batch_size=50)
    assert tr.x_train.dtype == np.float32 and tr.t_train.dtype == np.int64
    tr.train()
    assert tr.network.params["W1"].dtype == np.float32


def test_verbose_prints_epoch_lines_and_the_final_accuracy(data, capsys):
    make(data, epochs=2, mini_batch_size=50, verbose=True).train()
    out, err = capsys.readouterr()
    assert out.count("=== epoch:") == 2 and "=== epoch:2/2, train loss:" in out
    assert "Final Test Accuracy" in out and "test acc:" in out
    assert err == ""  # stderr is not a terminal here: no progress bar


def test_progress_bar_can_be_forced(data, capsys):
    make(data, epochs=1, mini_batch_size=50, verbose=True, progress=True).train()
    err = capsys.readouterr().err
    assert "step" in err and "4/4" in err


def test_quiet_when_not_verbose(data, capsys):
    make(data, epochs=1, mini_batch_size=50).train()
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------
# NaN / inf
# ---------------------------------------------------------------------------


class NaNAt(TinyNet):
    def __init__(self, step):
        super().__init__()
        self.nan_step = step

    def gradient(self, x, t):
        grads = super().gradient(x, t)
        if self.calls["gradient"] == self.nan_step:
            self.last_loss = np.asarray(np.inf if self.nan_step % 2 else np.nan)
        return grads


@pytest.mark.parametrize("step", [6, 7])
def test_non_finite_loss_stops_naming_the_step(data, step):
    tr = make(data, NaNAt(step), epochs=3, mini_batch_size=50, optimizer_param={"lr": 0.5})
    with pytest.raises(TrainingDivergedError, match=rf"at step {step} \(epoch 2\).*lower learning"):
        tr.train()
    assert len(tr.train_loss_list) == step - 1


def test_a_real_divergence_is_caught(data):
    x, t, xt, tt = data
    tr = Trainer(
        TinyNet(), x * 1e3, t, xt, tt, epochs=5, mini_batch_size=50, verbose=False,
        optimizer="sgd", optimizer_param={"lr": 1e305},
    )
    with pytest.raises(FloatingPointError, match=r"at step \d+ .*learning rate \(now 1e\+305"):
        with np.errstate(all="ignore"):
            tr.train()


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [0, -1, 1.5])
def test_epochs_must_be_positive(data, epochs):
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        make(data, epochs=epochs)


def test_batch_larger_than_the_training_set(data):
    with pytest.raises(ValueError, match="mini_batch_size 500 is larger than the training set "
                       r"\(200 samples\)"):
        make(data, mini_batch_size=500)


def test_mismatched_lengths(data):
    x, t, xt, tt = data
    with pytest.raises(ValueError, match="x_train has 200 samples but t_train has 199"):
        Trainer(TinyNet(), x, t[:-1], xt, tt)


def test_unknown_optimizer_lists_the_valid_ones(data):
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; choose one of SGD, Momentum"):
        make(data, optimizer="lbfgs")


def test_unknown_optimizer_param(data):
    with pytest.raises(ValueError, match="Adam has no parameter 'momentum'"):
        make(data, optimizer="adam", optimizer_param={"momentum": 0.9})


@pytest.mark.skipif(xpnet.gpu_available(), reason="checks the message given without a GPU")
def test_gpu_without_a_gpu_says_why(data):
    with pytest.raises(xpnet.DeviceError, match="device 'gpu' was asked for, but"):
        make(data, device="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not xpnet.gpu_available(), reason="needs a CUDA GPU with CuPy")
def test_gpu_training_stays_on_the_device(data):
    cp = xpnet.backend.require_gpu()
    xpnet.seed(3)
    gpu_net = TinyNet(dtype=np.float32)
    tr = make(data, gpu_net, epochs=2, mini_batch_size=20, device="gpu", optimizer="adam")
    assert isinstance(tr.x_train, cp.ndarray) and isinstance(tr.network.params["W1"], cp.ndarray)
    tr.train()
    assert len(tr.train_loss_list) == 20 and np.isfinite(tr.train_loss_list).all()
    assert tr.test_acc_list[-1] > 0.5


@pytest.mark.parametrize("optimizer, param, message", [
    ("SGD", {"lr": 0.0}, "SGD learning rate lr must be positive, got 0.0"),
    ("Adam", {"lr": -1e-3}, "Adam learning rate lr must be positive, got -0.001"),
    ("SGD", {"lr": float("nan")}, "SGD hyperparameter lr must be a finite number, got nan"),
    ("SGD", {"lr": float("inf")}, "SGD hyperparameter lr must be a finite number, got inf"),
    ("Momentum", {"lr": 0.1, "momentum": float("nan")},
     "Momentum hyperparameter momentum must be a finite number, got nan"),
    ("RMSprop", {"decay_rate": float("-inf")}, "decay_rate must be a finite number"),
])
def test_unusable_hyperparameters_are_refused_before_training(data, optimizer, param, message):
    with pytest.raises(ValueError, match=message):
        make(data, optimizer=optimizer, optimizer_param=param)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_seed_must_be_a_non_negative_integer(data, seed):
    with pytest.raises(ValueError, match=rf"seed must be a non-negative integer, got {seed!r}"):
        make(data, seed=seed)

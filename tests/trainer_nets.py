"""Small networks for the trainer's tests, written to the models' contract (``params``,
``gradient`` storing ``last_loss``, ``loss``, ``predict``, ``accuracy``, ``to``), so the
trainer is tested on its own, in milliseconds. Also run as a script by the SIGKILL test."""

import json
import sys
import time

import numpy as np

import xpnet
from xpnet.backend import get_array_module, get_rng, to_device


def toy_data(n=240, d=8, classes=3, seed=0):
    """A linearly separable problem: the class is the argmax of three fixed projections."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    proj = rng.standard_normal((d, classes))
    t = np.argmax(x @ proj, axis=1).astype(np.int64)
    return x, t


class TinyNet:
    """Softmax regression ``x @ W1 + b1`` with optional input dropout (drawn from
    xpnet's random source, so resume must restore the random streams too).

    x: (N, d) -> scores (N, classes); t: (N,) labels.
    """

    def __init__(self, d=8, classes=3, dropout=0.0, dtype=np.float64, report_loss=True):
        rng = get_rng(np)
        self.params = {
            "W1": (0.1 * rng.standard_normal((d, classes))).astype(dtype),
            "b1": np.zeros(classes, dtype=dtype),
        }
        self.dtype = np.dtype(dtype)
        self.dropout = dropout
        self.report_loss = report_loss
        self.calls = {"gradient": 0, "loss": 0, "accuracy": []}
        if report_loss:
            self.last_loss = None

    def _forward(self, x, train_flg):
        xp = get_array_module(x)
        if train_flg and self.dropout:
            x = x * (get_rng(xp).random(x.shape) >= self.dropout)
        return x @ self.params["W1"] + self.params["b1"], x

    def _loss_and_probs(self, x, t, train_flg=True):
        xp = get_array_module(x)
        y, xin = self._forward(x, train_flg)
        y = y - y.max(axis=1, keepdims=True)
        p = xp.exp(y)
        p /= p.sum(axis=1, keepdims=True)
        loss = -xp.mean(xp.log(p[xp.arange(len(t)), t] + 1e-7))
        return loss, p, xin

    def predict(self, x, train_flg=False):
        return self._forward(x, train_flg)[0]

    def loss(self, x, t, train_flg=True):
        self.calls["loss"] += 1
        return self._loss_and_probs(x, t, train_flg)[0]

    def accuracy(self, x, t):
        self.calls["accuracy"].append(len(x))
        y = self.predict(x)
        return float((y.argmax(axis=1) == t).mean())

    def gradient(self, x, t):
        self.calls["gradient"] += 1
        xp = get_array_module(x)
        loss, p, xin = self._loss_and_probs(x, t)
        if self.report_loss:
            self.last_loss = xp.asarray(loss)
        dy = p.copy()
        dy[xp.arange(len(t)), t] -= 1
        dy /= len(t)
        return {"W1": xin.T @ dy, "b1": dy.sum(axis=0)}

    def to(self, device):
        self.params = {k: to_device(v, device) for k, v in self.params.items()}
        return self


if __name__ == "__main__":  # the SIGKILL test's child: train until killed
    from xpnet.trainer import Trainer

    options = json.loads(sys.argv[1])
    xpnet.seed(123)
    x, t = toy_data()
    net = TinyNet(dropout=0.2)
    gradient = net.gradient

    def slow_gradient(x, t):  # slow enough for the test to kill it mid-run
        time.sleep(0.02)
        return gradient(x, t)

    net.gradient = slow_gradient
    Trainer(net, x[:200], t[:200], x[200:], t[200:], verbose=False, **options).train()

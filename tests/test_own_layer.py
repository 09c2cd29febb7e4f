"""The README's "Your own layer" runs as written, and its layer is right.

The code block is taken from README.md (as tests/test_readme.py takes its snippets) and run
in a scratch directory; its GPU lines run only where ``xpnet.gpu_available()``. The layer it
defines is then gradient-checked in float64, alone and inside a network.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import xpnet
from xpnet.gradient import numerical_gradient
from xpnet.io import load_params

README = Path(__file__).resolve().parents[1] / "README.md"


def own_layer_code() -> str:
    section = README.read_text(encoding="utf-8").split("## Your own layer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    """The README's code, run once in a scratch directory: its namespace and directory."""
    cwd = tmp_path_factory.mktemp("own_layer")
    namespace: dict = {"__name__": "readme"}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        exec(compile(own_layer_code(), "README.md", "exec"), namespace)
    return namespace, cwd


def test_the_readme_layer_trains_checkpoints_and_saves(readme_run):
    ns, cwd = readme_run
    trainer, network = ns["trainer"], ns["network"]
    assert trainer.test_acc_list[-1] > 0.8  # x0 + x1 > 1 is easy
    assert trainer.current_iter == trainer.max_iter
    beta = xpnet.backend.as_numpy(network.params["beta1"])
    assert beta.shape == (1,) and beta[0] != 1.0  # the slope was learned
    assert (cwd / "runs/swish/checkpoint.npz").exists()
    saved = load_params(cwd / "runs/swish/params.npz")
    assert {"beta1", "beta2", "W1", "b3"} <= set(saved)
    np.testing.assert_array_equal(saved["beta1"], beta)


def test_the_readme_code_run_again_resumes_its_finished_run(readme_run, capsys):
    ns, cwd = readme_run
    again: dict = {"__name__": "readme"}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        exec(compile(own_layer_code(), "README.md", "exec"), again)
    assert again["trainer"].train_loss_list == ns["trainer"].train_loss_list
    for key, value in ns["network"].params.items():
        np.testing.assert_array_equal(xpnet.backend.as_numpy(value),
                                      xpnet.backend.as_numpy(again["network"].params[key]))


def test_swish_gradients_match_central_differences_in_float64(readme_run):
    Swish = readme_run[0]["Swish"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5))
    dout = rng.standard_normal((4, 5))
    layer = Swish(np.array([0.7]))

    def f(_):
        return float((layer.forward(x) * dout).sum())

    layer.forward(x)
    dx = layer.backward(dout)
    np.testing.assert_allclose(dx, numerical_gradient(f, x), rtol=1e-6, atol=1e-8)
    layer.forward(x)
    layer.backward(dout)
    np.testing.assert_allclose(layer.dbeta, numerical_gradient(f, layer.beta), rtol=1e-6)


def test_swish_in_a_network_backpropagates_like_central_differences(readme_run):
    from xpnet.models import MultiLayerNet

    Swish = readme_run[0]["Swish"]
    xpnet.seed(1)
    net = MultiLayerNet(6, [5, 4], 3, dtype="float64")
    for i in (1, 2):
        net.params[f"beta{i}"] = np.full(1, 0.5 + i)
        net.layers[f"Activation_function{i}"] = Swish(net.params[f"beta{i}"])
    x = np.random.default_rng(2).standard_normal((7, 6))
    t = np.array([0, 1, 2, 0, 1, 2, 0])
    grads, numerical = net.gradient(x, t), net.numerical_gradient(x, t)
    assert set(grads) == set(net.params) >= {"beta1", "beta2"}
    for key in grads:
        np.testing.assert_allclose(grads[key], numerical[key], rtol=1e-5, atol=1e-8, err_msg=key)

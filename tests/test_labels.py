"""Labels are range-checked once by the Trainer (the per-step loss skips it on the GPU)."""

import numpy as np
import pytest

from xpnet.models import TwoLayerNet
from xpnet.trainer import Trainer


@pytest.mark.parametrize("bad", [-1, 10])
def test_trainer_refuses_labels_outside_the_network_outputs(bad):
    x = np.random.default_rng(0).random((20, 4), dtype=np.float32)
    t = np.arange(20) % 10
    t_bad = t.copy()
    t_bad[3] = bad
    net = TwoLayerNet(4, 5, 10)
    with pytest.raises(ValueError, match=r"t_train holds labels .* must lie in \[0, 10\)"):
        Trainer(net, x, t_bad, x, t, epochs=1, mini_batch_size=5, verbose=False)
    with pytest.raises(ValueError, match=r"t_test holds labels"):
        Trainer(net, x, t, x, t_bad, epochs=1, mini_batch_size=5, verbose=False)


def test_cross_entropy_on_host_still_checks_labels_per_call():
    from xpnet.functions import cross_entropy_error

    y = np.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cross_entropy_error(y, np.array([0, 3]))


@pytest.mark.parametrize("bad", [-1, 10, 1000])
def test_accuracy_refuses_labels_out_of_range_as_loss_does(bad):
    x = np.random.default_rng(0).random((20, 4), dtype=np.float32)
    t = np.arange(20) % 10
    t[7] = bad
    net = TwoLayerNet(4, 5, 10)
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\)"):
        net.loss(x, t)
    with pytest.raises(ValueError, match=r"TwoLayerNet.accuracy: class labels must lie in "
                       r"\[0, 10\)"):
        net.accuracy(x, t)
    t[7] = 3
    assert 0.0 <= net.accuracy(x, t) <= 1.0


def test_accuracy_takes_a_column_of_labels_as_loss_does():
    x = np.random.default_rng(1).random((30, 4), dtype=np.float32)
    t = np.arange(30) % 10
    net = TwoLayerNet(4, 5, 10)
    assert net.accuracy(x, t[:, None]) == net.accuracy(x, t)
    assert net.loss(x, t[:, None]) == net.loss(x, t)
    t[0] = 10
    with pytest.raises(ValueError, match=r"class labels must lie in \[0, 10\)"):
        net.accuracy(x, t[:, None])

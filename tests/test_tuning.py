"""Hyperparameter random search (book 6.5): validation split, log-scale sampling, ranking."""

import math

import numpy as np
import pytest
from trainer_nets import TinyNet, toy_data

from xpnet.tuning import Trial, random_search, split_validation


def test_split_validation_carves_20_percent_after_shuffling():
    x = np.arange(500, dtype=np.float64).reshape(500, 1)
    t = np.arange(500)
    (xt, tt), (xv, tv) = split_validation(x, t, rng=np.random.default_rng(0))
    assert len(xv) == 100 and len(xt) == 400
    np.testing.assert_array_equal(xt[:, 0], tt)  # pairs stay together
    assert sorted(np.concatenate([tt, tv])) == list(range(500))  # disjoint, complete
    assert not np.array_equal(tv, np.arange(100))  # shuffled first
    (_, tt2), _ = split_validation(x, t, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(tt, tt2)


@pytest.mark.parametrize("rate", [0, 1, 0.001])
def test_split_validation_rejects_degenerate_rates(rate):
    with pytest.raises(ValueError, match="validation"):
        split_validation(np.zeros((100, 2)), np.zeros(100), rate)


def tiny(weight_decay):
    return TinyNet()


def test_samples_on_a_log_scale_within_the_books_ranges():
    x, t = toy_data(100)
    results = random_search(tiny, x, t, trials=60, epochs=1, mini_batch_size=20, seed=0,
                            verbose=False)
    lrs = np.log10([r.lr for r in results])
    wds = np.log10([r.weight_decay for r in results])
    assert lrs.min() >= -6 and lrs.max() <= -2 and wds.min() >= -8 and wds.max() <= -4
    # uniform in the exponent: every decade of the range is hit
    assert set(np.floor(lrs).astype(int)) == {-6, -5, -4, -3}
    assert set(np.floor(wds).astype(int)) == {-8, -7, -6, -5}


def test_results_are_sorted_best_first_and_repeat_with_the_seed():
    x, t = toy_data(200)
    kw = dict(trials=6, epochs=3, mini_batch_size=20, lr_range=(-3, 0), optimizer="adam",
              seed=4, verbose=False)
    a = random_search(tiny, x, t, **kw)
    accs = [r.val_acc for r in a]
    assert accs == sorted(accs, reverse=True)
    for r in a:
        assert isinstance(r, Trial) and r.error is None
        assert r.val_acc == r.val_acc_list[-1] and len(r.val_acc_list) == 3
        assert r.train_acc == r.train_acc_list[-1] and math.isfinite(r.final_loss)
    assert a[0].val_acc > 0.6  # the best of six Adam runs learns the toy problem
    b = random_search(tiny, x, t, **kw)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]


def test_weight_decay_reaches_the_network():
    seen = []

    def build(weight_decay):
        seen.append(weight_decay)
        return TinyNet()

    x, t = toy_data(100)
    results = random_search(build, x, t, trials=3, epochs=1, mini_batch_size=20, seed=1,
                            verbose=False)
    assert sorted(seen) == sorted(r.weight_decay for r in results)


def test_a_diverged_trial_is_ranked_last():
    x, t = toy_data(100)
    x = x * 1e3
    with np.errstate(all="ignore"):
        results = random_search(tiny, x, t, trials=3, epochs=3, mini_batch_size=20,
                                lr_range=(300, 305), seed=0, verbose=False)
    assert any(r.error for r in results)
    diverged = [r for r in results if r.error]
    assert results[-len(diverged):] == diverged
    assert all(math.isnan(r.val_acc) and "learning rate" in r.error for r in diverged)


def test_verbose_prints_each_trial_and_the_best(capsys):
    x, t = toy_data(100)
    random_search(tiny, x, t, trials=2, epochs=1, mini_batch_size=20, seed=0)
    out = capsys.readouterr().out
    assert out.count("val acc:") == 4 and "[2/2]" in out
    assert "Hyper-Parameter Optimization Result" in out and "Best-1(val acc:" in out


def test_bad_ranges_and_trials():
    x, t = toy_data(100)
    with pytest.raises(ValueError, match="lr_range must be"):
        random_search(tiny, x, t, lr_range=(-2, -6))
    with pytest.raises(ValueError, match="trials must be at least 1"):
        random_search(tiny, x, t, trials=0)


def test_with_the_books_multilayernet():
    from xpnet.models import MultiLayerNet

    x, t = toy_data(150)

    def build(weight_decay):
        return MultiLayerNet(8, [10, 10], 3, weight_decay_lambda=weight_decay)

    results = random_search(build, x, t, trials=2, epochs=2, mini_batch_size=20,
                            lr_range=(-2, -1), seed=0, verbose=False)
    assert len(results) == 2 and all(0 <= r.val_acc <= 1 for r in results)

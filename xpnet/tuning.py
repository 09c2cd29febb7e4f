"""Hyperparameter random search (book ch. 6.5).

The book's recipe: carve a validation set out of the *training* data (20% after
shuffling -- the test set is never used to choose hyperparameters), sample the
learning rate and the weight decay on a log scale (``lr = 10**U(-6, -2)``,
``weight decay = 10**U(-8, -4)``), train each candidate briefly, and rank them by
validation accuracy; then narrow the ranges around the best and search again.

    >>> from xpnet.models import MultiLayerNet
    >>> def build(weight_decay):
    ...     return MultiLayerNet(784, [100] * 6, 10, weight_decay_lambda=weight_decay)
    >>> results = random_search(build, x_train[:500], t_train[:500], trials=100, epochs=50)
    >>> best = results[0]; best.lr, best.weight_decay, best.val_acc

From the command line: ``xpnet search --trials 100 --epochs 50``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from xpnet import backend
from xpnet.trainer import Trainer, TrainingDivergedError

__all__ = ["Trial", "random_search", "split_validation"]


@dataclass
class Trial:
    """One candidate: its hyperparameters and how it did on the validation set."""

    lr: float
    weight_decay: float
    val_acc: float  # after the last epoch (nan if training diverged)
    train_acc: float
    val_acc_list: list[float] = field(default_factory=list)
    train_acc_list: list[float] = field(default_factory=list)
    final_loss: float = math.nan  # mean loss of the last epoch
    seed: int = 0
    error: str | None = None  # why the trial stopped early (a diverged loss)

    def to_dict(self) -> dict:
        return asdict(self)


def split_validation(x, t, validation_rate=0.2, rng=None):
    """Shuffle ``(x, t)`` together and split off the first ``validation_rate`` of them.

    x: (N, ...), t: (N,) or (N, classes). Returns ``(x_train, t_train), (x_val, t_val)``
    with ``int(N * validation_rate)`` validation samples, as the book does.
    ``rng``: a NumPy Generator (default: xpnet's).
    """
    if not 0 < validation_rate < 1:
        raise ValueError(f"validation_rate must be between 0 and 1, got {validation_rate}")
    n = len(x)
    if len(t) != n:
        raise ValueError(f"x has {n} samples but t has {len(t)}")
    n_val = int(n * validation_rate)
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"a validation rate of {validation_rate} leaves {n_val} of {n} samples for "
            "validation; use more data or another rate"
        )
    rng = backend.get_rng(np) if rng is None else rng
    # The permutation is drawn on the host (and moved if the data is on the GPU), so a
    # search is the same whichever device trains it.
    order = rng.permutation(n)
    if backend.is_gpu_array(x):
        order = backend.to_device(order, "gpu")
    x, t = x[order], t[order]
    return (x[n_val:], t[n_val:]), (x[:n_val], t[:n_val])


def _check_range(name, bounds):
    lo, hi = (float(b) for b in bounds)
    if not lo < hi:
        raise ValueError(f"{name} must be (low, high) exponents with low < high, got {bounds}")
    return lo, hi


def random_search(
    build_network,
    x_train,
    t_train,
    *,
    trials=100,
    epochs=50,
    mini_batch_size=100,
    optimizer="SGD",
    optimizer_param=None,
    lr_range=(-6, -2),
    weight_decay_range=(-8, -4),
    validation_rate=0.2,
    seed=None,
    device=None,
    verbose=True,
) -> list[Trial]:
    """Random search over learning rate and weight decay; returns the trials sorted by
    validation accuracy, best first (diverged trials last).

    build_network: ``build_network(weight_decay)`` -> a fresh network (weight decay as
        the book's ``weight_decay_lambda``).
    x_train, t_train: the training data; ``validation_rate`` of it becomes the
        validation set (the book uses 500 samples, 20% for validation).
    lr_range, weight_decay_range: base-10 exponents to sample uniformly between.
    optimizer, optimizer_param: passed to each Trainer (the sampled ``lr`` is added).
    seed: makes the split, the samples, every network's initial weights and every
        trainer's mini-batches repeat.
    """
    trials = int(trials)
    if trials < 1:
        raise ValueError(f"trials must be at least 1, got {trials}")
    lr_lo, lr_hi = _check_range("lr_range", lr_range)
    wd_lo, wd_hi = _check_range("weight_decay_range", weight_decay_range)
    if seed is None:
        seed = int(backend.get_rng(np).integers(2**63))
    # A generator of its own: the trainers reseed xpnet's sources as they go.
    rng = np.random.default_rng(seed)
    (x_tr, t_tr), (x_val, t_val) = split_validation(x_train, t_train, validation_rate, rng)

    results = []
    for i in range(trials):
        weight_decay = float(10 ** rng.uniform(wd_lo, wd_hi))
        lr = float(10 ** rng.uniform(lr_lo, lr_hi))
        trial_seed = int(rng.integers(2**63))
        backend.seed(trial_seed)  # the network's initial weights
        network = build_network(weight_decay)
        trainer = Trainer(
            network, x_tr, t_tr, x_val, t_val, epochs=epochs, mini_batch_size=mini_batch_size,
            optimizer=optimizer, optimizer_param={**(optimizer_param or {}), "lr": lr},
            verbose=False, seed=trial_seed, device=device,
        )
        trial = Trial(lr, weight_decay, math.nan, math.nan, seed=trial_seed)
        try:
            trainer.train()
        except TrainingDivergedError as exc:
            trial.error = str(exc)
        trial.val_acc_list = list(trainer.test_acc_list)
        trial.train_acc_list = list(trainer.train_acc_list)
        if trial.error is None:
            trial.val_acc = trial.val_acc_list[-1]
            trial.train_acc = trial.train_acc_list[-1]
            last = trainer.train_loss_list[-trainer.iter_per_epoch :]
            trial.final_loss = float(np.mean(last))
        results.append(trial)
        if verbose:
            print(
                f"[{i + 1}/{trials}] val acc:{trial.val_acc:.4f} | lr:{lr:.3e}, "
                f"weight decay:{weight_decay:.3e}" + (" (diverged)" if trial.error else ""),
                flush=True,
            )

    results.sort(key=lambda r: -r.val_acc if not math.isnan(r.val_acc) else math.inf)
    if verbose:
        print("=========== Hyper-Parameter Optimization Result ===========")
        for rank, r in enumerate(results[:5], start=1):
            print(
                f"Best-{rank}(val acc:{r.val_acc:.4f}) | lr:{r.lr:.3e}, "
                f"weight decay:{r.weight_decay:.3e}"
            )
    return results

"""Learning-rate schedules: the learning rate of each epoch, from the base one.

The book trains at one learning rate throughout (``'constant'``). Lowering it over the
run lets the last epochs settle instead of hopping around a minimum; that is what the
representative CNNs of ch. 8 need to reach their published accuracy::

    >>> trainer = Trainer(net, x_train, t_train, x_test, t_test, epochs=12,
    ...                   optimizer='Adam', optimizer_param={'lr': 0.001},
    ...                   lr_schedule='cosine')

The rate changes once an epoch, at its start (epoch ``e`` counts from 0):

- ``'constant'``: ``lr``;
- ``'cosine'``: ``lr * (1 + cos(pi * e / epochs)) / 2``: from ``lr`` down towards 0 (the
  last epoch of 12 runs at 1.7% of it). PyTorch's ``CosineAnnealingLR(T_max=epochs)``
  stepped once an epoch gives the same rates;
- ``'step'``: ``lr``, a tenth of it from half-way, a hundredth from three quarters (He et
  al.'s ResNet schedule, in epochs).

A schedule is a function of the position alone, so a resumed run takes the rates of the
uninterrupted one.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "lr_factor", "check_schedule"]

SCHEDULES = ("constant", "cosine", "step")


def check_schedule(name) -> str:
    """``name`` as a known schedule's name (None: ``'constant'``); else ValueError."""
    if name is None:
        return "constant"
    if not isinstance(name, str) or name.lower() not in SCHEDULES:
        raise ValueError(
            f"unknown learning-rate schedule {name!r}: choose one of {', '.join(SCHEDULES)}"
        )
    return name.lower()


def lr_factor(name: str, epoch: int, epochs: int) -> float:
    """The factor of the base learning rate in ``epoch`` (0-based) of a run of ``epochs``."""
    name = check_schedule(name)
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch {epoch} is outside a run of {epochs} epochs")
    if name == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    if name == "step":
        return 0.01 if 4 * epoch >= 3 * epochs else 0.1 if 2 * epoch >= epochs else 1.0
    return 1.0

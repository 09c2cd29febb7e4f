"""A warning for a loss that explodes without reaching NaN.

A learning rate far too large (SGD with ``lr=10`` on MNIST, say) can drive the loss from
2.3 to over a hundred while it stays finite: the trainer's NaN check never fires and the
run trains to its end for nothing. :class:`LossGrowthCheck` watches the losses the trainer
already reads back (host floats: no extra transfer) and warns once when one of them grows
far above the first.
"""

from __future__ import annotations

import warnings

__all__ = ["LossGrowthCheck", "LossGrowthWarning", "GROWTH_FACTOR"]

#: A loss this many times the first one means the run is diverging, not exploring: a
#: softmax cross-entropy starts near log(classes) and a working run only brings it down.
GROWTH_FACTOR = 10.0


class LossGrowthWarning(RuntimeWarning):
    """The training loss grew far above its starting value."""


class LossGrowthCheck:
    """``check(loss, step, optimizer)`` after each loss read back; warns at most once.

    The reference is the first loss seen (after a resume: the first loss of the resumed
    run). A warning, not an error: the user may want to see the run end.
    """

    def __init__(self, factor: float = GROWTH_FACTOR):
        self.factor = float(factor)
        self.start: float | None = None
        self.warned = False

    def check(self, loss: float, step: int, optimizer=None) -> bool:
        """Record ``loss`` (a finite float) at 1-based ``step``; True if it warned now."""
        if self.start is None:
            self.start = loss
            return False
        if self.warned or self.start <= 0 or loss <= self.factor * self.start:
            return False
        self.warned = True
        lr = getattr(optimizer, "lr", None)
        hint = f" (now {lr:g})" if lr is not None else ""
        warnings.warn(
            f"the training loss grew from {self.start:.4g} at the first step to {loss:.4g} "
            f"at step {step}, more than {self.factor:g} times its start: training is "
            f"diverging. Try a lower learning rate{hint}.",
            LossGrowthWarning,
            stacklevel=3,
        )
        return True

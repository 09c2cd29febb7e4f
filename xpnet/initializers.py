"""Initial weights (book 6.2): a fixed standard deviation, Xavier, or He.

The book's ``weight_init_std`` is either a number (the standard deviation itself) or a
name: ``'relu'``/``'he'`` for He initialization, std ``sqrt(2 / n)``, and
``'sigmoid'``/``'xavier'`` for Xavier initialization, std ``sqrt(1 / n)``, ``n`` being the
number of inputs of each unit (``fan_in``).

Weights are drawn from ``xpnet.backend.get_rng(xp)`` (so ``xpnet.seed`` fixes them) in
the requested dtype, directly on the requested device:

    >>> W = he_normal((784, 100), dtype=np.float32)        # std sqrt(2/784)
    >>> W = normal((784, 100), weight_std('xavier', 784), xp=cupy)
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from xpnet.backend import check_float_dtype, get_default_dtype, get_rng

__all__ = [
    "WEIGHT_INIT_NAMES",
    "weight_std",
    "init_std",
    "fan_in_of",
    "normal",
    "he_normal",
    "xavier_normal",
    "init_weight",
]

# name -> numerator of the variance: std = sqrt(gain / fan_in)
_GAINS = {"relu": 2.0, "he": 2.0, "sigmoid": 1.0, "xavier": 1.0}
WEIGHT_INIT_NAMES = tuple(_GAINS)


def weight_std(weight_init_std, fan_in) -> float:
    """The standard deviation named by ``weight_init_std`` for units with ``fan_in`` inputs.

    A number is returned as it is; ``'relu'``/``'he'`` give ``sqrt(2 / fan_in)`` and
    ``'sigmoid'``/``'xavier'`` give ``sqrt(1 / fan_in)`` (case-insensitive).
    """
    if isinstance(weight_init_std, str):
        gain = _GAINS.get(weight_init_std.lower())
        if gain is None:
            raise ValueError(
                f"unknown weight_init_std {weight_init_std!r}; use a number (the standard "
                f"deviation) or one of {', '.join(repr(n) for n in WEIGHT_INIT_NAMES)}"
            )
        if fan_in is None:
            raise ValueError(
                f"weight_init_std {weight_init_std!r} needs fan_in, the number of inputs per unit"
            )
        fan_in = int(fan_in)
        if fan_in < 1:
            raise ValueError(f"fan_in must be a positive number of inputs, got {fan_in}")
        return math.sqrt(gain / fan_in)
    if isinstance(weight_init_std, bool) or not isinstance(weight_init_std, numbers.Real):
        raise TypeError(
            f"weight_init_std must be a number or one of {WEIGHT_INIT_NAMES}, "
            f"got {type(weight_init_std).__name__} {weight_init_std!r}"
        )
    std = float(weight_init_std)
    if not (std >= 0.0 and math.isfinite(std)):
        raise ValueError(f"weight_init_std must be a finite number >= 0, got {weight_init_std!r}")
    return std


# The name used in the issue text; the same function.
init_std = weight_std


def fan_in_of(shape) -> int:
    """Inputs per unit of a weight: ``D`` of an Affine W (D, M); ``C*FH*FW`` of a conv W
    (FN, C, FH, FW)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        return shape[0]
    if len(shape) >= 3:
        return math.prod(shape[1:])
    raise ValueError(
        f"cannot infer fan_in from a weight of shape {shape}; pass fan_in explicitly"
    )


def normal(shape, std=1.0, dtype=None, xp=np):
    """Normal(0, std**2) samples of ``shape`` in ``dtype`` (default: xpnet's default dtype).

    float32/float64 are drawn directly in that dtype; float16, which the generators do not
    offer, is drawn in float32 and rounded once.
    """
    dt = check_float_dtype(get_default_dtype() if dtype is None else dtype)
    rng = get_rng(xp)
    draw_dtype = dt if dt.itemsize >= 4 else np.dtype(np.float32)
    w = rng.standard_normal(shape, dtype=draw_dtype)
    w *= draw_dtype.type(std)  # in place: no second array, no float64 temporary
    return w if draw_dtype == dt else w.astype(dt)


def he_normal(shape, fan_in=None, dtype=None, xp=np):
    """He initialization (for ReLU): std ``sqrt(2 / fan_in)``; fan_in inferred from shape."""
    fan_in = fan_in_of(shape) if fan_in is None else fan_in
    return normal(shape, weight_std("he", fan_in), dtype=dtype, xp=xp)


def xavier_normal(shape, fan_in=None, dtype=None, xp=np):
    """Xavier initialization (for sigmoid/tanh): std ``sqrt(1 / fan_in)``, as in the book."""
    fan_in = fan_in_of(shape) if fan_in is None else fan_in
    return normal(shape, weight_std("xavier", fan_in), dtype=dtype, xp=xp)


def init_weight(shape, weight_init_std=0.01, fan_in=None, dtype=None, xp=np):
    """A weight of ``shape`` initialized as the book's ``weight_init_std`` says."""
    if isinstance(weight_init_std, str) and fan_in is None:
        fan_in = fan_in_of(shape)
    return normal(shape, weight_std(weight_init_std, fan_in), dtype=dtype, xp=xp)

"""The perceptron gates of chapter 2.

Each gate takes two inputs -- scalars (returning the int 0 or 1, like the book) or arrays
of 0/1 values on NumPy or CuPy (returning an int array of their broadcast shape):

    >>> AND(1, 1), NAND(1, 1), OR(0, 1), XOR(1, 1)
    (1, 0, 1, 0)
    >>> XOR(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))
    array([0, 1, 1, 0])
"""

from __future__ import annotations

from xpnet.backend import get_array_module

__all__ = ["AND", "NAND", "OR", "XOR"]


def _gate(x1, x2, w1, w2, b):
    """A single perceptron: 1 if ``w1*x1 + w2*x2 + b > 0``, else 0."""
    if not (hasattr(x1, "shape") or hasattr(x2, "shape")):
        return 0 if w1 * x1 + w2 * x2 + b <= 0 else 1
    xp = get_array_module(x1, x2)
    x1, x2 = xp.asarray(x1), xp.asarray(x2)
    return (w1 * x1 + w2 * x2 + b > 0).astype(xp.int64)


def AND(x1, x2):
    """1 only when both inputs are 1 (weights 0.5, 0.5, bias -0.7 as in the book)."""
    return _gate(x1, x2, 0.5, 0.5, -0.7)


def NAND(x1, x2):
    """0 only when both inputs are 1 (weights -0.5, -0.5, bias 0.7)."""
    return _gate(x1, x2, -0.5, -0.5, 0.7)


def OR(x1, x2):
    """1 when either input is 1 (weights 0.5, 0.5, bias -0.2)."""
    return _gate(x1, x2, 0.5, 0.5, -0.2)


def XOR(x1, x2):
    """Not linearly separable, so two layers: ``AND(NAND(x1, x2), OR(x1, x2))``."""
    s1 = NAND(x1, x2)
    s2 = OR(x1, x2)
    return AND(s1, s2)

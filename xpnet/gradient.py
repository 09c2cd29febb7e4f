"""Numerical differentiation (chapter 4) and the gradient checks of chapter 5.

``numerical_gradient(f, x)`` is the book's: it perturbs ``x`` *in place*, one entry at a
time, and calls ``f`` -- so the book's ``f = lambda W: net.loss(x, t)``, which ignores its
argument and reads the network's own weight arrays, works unchanged.

    >>> numerical_gradient(lambda x: (x ** 2).sum(), np.array([3.0, 4.0]))
    array([6., 8.])
"""

from __future__ import annotations

import numpy as np

from xpnet.backend import as_numpy, get_array_module

__all__ = [
    "numerical_diff",
    "numerical_gradient",
    "numerical_gradient_2d",
    "gradient_descent",
    "relative_error",
    "gradient_check",
]

H = 1e-4  # the book's step: small enough for accuracy, large enough against rounding


def numerical_diff(f, x):
    """Central difference ``(f(x + h) - f(x - h)) / 2h`` with ``h = 1e-4`` (scalar ``x``)."""
    return (f(x + H) - f(x - H)) / (2 * H)


def _check_perturbable(x, name="numerical_gradient"):
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(
            f"{name}: x must be an array that f reads (it is perturbed in place), "
            f"got {type(x).__name__}"
        )
    if x.dtype.kind != "f":
        raise TypeError(
            f"{name}: x must be a floating array (it is perturbed by h=1e-4), got dtype {x.dtype}"
        )


def numerical_gradient(f, x):
    """Gradient of the scalar ``f(x)`` by central differences; x: any shape (0-d too).

    Each entry of ``x`` is set to ``x[i] + h`` and ``x[i] - h`` in place, then restored to
    its exact original bits. Works on views and non-contiguous arrays, on NumPy and CuPy
    (a plain index loop; on the GPU each entry costs two small host transfers).
    Returns an array of ``x``'s shape, dtype and device.
    """
    _check_perturbable(x)
    xp = get_array_module(x)
    grad = xp.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        original = x[idx].copy()  # a copy: on CuPy, x[idx] is a view into x
        x[idx] = original + H
        fxh1 = f(x)
        x[idx] = original - H
        fxh2 = f(x)
        x[idx] = original
        grad[idx] = (fxh1 - fxh2) / (2 * H)
    return grad


def _numerical_gradient_no_batch(f, x):
    return numerical_gradient(f, x)


def numerical_gradient_2d(f, X):
    """The book's ``ch04/gradient_2d.py`` helper: for X (N, D), the gradient of ``f`` at each
    row (``f`` takes one row); for X (D,), the plain gradient. Returns X's shape."""
    _check_perturbable(X, "numerical_gradient_2d")
    if X.ndim == 1:
        return numerical_gradient(f, X)
    xp = get_array_module(X)
    grad = xp.zeros_like(X)
    for i in range(X.shape[0]):
        grad[i] = numerical_gradient(f, X[i])
    return grad


def gradient_descent(f, init_x, lr=0.01, step_num=100, *, return_history=False):
    """The book's gradient descent: ``step_num`` steps of ``x -= lr * grad f(x)``.

    Like the book, it updates ``init_x`` in place and returns it. With
    ``return_history=True`` it returns ``(x, history)`` as the book's
    ``ch04/gradient_method.py`` does, ``history`` being (step_num, *x.shape): x before
    each step.
    """
    _check_perturbable(init_x, "gradient_descent")
    xp = get_array_module(init_x)
    x = init_x
    history = []
    for _ in range(int(step_num)):
        if return_history:
            history.append(x.copy())
        grad = numerical_gradient(f, x)
        x -= lr * grad
    if return_history:
        return x, (xp.stack(history) if history else xp.empty((0, *x.shape), dtype=x.dtype))
    return x


# ---------------------------------------------------------------------------
# Gradient checks
# ---------------------------------------------------------------------------


def relative_error(a, b) -> float:
    """``||a - b|| / (||a|| + ||b||)`` in float64 on the host (0.0 when both are zero).

    One number per array that does not blow up where single entries are near zero.
    """
    a = as_numpy(a).astype(np.float64)
    b = as_numpy(b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_error: shapes {a.shape} and {b.shape} differ")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    if denom == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b) / denom)


def gradient_check(f, x, analytic) -> float:
    """Relative error between ``analytic`` and ``numerical_gradient(f, x)``."""
    return relative_error(numerical_gradient(f, x), analytic)

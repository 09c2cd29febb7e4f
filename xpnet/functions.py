"""Activation and loss functions of chapters 3 and 4 (the book's ``common/functions.py``).

Every function works on NumPy or CuPy arrays (``xp = get_array_module(x)``) and keeps
the floating dtype it is given: float32 in, float32 out. Integer inputs (the book's
``np.array([-1, 1, 2])``) are computed in float64, as NumPy's ``exp`` would.

    >>> softmax(np.array([1010.0, 1000.0, 990.0]))      # no overflow
    array([9.99954600e-01, 4.53978686e-05, 2.06106005e-09])
    >>> cross_entropy_error(y, t)                       # t one-hot (N, C) or labels (N,)
"""

from __future__ import annotations

from xpnet.backend import get_array_module, is_gpu_array

__all__ = [
    "identity_function",
    "step_function",
    "sigmoid",
    "sigmoid_grad",
    "relu",
    "relu_grad",
    "softmax",
    "log_softmax",
    "sum_squared_error",
    "mean_squared_error",
    "cross_entropy_error",
    "softmax_loss",
    "softmax_cross_entropy",
    "check_targets",
]

# The book adds this to y before the log so that log(0) never happens.
CROSS_ENTROPY_DELTA = 1e-7


def _as_float_array(x, name="x"):
    """``x`` as an array of its backend, float64 if it was not floating already."""
    xp = get_array_module(x)
    x = xp.asarray(x)
    if x.dtype.kind == "f":
        return xp, x
    if x.dtype.kind in "biu":
        return xp, x.astype(xp.float64)
    raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}")


# ---------------------------------------------------------------------------
# Activations (chapter 3)
# ---------------------------------------------------------------------------


def identity_function(x):
    """The output activation of regression: returns ``x`` unchanged."""
    return x


def step_function(x):
    """1 where ``x > 0``, else 0, in the float dtype of ``x`` (the book returns ints)."""
    xp, x = _as_float_array(x)
    return (x > 0).astype(x.dtype)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` without overflow for large ``|x|``.

    ``exp`` is only ever taken of ``-|x|`` (at most 1), so ``sigmoid(-1000.0)`` is 0.0
    with no RuntimeWarning, and float32 stays float32.
    """
    xp, x = _as_float_array(x)
    z = xp.exp(-xp.abs(x))
    # x >= 0: 1 / (1 + e^-x);  x < 0: e^x / (1 + e^x); both written with z = e^-|x|.
    return xp.where(x >= 0, 1 / (1 + z), z / (1 + z))


def sigmoid_grad(x):
    """Derivative of the sigmoid at ``x``: ``(1 - sigmoid(x)) * sigmoid(x)``."""
    s = sigmoid(x)
    return (1 - s) * s


def relu(x):
    """``max(0, x)`` elementwise."""
    xp, x = _as_float_array(x)
    return xp.maximum(x, 0)


def relu_grad(x):
    """Derivative of ReLU: 1 where ``x >= 0`` (the book's convention at 0), else 0."""
    xp, x = _as_float_array(x)
    return (x >= 0).astype(x.dtype)


def softmax(x):
    """Softmax along the last axis; ``x``: (C,) or (..., C).

    The maximum is subtracted first, so ``[1010, 1000, 990]`` gives no overflow.
    """
    xp, x = _as_float_array(x)
    if x.ndim == 0:
        raise ValueError("softmax needs at least one axis of classes, got a 0-d array")
    e = xp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(x):
    """``log(softmax(x))`` along the last axis, computed without taking log of 0."""
    xp, x = _as_float_array(x)
    if x.ndim == 0:
        raise ValueError("log_softmax needs at least one axis of classes, got a 0-d array")
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------
# Losses (chapter 4)
# ---------------------------------------------------------------------------


def sum_squared_error(y, t):
    """``0.5 * sum((y - t)**2)`` over everything (the book's "mean squared error")."""
    xp, y = _as_float_array(y, "y")
    t = xp.asarray(t)
    if y.shape != t.shape:
        raise ValueError(
            f"sum_squared_error: y of shape {y.shape} and t of shape {t.shape} differ; "
            "they must have the same shape"
        )
    d = y - t.astype(y.dtype, copy=False)
    return 0.5 * xp.sum(d * d)


# The book names it mean_squared_error although it sums (chapter 4.2.1).
mean_squared_error = sum_squared_error


def _check_probabilities(y, name):
    """The array namespace and ``y`` as a float array of shape (C,) or (N, C)."""
    xp = get_array_module(y)
    y = xp.asarray(y)
    if y.dtype.kind != "f":
        raise TypeError(
            f"{name}: y must be a floating array of scores/probabilities, got dtype {y.dtype}"
        )
    if y.ndim not in (1, 2):
        raise ValueError(
            f"{name}: y must have shape (C,) for one sample or (N, C) for a batch, "
            f"got shape {y.shape}"
        )
    if y.size == 0:
        raise ValueError(f"{name}: y of shape {y.shape} is empty (no samples or no classes)")
    return xp, y


def check_targets(y, t, name="cross_entropy_error"):
    """Validate targets ``t`` against scores ``y`` of shape (C,) or (N, C).

    Returns ``(kind, t)`` with ``kind`` ``'onehot'`` (``t`` has ``y``'s shape, cast to its
    dtype) or ``'labels'`` (``t`` integer class indices of shape ``y.shape[:-1]``; a column
    of labels, shape ``y.shape[:-1] + (1,)``, is read as that).
    Raises ValueError naming both shapes, or a label outside ``[0, C)``.
    """
    xp = get_array_module(y, t)
    t = xp.asarray(t)
    if t.shape == y.shape:
        return "onehot", t.astype(y.dtype, copy=False)
    if t.shape == y.shape[:-1] + (1,) and t.dtype.kind in "iu":
        # A column of labels (N, 1), as the book's ch. 7 gradient check passes: its indexing
        # reads it as (N,), and so do we.
        t = t.reshape(y.shape[:-1])
    if t.shape != y.shape[:-1]:
        raise ValueError(
            f"{name}: t of shape {t.shape} fits neither one-hot targets of y's shape {y.shape} "
            f"nor class labels of shape {y.shape[:-1]}"
        )
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"{name}: class labels t must be integers, got dtype {t.dtype} "
            f"(one-hot targets must have y's shape {y.shape})"
        )
    n_classes = y.shape[-1]
    # Without this check an out-of-range label would index the wrong class silently. It needs
    # a host transfer, so it runs on host arrays only: on the GPU it would stall every training
    # step, and the Trainer checks its labels once, on the host, before moving them there.
    if not is_gpu_array(t) and t.size and bool(((t < 0) | (t >= n_classes)).any()):
        lo, hi = int(t.min()), int(t.max())
        raise ValueError(
            f"{name}: class labels must lie in [0, {n_classes}) for {n_classes} classes, "
            f"got labels from {lo} to {hi}"
        )
    return "labels", t


def cross_entropy_error(y, t):
    """Mean cross-entropy of probabilities ``y`` against targets ``t`` (the book's).

    y: (C,) or (N, C) probabilities (e.g. softmax output), floating.
    t: one-hot/probabilities of ``y``'s shape, or integer labels (N,) or (N, 1) (a scalar for
    one sample).
    Returns ``-sum(t * log(y + 1e-7)) / N`` in ``y``'s dtype.
    """
    xp, y = _check_probabilities(y, "cross_entropy_error")
    kind, t = check_targets(y, t, "cross_entropy_error")
    if y.ndim == 1:
        y = y.reshape(1, -1)
        t = t.reshape(1, -1) if kind == "onehot" else t.reshape(1)
    batch_size = y.shape[0]
    if kind == "onehot":
        # Equal to the book's argmax form for one-hot t, and correct for soft targets too.
        return -xp.sum(t * xp.log(y + CROSS_ENTROPY_DELTA)) / batch_size
    picked = y[xp.arange(batch_size), t]
    return -xp.sum(xp.log(picked + CROSS_ENTROPY_DELTA)) / batch_size


def softmax_loss(X, t):
    """Cross-entropy of ``softmax(X)`` against ``t`` (labels or one-hot); X: (C,) or (N, C)."""
    return cross_entropy_error(softmax(X), t)


def softmax_cross_entropy(x, t):
    """Exact ``-mean(log softmax(x)[t])`` from the scores, used by ``SoftmaxWithLoss``.

    Unlike ``cross_entropy_error(softmax(x), t)`` it adds no 1e-7 inside the log, so its
    gradient is exactly ``(softmax(x) - t) / N``. x: (C,) or (N, C) floating.
    Returns ``(loss, y, kind, t)`` with ``y = softmax(x)`` and the checked targets.
    """
    xp, x = _check_probabilities(x, "SoftmaxWithLoss")
    kind, t = check_targets(x, t, "SoftmaxWithLoss")
    logp = log_softmax(x)
    y = xp.exp(logp)
    x2 = logp.reshape(1, -1) if x.ndim == 1 else logp
    n = x2.shape[0]
    if kind == "onehot":
        loss = -xp.sum(t.reshape(x2.shape) * x2) / n
    else:
        loss = -xp.sum(x2[xp.arange(n), t.reshape(n)]) / n
    return loss, y, kind, t

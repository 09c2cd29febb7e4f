"""Figures of the book, written to PNG files: learning curves (ch. 6-7), first-layer
filters (ch. 7.6) and misclassified images (ch. 8.1).

matplotlib is optional (``pip install matplotlib``) and imported only when a figure
is drawn. Figures are built on ``matplotlib.figure.Figure`` directly, not through
``pyplot``, so nothing needs a display and no global figure state is touched; files are
written atomically (a reader never sees half a PNG).

    >>> plot_history(trainer.history, "curves.png")
    >>> plot_filters(network.params["W1"], "filters.png")
    >>> plot_misclassified(x_test, t_test, network.predict(x_test), "wrong.png")
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from xpnet.backend import as_numpy
from xpnet.io import atomic_write

__all__ = ["new_figure", "save_figure", "plot_history", "plot_filters", "plot_misclassified"]


def new_figure(**kwargs):
    """A ``matplotlib.figure.Figure`` (no pyplot, no display needed).

    Raises ImportError with the install command when matplotlib is missing.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"plotting needs matplotlib ({exc}); install it with `pip install matplotlib` "
            "(or, in the xpnet checkout, `pip install -e '.[plot]'`)"
        ) from None
    return Figure(**kwargs)


def save_figure(fig, path, dpi=100) -> Path:
    """Write ``fig`` to ``path`` atomically; the format follows the suffix (PNG if none)."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi)
    return path


# ---------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------


def plot_history(history, path, title=None) -> Path:
    """Loss per iteration (raw and smoothed, as in ch. 6) and train/test accuracy per
    epoch (as in ch. 7) side by side, under ``title`` (e.g. the model and the dataset).

    history: a dict with ``train_loss_list``, ``train_acc_list``, ``test_acc_list``
    (``Trainer.history``, or the ``history.json`` that ``xpnet train`` writes), or a
    Trainer itself.
    """
    from xpnet.util import smooth_curve

    if not isinstance(history, dict):
        history = history.history
    try:
        loss = np.asarray(history["train_loss_list"], dtype=np.float64)
        train_acc = np.asarray(history["train_acc_list"], dtype=np.float64)
        test_acc = np.asarray(history["test_acc_list"], dtype=np.float64)
    except KeyError as exc:
        raise ValueError(
            f"history has no {exc.args[0]!r}; expected train_loss_list, train_acc_list "
            "and test_acc_list"
        ) from None
    fig = new_figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)

    steps = np.arange(1, loss.size + 1)
    if loss.size:
        ax_loss.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
        ax_loss.plot(steps, smooth_curve(loss), color="tab:blue", label="smoothed")
        ax_loss.legend(loc="upper right")
    ax_loss.set_xlabel("iterations")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")

    epochs = np.arange(1, train_acc.size + 1)
    ax_acc.plot(epochs, train_acc, marker="o", label="train")
    ax_acc.plot(np.arange(1, test_acc.size + 1), test_acc, marker="s", label="test")
    ax_acc.set_xlabel("epochs")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1.0)
    ax_acc.set_title("accuracy")
    ax_acc.legend(loc="best")  # wherever it covers no curve
    if title:
        fig.suptitle(title)
    if epochs.size:
        ax_acc.set_xticks(epochs if epochs.size <= 20 else epochs[:: math.ceil(epochs.size / 20)])
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Filters (ch. 7.6)
# ---------------------------------------------------------------------------


def plot_filters(W, path, nx=8, title=None) -> Path:
    """The first input channel of every filter as a grey image, ``nx`` to a row (ch. 7.6),
    under ``title`` when one is given.

    W: (FN, C, FH, FW), e.g. ``network.params['W1']`` of a SimpleConvNet.
    """
    W = as_numpy(W)
    if W.ndim != 4:
        raise ValueError(
            f"plot_filters expects convolution weights of shape (FN, C, FH, FW), got {W.shape}"
        )
    if nx < 1:
        raise ValueError(f"nx must be at least 1, got {nx}")
    fn = W.shape[0]
    nx = min(nx, fn)
    ny = math.ceil(fn / nx)
    head = 0.15 + 0.3 * (1 + title.count("\n")) if title else 0.0  # inches for the title
    fig = new_figure(figsize=(max(nx, 6), ny + head))
    top = 1 - head / (ny + head)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=top, hspace=0.05, wspace=0.05)
    if title:
        fig.suptitle(title, y=1 - 0.1 * head / (ny + head), va="top", fontsize=10)
    for i in range(fn):
        ax = fig.add_subplot(ny, nx, i + 1, xticks=[], yticks=[])
        ax.imshow(W[i, 0], cmap="gray_r", interpolation="nearest")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------
# Misclassified images (ch. 8.1)
# ---------------------------------------------------------------------------


def _images(x) -> np.ndarray:
    """(N, H, W) or (N, H, W, 3) images from (N, D) square, (N, 1|3, H, W) or (N, H, W)."""
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"cannot show flat inputs of {x.shape[1]} values as square images")
        return x.reshape(-1, side, side)
    if x.ndim == 4 and x.shape[1] == 1:
        return x[:, 0]
    if x.ndim == 4 and x.shape[1] == 3:
        return x.transpose(0, 2, 3, 1)
    if x.ndim == 3:
        return x
    raise ValueError(f"x must be (N, H*W), (N, H, W) or (N, 1 or 3, H, W), got {x.shape}")


def _labels(a, name) -> np.ndarray:
    a = as_numpy(a)
    if a.ndim == 2:  # one-hot targets or class scores
        return a.argmax(axis=1)
    if a.ndim != 1:
        raise ValueError(
            f"{name} must be labels (N,) or scores/one-hot (N, classes), got {a.shape}"
        )
    return a.astype(np.int64)


def plot_misclassified(x, t, y, path, max_view=20, ncols=5, class_names=None,
                       title=None) -> list[tuple[int, int, int]]:
    """Show the first ``max_view`` images that the network got wrong, each titled
    ``true → predicted`` (ch. 8.1), under ``title`` (e.g. the model, the dataset, its accuracy).

    x: (N, 784), (N, 28, 28) or (N, 1, 28, 28) inputs; t: labels (N,) or one-hot;
    y: predicted labels (N,) or class scores (N, classes); class_names: the name of each
    label (e.g. Fashion-MNIST's ``'T-shirt/top'``, ...), the label itself when None.
    Returns the ``(index, label, prediction)`` of each image shown.
    """
    x = as_numpy(x)
    t, y = _labels(t, "t"), _labels(y, "y")
    if not (len(x) == len(t) == len(y)):
        raise ValueError(f"x, t and y must have the same length, got {len(x)}, {len(t)}, {len(y)}")
    images = _images(x)
    wrong = np.flatnonzero(t != y)[:max_view]
    shown = [(int(i), int(t[i]), int(y[i])) for i in wrong]
    if class_names is not None and shown and max(max(s[1:]) for s in shown) >= len(class_names):
        raise ValueError(f"{len(class_names)} class names do not cover the labels shown "
                         f"{sorted({c for s in shown for c in s[1:]})}")

    def name(label):
        return str(label) if class_names is None else class_names[label]

    nrows = max(1, math.ceil(len(shown) / ncols))
    width = ncols * (2.0 if class_names is not None else 1.4)  # room for "Ankle boot → Bag"
    head = 0.6 if title else 0.2
    fig = new_figure(figsize=(width, nrows * 1.6 + head))
    fig.subplots_adjust(left=0, right=1, bottom=0.02, top=1 - head / (nrows * 1.6 + head),
                        hspace=0.4, wspace=0.2)
    if title:
        fig.suptitle(title, fontsize=10)
    for k, (i, label, pred) in enumerate(shown):
        ax = fig.add_subplot(nrows, ncols, k + 1, xticks=[], yticks=[])
        ax.imshow(images[i], cmap="gray_r", interpolation="nearest")
        ax.set_title(f"{name(label)} → {name(pred)}", fontsize=8, color="tab:red")
    if not shown:
        fig.text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    save_figure(fig, path)
    return shown

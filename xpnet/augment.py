"""Data augmentation (book 8.1.1): every step trains on slightly moved copies of its images.

The book names augmentation as the simple way to more accuracy: small shifts, flips and
crops make new training images from the old, so a network that has learned the training
set by heart (train accuracy 99%, test 92%) keeps learning what generalizes. xpnet's is
the standard one for 28x28 and 32x32 images:

    >>> trainer = Trainer(net, x_train, t_train, x_test, t_test,
    ...                   augment=ShiftFlip(max_shift=2, flip=True))

- each image is shifted by ``dy, dx`` pixels, each drawn uniformly from
  ``[-max_shift, max_shift]``, the uncovered border filled with zeros (the background of
  (Fashion-)MNIST after ``normalize=True``): the same as padding by ``max_shift`` and
  cropping at a random position;
- with ``flip``, half of the images (at random) are mirrored left to right (sensible for
  clothes, not for digits).

An augmentation is two steps, so that the trainer draws on the host from the step's own
random stream (a resumed run draws what the uninterrupted one drew) and the images stay
on their device: :meth:`ShiftFlip.draw` gives per-image host arrays, :meth:`ShiftFlip.apply`
moves the images. Only the training mini-batches are augmented, never the evaluation.
"""

from __future__ import annotations

import numpy as np

from xpnet.backend import device_of, get_array_module, to_device
from xpnet.checkpoint import non_negative_int

__all__ = ["ShiftFlip"]


class ShiftFlip:
    """Random shifts of up to ``max_shift`` pixels, and with ``flip`` random left-right
    mirroring, of images (N, C, H, W)."""

    def __init__(self, max_shift: int = 2, flip: bool = False):
        self.max_shift, self.flip = non_negative_int(max_shift, "max_shift"), bool(flip)

    def __repr__(self) -> str:
        return f"ShiftFlip(max_shift={self.max_shift}, flip={self.flip})"

    @property
    def active(self) -> bool:
        """Whether it changes anything (a shift of 0 without flips does not)."""
        return self.max_shift > 0 or self.flip

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The moves of ``n`` images from ``rng``: ``dy``, ``dx`` (n,) int64 shifts and
        ``flip`` (n,) bool; always three draws, so the stream advances alike either way."""
        s = self.max_shift
        dy = rng.integers(-s, s + 1, size=n)
        dx = rng.integers(-s, s + 1, size=n)
        flip = rng.random(n) < 0.5
        if not self.flip:
            flip[:] = False
        return dy, dx, flip

    def apply(self, x, dy, dx, flip):
        """``x`` (N, C, H, W) moved: ``out[n, c, i, j] = x[n, c, i + dy[n], j' + dx[n]]``
        with ``j' = W - 1 - j`` where ``flip[n]``, zero where that falls outside."""
        if getattr(x, "ndim", 0) != 4:
            raise ValueError(
                f"augmentation needs images (N, C, H, W), got shape {getattr(x, 'shape', None)}: "
                "load the data with flatten=False"
            )
        n, _, h, w = x.shape
        dy, dx, flip = (np.asarray(a) for a in (dy, dx, flip))
        if not dy.shape == dx.shape == flip.shape == (n,):
            raise ValueError(f"{n} images need {n} moves, got shapes {dy.shape}, {dx.shape}, "
                             f"{flip.shape}")
        s = self.max_shift
        if np.abs(dy).max(initial=0) > s or np.abs(dx).max(initial=0) > s:
            raise ValueError(f"a shift is beyond max_shift={s}")
        xp = get_array_module(x)
        rows = s + dy[:, None] + np.arange(h)  # (N, H) rows of the padded images
        cols = np.arange(w)
        cols = s + dx[:, None] + np.where(flip[:, None], cols[::-1], cols)  # (N, W)
        padded = xp.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
        rows, cols = (to_device(a, device_of(x)) for a in (rows, cols))
        batch = xp.arange(n)[:, None, None, None]
        channel = xp.arange(x.shape[1])[None, :, None, None]
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]

    def __call__(self, x, rng: np.random.Generator):
        """``x`` with moves drawn from ``rng``."""
        return self.apply(x, *self.draw(rng, len(x)))

"""The book's helpers: im2col/col2im, conv_output_size, shuffle_dataset, smooth_curve."""

import sys
from pathlib import Path

import numpy as np
import pytest

import xpnet
from xpnet.util import col2im, conv_output_size, im2col, shuffle_dataset, smooth_curve

# The oracle: the book's common/util.py im2col, verbatim, as the benchmarks' naive baseline.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from naive_book import im2col as book_im2col  # noqa: E402


def test_im2col_book_shapes():
    # Book 7.4.3: x1 (1, 3, 7, 7) -> (9, 75); x2 (10, 3, 7, 7) -> (90, 75).
    assert im2col(np.ones((1, 3, 7, 7)), 5, 5, stride=1, pad=0).shape == (9, 75)
    assert im2col(np.ones((10, 3, 7, 7)), 5, 5, stride=1, pad=0).shape == (90, 75)


@pytest.mark.parametrize(
    "shape, fh, fw, stride, pad",
    [((2, 3, 7, 7), 3, 3, 1, 0), ((1, 2, 6, 5), 2, 3, 2, 1), ((3, 1, 5, 8), 4, 2, 3, 2)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_im2col_matches_the_book_and_col2im_is_its_adjoint(shape, fh, fw, stride, pad, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    col = im2col(x, fh, fw, stride, pad)
    assert col.dtype == dtype
    np.testing.assert_array_equal(col, book_im2col(x, fh, fw, stride, pad))
    # <im2col(x), c> == <x, col2im(c)> for every x, c: col2im sums overlapping windows.
    c = rng.standard_normal(col.shape).astype(dtype)
    back = col2im(c, x.shape, fh, fw, stride, pad)
    assert back.shape == x.shape and back.dtype == dtype
    rtol = 1e-4 if dtype == np.float32 else 1e-12
    assert np.sum(col * c, dtype=np.float64) == pytest.approx(
        np.sum(x * back, dtype=np.float64), rel=rtol
    )


def test_conv_output_size():
    assert conv_output_size(28, 5) == 24
    assert conv_output_size(4, 3, stride=1, pad=1) == 4  # book 7.2.3, example 1
    assert conv_output_size(7, 3, stride=2, pad=0) == 3
    assert conv_output_size(8, 3, stride=2, pad=0) == 3  # floor, like im2col
    assert conv_output_size(28, 2, stride=2) == 14
    with pytest.raises(ValueError, match="window of 5 does not fit an input of 3"):
        conv_output_size(3, 5)
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        conv_output_size(28, 5, stride=0)
    with pytest.raises(ValueError, match="pad must be >= 0, got -1"):
        conv_output_size(28, 5, pad=-1)
    with pytest.raises(TypeError, match="stride must be an integer, got 1.5"):
        conv_output_size(28, 5, stride=1.5)


def test_shuffle_dataset_keeps_pairs_and_is_seedable():
    x = np.arange(50, dtype=np.float32).reshape(10, 5)
    t = np.arange(10)
    xs, ts = shuffle_dataset(x, t)
    np.testing.assert_array_equal(xs[:, 0] / 5, ts)  # rows still belong to their labels
    assert sorted(ts.tolist()) == list(range(10)) and ts.tolist() != list(range(10))
    xpnet.seed(3)
    a = shuffle_dataset(x, t)[1]
    xpnet.seed(3)
    np.testing.assert_array_equal(a, shuffle_dataset(x, t)[1])
    x4 = np.zeros((10, 1, 2, 2))
    assert shuffle_dataset(x4, t)[0].shape == (10, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\(10, 5\).*\(9,\)"):
        shuffle_dataset(x, t[:9])


def test_smooth_curve():
    rng = np.random.default_rng(1)
    noisy = np.linspace(2.0, 0.5, 200) + 0.2 * rng.standard_normal(200)
    smooth = smooth_curve(noisy)
    assert smooth.shape == noisy.shape
    assert np.std(np.diff(smooth)) < 0.3 * np.std(np.diff(noisy))
    np.testing.assert_allclose(smooth_curve(np.full(30, 4.0)), 4.0)  # weights sum to 1
    assert smooth_curve([1.0, 2.0, 3.0]).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="1-D"):
        smooth_curve(np.zeros((3, 4)))

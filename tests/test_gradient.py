"""Chapter 4: numerical differentiation, numerical_gradient, gradient descent."""

import numpy as np
import pytest

from xpnet.gradient import (
    gradient_check,
    gradient_descent,
    numerical_diff,
    numerical_gradient,
    numerical_gradient_2d,
    relative_error,
)


def function_1(x):
    return 0.01 * x**2 + 0.1 * x


def function_2(x):
    return np.sum(x**2)


def test_numerical_diff_matches_book():
    # Book 4.3.2: 0.1999999999990898 and 0.2999999999986347 (true values 0.2 and 0.3).
    assert numerical_diff(function_1, 5) == pytest.approx(0.2, abs=1e-10)
    assert numerical_diff(function_1, 10) == pytest.approx(0.3, abs=1e-10)


def test_numerical_gradient_book_points():
    for point, expected in [([3.0, 4.0], [6, 8]), ([0.0, 2.0], [0, 4]), ([3.0, 0.0], [6, 0])]:
        g = numerical_gradient(function_2, np.array(point))
        np.testing.assert_allclose(g, expected, atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 2, 2)])
def test_numerical_gradient_any_shape_restores_x(seed, shape):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    before = x.copy()
    c = rng.standard_normal(shape)
    g = numerical_gradient(lambda v: np.sum(np.sin(v) * c), x)
    assert g.shape == x.shape and g.dtype == x.dtype
    np.testing.assert_array_equal(x, before)  # restored bit for bit
    assert relative_error(g, np.cos(x) * c) < 1e-8


def test_numerical_gradient_non_contiguous_view_perturbs_the_base():
    base = np.random.default_rng(3).standard_normal((4, 6))
    view = base[:, ::2].T  # non-contiguous, transposed
    assert not view.flags.c_contiguous
    before = base.copy()
    # Like the book's lambda W: net.loss(x, t), f ignores its argument and reads the base.
    g = numerical_gradient(lambda _: np.sum(base**3), view)
    np.testing.assert_allclose(g, 3 * view**2, rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(base, before)


def test_numerical_gradient_keeps_float32():
    x = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    g = numerical_gradient(lambda v: np.sum(v * v), x)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, 2 * x, rtol=1e-2)


def test_numerical_gradient_rejects_integer_x():
    with pytest.raises(TypeError, match="floating array.*int64"):
        numerical_gradient(function_2, np.array([3, 4]))
    with pytest.raises(TypeError, match="array"):
        numerical_gradient(function_2, [3.0, 4.0])


def test_numerical_gradient_2d_rows():
    X = np.array([[3.0, 4.0], [0.0, 2.0], [1.0, -1.0]])
    g = numerical_gradient_2d(function_2, X)
    np.testing.assert_allclose(g, 2 * X, atol=1e-7)
    np.testing.assert_allclose(numerical_gradient_2d(function_2, X[0].copy()), [6, 8], atol=1e-7)


def test_gradient_descent_book_example():
    # Book 4.4.1: from (-3, 4) with lr=0.1 and 100 steps, x ends near (0, 0).
    init_x = np.array([-3.0, 4.0])
    x = gradient_descent(function_2, init_x=init_x, lr=0.1, step_num=100)
    assert x is init_x  # updated in place, as in the book
    np.testing.assert_allclose(x, [-6.11110793e-10, 8.14814391e-10], rtol=1e-5)


def test_gradient_descent_history_and_learning_rates():
    x, hist = gradient_descent(
        function_2, np.array([-3.0, 4.0]), lr=0.1, step_num=20, return_history=True
    )
    assert hist.shape == (20, 2)
    np.testing.assert_array_equal(hist[0], [-3.0, 4.0])
    np.testing.assert_allclose(hist[1], [-3.0 * 0.8, 4.0 * 0.8])
    # Too large a rate diverges, too small barely moves (book 4.4.1).
    big = gradient_descent(function_2, np.array([-3.0, 4.0]), lr=10.0, step_num=100)
    small = gradient_descent(function_2, np.array([-3.0, 4.0]), lr=1e-10, step_num=100)
    np.testing.assert_allclose(big, [-2.58983747e13, -1.29524862e12], rtol=1e-6)  # the book's
    np.testing.assert_allclose(small, [-3.0, 4.0], rtol=1e-6)


def test_relative_error_and_gradient_check():
    a = np.array([1.0, 2.0, 3.0])
    assert relative_error(a, a) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(a, -a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        relative_error(a, a[:2])
    x = np.array([0.3, -0.7])
    assert gradient_check(lambda v: np.sum(np.exp(v)), x, np.exp(x)) < 1e-8
    assert gradient_check(lambda v: np.sum(np.exp(v)), x, 1.01 * np.exp(x)) > 1e-3

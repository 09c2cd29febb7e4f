"""Chapters 3-4: activations and losses (values, stability, dtype, bad input)."""

import warnings

import numpy as np
import pytest

from xpnet.functions import (
    cross_entropy_error,
    identity_function,
    log_softmax,
    mean_squared_error,
    relu,
    relu_grad,
    sigmoid,
    sigmoid_grad,
    softmax,
    softmax_cross_entropy,
    softmax_loss,
    step_function,
    sum_squared_error,
)
from xpnet.gradient import numerical_gradient, relative_error

FLOATS = [np.float16, np.float32, np.float64]


def test_activation_values_from_the_book():
    x = np.array([-1.0, 1.0, 2.0])
    np.testing.assert_allclose(sigmoid(x), [0.26894142, 0.73105858, 0.88079708], rtol=1e-7)
    np.testing.assert_array_equal(step_function(x), [0, 1, 1])
    np.testing.assert_array_equal(relu(x), [0, 1, 2])
    np.testing.assert_array_equal(relu_grad(np.array([-1.0, 0.0, 2.0])), [0, 1, 1])
    assert identity_function(x) is x
    # Integer input is computed in float64, as NumPy's exp would.
    assert sigmoid(np.array([-1, 1, 2])).dtype == np.float64


def test_softmax_book_values_and_sum():
    y = softmax(np.array([0.3, 2.9, 4.0]))
    np.testing.assert_allclose(y, [0.01821127, 0.24519181, 0.73659691], rtol=1e-6)
    assert y.sum() == pytest.approx(1.0)


def test_sigmoid_and_softmax_are_stable_for_large_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any overflow RuntimeWarning fails the test
        y = softmax(np.array([1010.0, 1000.0, 990.0]))
        s = sigmoid(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]))
        s32 = sigmoid(np.array([-1e4, 1e4], dtype=np.float32))
        big = softmax(np.array([[1e300, 0.0], [-1e300, 0.0]]))
    np.testing.assert_allclose(y, [9.99954600e-01, 4.53978686e-05, 2.06106005e-09], rtol=1e-6)
    assert y.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(s, [0.0, 1.9287498e-22, 0.5, 1.0, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(s32, [0.0, 1.0])
    np.testing.assert_array_equal(big, [[1.0, 0.0], [0.0, 1.0]])


def test_softmax_batched_along_last_axis():
    x = np.random.default_rng(0).standard_normal((2, 3, 5))
    y = softmax(x)
    np.testing.assert_allclose(y.sum(axis=-1), np.ones((2, 3)))
    np.testing.assert_allclose(y[1, 2], softmax(x[1, 2]))
    np.testing.assert_allclose(np.exp(log_softmax(x)), y)
    with pytest.raises(ValueError, match="0-d"):
        softmax(np.float64(1.0))


@pytest.mark.parametrize("dtype", FLOATS)
def test_functions_keep_dtype(dtype):
    x = np.linspace(-3, 3, 12).astype(dtype).reshape(3, 4)
    t = np.eye(4, dtype=dtype)[[0, 1, 3]]
    for fn in (step_function, sigmoid, sigmoid_grad, relu, relu_grad, softmax, log_softmax):
        assert fn(x).dtype == dtype, fn.__name__
    assert sum_squared_error(softmax(x), t).dtype == dtype
    assert cross_entropy_error(softmax(x), t).dtype == dtype
    assert cross_entropy_error(softmax(x), np.array([0, 1, 3])).dtype == dtype
    assert softmax_loss(x, np.array([0, 1, 3])).dtype == dtype
    # int64 one-hot targets do not promote float32 to float64
    assert cross_entropy_error(softmax(x), t.astype(np.int64)).dtype == dtype


def test_sigmoid_grad_matches_numerical_gradient():
    x = np.random.default_rng(1).standard_normal(7)
    num = numerical_gradient(lambda v: np.sum(sigmoid(v)), x)
    assert relative_error(num, sigmoid_grad(x)) < 1e-8


def test_sum_squared_error_book_example():
    t = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    assert sum_squared_error(y, t) == pytest.approx(0.0975)
    y2 = np.array([0.1, 0.05, 0.1, 0.0, 0.05, 0.1, 0.0, 0.6, 0.0, 0.0])
    assert mean_squared_error(y2, t) == pytest.approx(0.5975)
    assert mean_squared_error is sum_squared_error
    with pytest.raises(ValueError, match=r"\(10,\).*\(9,\)"):
        sum_squared_error(y, t[:9])


def test_cross_entropy_book_example_one_hot_and_labels():
    t = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    y = np.array([0.1, 0.05, 0.6, 0.0, 0.05, 0.1, 0.0, 0.1, 0.0, 0.0])
    assert cross_entropy_error(y, t) == pytest.approx(0.510825457099338)
    y2 = np.array([0.1, 0.05, 0.1, 0.0, 0.05, 0.1, 0.0, 0.6, 0.0, 0.0])
    assert cross_entropy_error(y2, t) == pytest.approx(2.302584092994546)
    assert cross_entropy_error(y, 2) == pytest.approx(0.510825457099338)  # label, one sample
    Y = np.stack([y, y2])
    T = np.stack([t, np.eye(10)[7]])
    expected = (0.510825457099338 + 0.510825457099338) / 2
    assert cross_entropy_error(Y, T) == pytest.approx(expected)
    assert cross_entropy_error(Y, np.array([2, 7], dtype=np.uint8)) == pytest.approx(expected)


def test_cross_entropy_never_takes_log_of_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = cross_entropy_error(np.array([[1.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(-np.log(1e-7))


def test_softmax_loss_and_exact_softmax_cross_entropy():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 5))
    labels = np.array([0, 4, 2, 2])
    onehot = np.eye(5)[labels]
    direct = -np.mean(np.log(softmax(x)[np.arange(4), labels]))
    assert softmax_loss(x, labels) == pytest.approx(direct, rel=1e-6)
    assert softmax_loss(x, onehot) == pytest.approx(direct, rel=1e-6)
    loss, y, kind, _ = softmax_cross_entropy(x, labels)
    assert kind == "labels" and loss == pytest.approx(direct, rel=1e-13)
    np.testing.assert_allclose(y, softmax(x))
    loss1, _, kind1, _ = softmax_cross_entropy(x[1], onehot[1])
    assert kind1 == "onehot" and loss1 == pytest.approx(-np.log(softmax(x[1])[4]), rel=1e-13)


def test_cross_entropy_bad_input():
    y = softmax(np.random.default_rng(0).standard_normal((3, 4)))
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        cross_entropy_error(y, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        cross_entropy_error(y, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[0, 4\).*from 0 to 4"):
        cross_entropy_error(y, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match=r"\[0, 4\).*from -1"):
        cross_entropy_error(y, np.array([-1, 1, 2]))
    with pytest.raises(TypeError, match="floating.*int64"):
        cross_entropy_error(np.array([[0, 1]]), np.array([1]))
    with pytest.raises(TypeError, match="labels t must be integers.*float64"):
        cross_entropy_error(y, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="empty"):
        cross_entropy_error(np.zeros((0, 4)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"\(C,\).*\(N, C\).*\(2, 3, 4\)"):
        cross_entropy_error(np.ones((2, 3, 4)), np.zeros((2, 3), dtype=int))

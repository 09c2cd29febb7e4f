"""The per-channel batch normalization kernels (``xpnet.kernels.channel_norm_*``): the CPU
kernels and the array-expression version against the plain reference, on random shapes
and memory layouts, independent of the thread count, and their argument checks."""

import numba
import numpy as np
import pytest
from kernel_contract import random_view

from xpnet import kernels
from xpnet.kernels import generic, reference

EPS = 1e-6


def _case(rng, dtype, view=True):
    N, C, H, W = (int(rng.integers(1, 6)) for _ in range(4))
    make = (lambda shape: random_view(rng, shape, dtype)) if view else (
        lambda shape: rng.standard_normal(shape).astype(dtype))
    x = make((N, C, H, W)) * 3 + 5  # an offset mean: the variance must not cancel
    gamma = rng.standard_normal(C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dout = make((N, C, H, W))
    return x, gamma, beta, dout


def _tolerance(dtype):
    return {"rtol": 2e-5, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-12}


@pytest.mark.parametrize("impl", [kernels, generic], ids=["entry-cpu", "generic"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(12))
def test_channel_norm_equals_reference(impl, dtype, seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta, dout = _case(rng, dtype, view=impl is kernels)
    for statistics in (None, (rng.random(x.shape[1]) + 0.5, rng.standard_normal(x.shape[1]))):
        mean, var = (None, None) if statistics is None else (
            statistics[1].astype(dtype), statistics[0].astype(dtype))
        got = impl.channel_norm_forward(x, gamma, beta, EPS, mean, var)
        want = reference.channel_norm_forward(x, gamma, beta, EPS, mean, var)
        for g, w in zip(got, want):
            assert g.dtype == dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, **_tolerance(dtype))
        std = np.sqrt(want[3] + dtype(EPS))
        train = statistics is None
        got = impl.channel_norm_backward(dout, want[1], gamma, std, train)
        want_b = reference.channel_norm_backward(dout, want[1], gamma, std, train)
        for g, w in zip(got, want_b):
            assert g.dtype == dtype and g.shape == w.shape
            np.testing.assert_allclose(g, w, **_tolerance(dtype))


def test_batch_statistics_match_numpy_in_float64():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 3, 5, 4)) * 10 + 1000
    _, xn, mean, var = kernels.channel_norm_forward(x, np.ones(3), np.zeros(3), EPS)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-14)
    np.testing.assert_allclose(var, x.var(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(xn.mean(axis=(0, 2, 3)), 0, atol=1e-12)


def test_float16_takes_the_array_expressions():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float16)
    out, xn, mean, var = kernels.channel_norm_forward(x, np.ones(3, np.float16),
                                                      np.zeros(3, np.float16), EPS)
    assert out.dtype == xn.dtype == np.float16
    want = reference.channel_norm_forward(x.astype(np.float32), np.ones(3), np.zeros(3), EPS)
    np.testing.assert_allclose(out, want[0], atol=1e-2)


def test_results_do_not_depend_on_the_thread_count():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs Numba's pool to have at least 2 threads")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 16, 28, 28)).astype(np.float32)  # many tasks
    dout = rng.standard_normal(x.shape).astype(np.float32)
    gamma, beta = rng.standard_normal(16).astype(np.float32), np.ones(16, np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            out, xn, mean, var = kernels.channel_norm_forward(x, gamma, beta, EPS)
            std = np.sqrt(var + np.float32(EPS))
            results.append((out, xn, mean, var,
                            *kernels.channel_norm_backward(dout, xn, gamma, std, True)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call, message", [
    (lambda x: kernels.channel_norm_forward(x[0], np.ones(3), np.zeros(3), EPS), "(N, C, H, W)"),
    (lambda x: kernels.channel_norm_forward(x, np.ones(4), np.zeros(3), EPS), "gamma must have 3"),
    (lambda x: kernels.channel_norm_forward(x, np.ones(3), np.zeros(3), 0.0), "eps"),
    (lambda x: kernels.channel_norm_forward(x, np.ones(3), np.zeros(3), EPS, np.zeros(3)),
     "both mean and var"),
    (lambda x: kernels.channel_norm_forward(x, np.ones(3), np.zeros(3), EPS, np.zeros(3),
                                            np.ones(2)), "var must have 3"),
    (lambda x: kernels.channel_norm_backward(x, x[:1], np.ones(3), np.ones(3), True), "match xn"),
    (lambda x: kernels.channel_norm_backward(x, x, np.ones(3), np.ones(5), True),
     "std must have 3"),
])
def test_bad_arguments_are_one_clear_error(call, message):
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(x)


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="floating"):
        kernels.channel_norm_forward(np.zeros((1, 2, 2, 2), np.int64), np.ones(2), np.ones(2), EPS)

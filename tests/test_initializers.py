"""Book 6.2: weight initialization by standard deviation, Xavier and He."""

import math

import numpy as np
import pytest

import xpnet
from xpnet.initializers import (
    fan_in_of,
    he_normal,
    init_std,
    init_weight,
    normal,
    weight_std,
    xavier_normal,
)


def test_weight_std_names_and_numbers():
    assert weight_std("relu", 100) == pytest.approx(math.sqrt(2 / 100))
    assert weight_std("He", 50) == pytest.approx(math.sqrt(2 / 50))
    assert weight_std("sigmoid", 100) == pytest.approx(0.1)
    assert weight_std("XAVIER", 25) == pytest.approx(0.2)
    assert weight_std(0.01, 784) == 0.01
    assert weight_std(1, 784) == 1.0
    assert init_std is weight_std


def test_weight_std_bad_input():
    with pytest.raises(ValueError, match=r"'tanh'.*'relu', 'he', 'sigmoid', 'xavier'"):
        weight_std("tanh", 10)
    with pytest.raises(ValueError, match=">= 0"):
        weight_std(-0.1, 10)
    with pytest.raises(TypeError, match="NoneType"):
        weight_std(None, 10)
    with pytest.raises(ValueError, match="fan_in"):
        weight_std("he", 0)
    with pytest.raises(ValueError, match="needs fan_in"):
        weight_std("he", None)


def test_fan_in_of_affine_and_conv_weights():
    assert fan_in_of((784, 100)) == 784
    assert fan_in_of((30, 3, 5, 5)) == 75
    with pytest.raises(ValueError, match="fan_in"):
        fan_in_of((10,))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_draws_in_the_requested_dtype_with_the_right_spread(dtype):
    w = he_normal((400, 300), dtype=dtype)
    assert w.dtype == dtype and w.shape == (400, 300)
    assert float(w.astype(np.float64).std()) == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert abs(float(w.astype(np.float64).mean())) < 0.005
    x = xavier_normal((64, 3, 3, 3), dtype=dtype)
    assert x.dtype == dtype
    assert float(x.astype(np.float64).std()) == pytest.approx(math.sqrt(1 / 27), rel=0.05)


def test_default_dtype_and_seeding():
    assert normal((3, 3), 0.01).dtype == xpnet.get_default_dtype()
    xpnet.set_default_dtype(np.float64)
    assert normal((3, 3), 0.01).dtype == np.float64
    xpnet.seed(11)
    a = init_weight((5, 4), "relu")
    xpnet.seed(11)
    b = init_weight((5, 4), "relu")
    np.testing.assert_array_equal(a, b)
    xpnet.seed(11)
    c = init_weight((5, 4), 0.5)
    np.testing.assert_allclose(c, a * 0.5 / math.sqrt(2 / 5), rtol=1e-12)
    with pytest.raises(TypeError, match="floating dtype"):
        normal((2, 2), 1.0, dtype=np.int32)
